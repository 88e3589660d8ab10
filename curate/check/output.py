"""The three ways `curate check` prints its findings.

* human: `path:line: error [rule-id] message (fix: hint)`, the form compilers and linters use,
  so editors and terminals link the path; then one summary line.
* json: `CheckResult.as_dict()`.
* github: workflow commands (`::error file=...,line=...,title=...::message`), which GitHub
  Actions turns into annotations on the pull request's files.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import TYPE_CHECKING

from curate.check.rules import RULES, Finding, shown

if TYPE_CHECKING:  # the CLI imports this module for --help: nothing heavy at import time
    from curate.check.run import CheckResult


def human_line(f: Finding) -> str:
    where = shown(f.path) + (f":{f.line}" if f.line else "")
    return f"{where}: {f.severity} [{f.rule}] {f.message} (fix: {f.hint})"


def summary(result: CheckResult) -> str:
    what = f"{result.images} images in {len(result.datasets)} dataset(s)"
    if result.configs:
        what += f" and {result.configs} training config(s)"
    if not result.findings:
        return f"ok: no problems in {what}"
    return f"{result.errors} error(s), {result.warnings} warning(s) in {what}"


def human(result: CheckResult, quiet: bool = False) -> list[str]:
    lines = [human_line(f) for f in result.findings]
    if not quiet or result.findings:
        lines.append(summary(result))
    return lines


def _escape_data(text: str) -> str:
    return text.replace("%", "%25").replace("\r", "%0D").replace("\n", "%0A")


def _escape_property(text: str) -> str:
    return _escape_data(text).replace(":", "%3A").replace(",", "%2C")


def github_line(f: Finding) -> str:
    props = [f"file={_escape_property(shown(f.path))}"]
    if f.line:
        props.append(f"line={f.line}")
    props.append(f"title={_escape_property(f'curate check [{f.rule}]')}")
    return f"::{f.severity} {','.join(props)}::{_escape_data(f'{f.message} (fix: {f.hint})')}"


def github(result: CheckResult, quiet: bool = False) -> list[str]:
    # The summary goes out as a plain line: the log shows it, no annotation is made of it.
    return [github_line(f) for f in result.findings] + ([] if quiet else [summary(result)])


def as_json(result: CheckResult, quiet: bool = False) -> list[str]:
    return [json.dumps(result.as_dict(), indent=2, ensure_ascii=False)]


RENDER: dict[str, Callable[[CheckResult, bool], list[str]]] = {
    "human": human, "json": as_json, "github": github}


def render(result: CheckResult, fmt: str, quiet: bool = False) -> str:
    if fmt not in RENDER:
        raise ValueError(f"unknown format {fmt!r}; use one of {', '.join(RENDER)}")
    return "\n".join(RENDER[fmt](result, quiet))


def rule_table() -> list[tuple[str, str, str]]:
    """(id, severity, message template) of every rule, for `curate check --list-rules`."""
    return [(r.id, r.severity, r.message) for r in RULES.values()]
