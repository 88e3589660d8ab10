"""Options from `curate.toml`, overridden by command-line flags and `--set section.key=value`.

Each stage owns a frozen dataclass of options (its typed config). The TOML file has one table
per stage (`[import]`, later `[dedupe]`, `[tag]`...). Precedence, lowest first: dataclass
defaults, `curate.toml`, `--set`, explicit flags. Unknown keys are errors that list the valid
ones, so a typo never silently does nothing.
"""

from __future__ import annotations

import dataclasses
import json
import re
import tomllib
import types
import typing
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, TypeVar

from curate.errors import CurateError

CONFIG_NAME = "curate.toml"
BARE_KEY = re.compile(r"^[A-Za-z0-9_-]+$")
T = TypeVar("T")


def load_toml(path: Path) -> dict[str, Any]:
    """Read `path` (missing file => empty); a syntax error names the file and line."""
    if not path.is_file():
        return {}
    try:
        with path.open("rb") as fh:
            return tomllib.load(fh)
    except tomllib.TOMLDecodeError as exc:
        raise CurateError(f"{path}: not valid TOML ({exc}); fix the file or move it away") from exc
    except UnicodeDecodeError as exc:
        raise CurateError(f"{path}: not UTF-8 ({exc}); re-save it as UTF-8") from exc


def toml_key(name: str) -> str:
    """A TOML key: bare when it can be, else quoted."""
    return name if BARE_KEY.match(name) else json.dumps(name)


def toml_value(value: Any) -> str:
    """A TOML literal for the values curate writes (dataset.toml, the resolved train config)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)  # a JSON string is a TOML basic string
    if isinstance(value, list | tuple):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{toml_key(k)} = {toml_value(v)}" for k, v in value.items()) + " }"
    raise CurateError(f"{value!r}: cannot be written as a TOML value")


def parse_value(text: str) -> Any:
    """`--set` values are TOML literals (`true`, `0.4`, `["a", "b"]`); anything else is a string."""
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


def apply_overrides(data: dict[str, Any], overrides: Iterable[str]) -> dict[str, Any]:
    """Apply `section.key=value` strings to a nested dict (returns a new dict)."""
    out = {k: dict(v) if isinstance(v, dict) else v for k, v in data.items()}
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise CurateError(f"--set {item!r}: expected key=value, e.g. --set import.workers=4")
        node = out
        *parents, leaf = [part.strip() for part in key.split(".")]
        for part in parents:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise CurateError(f"--set {item!r}: {part!r} is a value, not a table")
            node = child
        node[leaf] = parse_value(value.strip())
    return out


def _check_type(section: str, name: str, value: Any, hint: Any) -> Any:
    origin = typing.get_origin(hint)
    allowed: tuple[Any, ...] = typing.get_args(hint) if origin in (typing.Union, types.UnionType) else (hint,)
    for kind in allowed:
        base = typing.get_origin(kind) or kind
        if base is typing.Literal:
            if value in typing.get_args(kind):
                return value
            continue
        if kind is type(None) and value is None:
            return value
        if base is float and isinstance(value, int) and not isinstance(value, bool):
            return float(value)
        if base is tuple and isinstance(value, list):
            return tuple(value)
        if isinstance(base, type) and isinstance(value, base) and base is not type(None):
            return value
    raise CurateError(f"{section}.{name} = {value!r}: expected {hint}")


def build(cls: type[T], section: str, values: Mapping[str, Any]) -> T:
    """Make the dataclass `cls` from a TOML table, checking names and types."""
    fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    hints = typing.get_type_hints(cls)
    unknown = sorted(set(values) - set(fields))
    if unknown:
        raise CurateError(
            f"[{section}] has unknown option(s) {', '.join(unknown)}; valid: {', '.join(fields)}"
        )
    kwargs = {k: _check_type(section, k, v, hints[k]) for k, v in values.items()}
    return cls(**kwargs)


def stage_config(
    cls: type[T],
    section: str,
    config_file: Path | None,
    overrides: Iterable[str] = (),
    flags: Mapping[str, Any] | None = None,
) -> T:
    """The typed options of one stage: defaults < curate.toml < --set < flags (None = unset)."""
    data = load_toml(config_file) if config_file else {}
    data = apply_overrides(data, overrides)
    table = data.get(section, {})
    if not isinstance(table, dict):
        raise CurateError(f"{section} in {config_file} must be a table ([{section}])")
    merged = {**table, **{k: v for k, v in (flags or {}).items() if v is not None}}
    return build(cls, section, merged)
