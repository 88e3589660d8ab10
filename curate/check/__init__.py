"""`curate check`: a linter for Kohya datasets (also a pre-commit hook).

`check(paths, config, only_files)` finds the datasets (`dataset`), lists what sd-scripts reads
and skips (`layout_rules`), reads captions (`captions`, `tokens`) and images (`images`, with
dedupe's hash cache), and returns a `CheckResult` of `Finding`s; `rules` is the registry of
rule ids, severities, messages and hints; `output` prints human, JSON or GitHub annotations;
`config` reads `[check]` (curate.toml) or `[tool.curate.check]` (pyproject.toml).

Names load on first use, so the CLI's --help imports neither numpy nor Pillow.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from curate.check.config import CheckConfig, LoadedConfig, find_config_file, load_config
    from curate.check.output import render
    from curate.check.rules import RULES, Finding, Rule
    from curate.check.run import CheckResult, check

_MODULE = {
    "CheckConfig": "config", "LoadedConfig": "config", "find_config_file": "config", "load_config": "config",
    "render": "output", "RULES": "rules", "Finding": "rules", "Rule": "rules",
    "CheckResult": "run", "check": "run",
}
__all__ = ["RULES", "CheckConfig", "CheckResult", "Finding", "LoadedConfig", "Rule", "check",
           "find_config_file", "load_config", "render"]


def __getattr__(name: str) -> Any:
    if name not in _MODULE:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{_MODULE[name]}"), name)
