"""`--executor` / `--ray-address` on a single-stage command (import, dedupe, caption).

The flags are [run]'s options (`RunConfig`), declared there once, but they arrive among the
stage's own flags; `take` moves them out before the stage's config is read, `executor` builds
what they and curate.toml name.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

from curate.cli._flags import config_flags
from curate.executor import LOCAL, Executor
from curate.pipeline.config import EXECUTOR_FIELDS, RunConfig

executor_flags = config_flags(RunConfig, *EXECUTOR_FIELDS)


def take(flags: dict[str, Any]) -> dict[str, Any]:
    """[run]'s flags, removed from a stage's `flags` (they are not its options)."""
    return {name: flags.pop(name) for name in EXECUTOR_FIELDS}


def executor(config_file: Path, overrides: Iterable[str], where: dict[str, Any], *,
             dry_run: bool = False) -> Executor:
    """The executor [run] names (a Ray one starts or joins its cluster here); a dry run that
    computes nothing gets this process, so it starts no cluster."""
    if dry_run:
        return LOCAL
    from curate.pipeline import run_config

    return run_config(config_file, overrides, where).make_executor()
