"""Options of `curate check`: the `[check]` table of curate.toml, or `[tool.curate.check]` of
pyproject.toml, found by walking up from the checked path (stopping at the repository root).

Defaults are chosen for a linter, which should never cry wolf: a rule fires only when the
dataset is surely not what sd-scripts will train on.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from curate.check.rules import RULES, check_ids
from curate.config import CONFIG_NAME, apply_overrides, build, load_toml, option
from curate.errors import CurateError

SECTION = "check"
PYPROJECT = "pyproject.toml"
# sd-scripts' default min_bucket_reso: below it no bucket fits without upscaling.
DEFAULT_MIN_SIZE = 256
# CLIP's 77 positions minus the start and end tokens: what sd-scripts reads without
# --max_token_length (150 and 225 are the other values it takes).
DEFAULT_MAX_TOKENS = 75


@dataclass(frozen=True)
class CheckConfig:
    """Options of `curate check` (also `[tool.curate.check]` of pyproject.toml): which rules run and
    what they compare against."""

    disable: tuple[str, ...] = option((), help=(
        "Rule ids switched off (`curate check --list-rules` shows them all)."))
    # option() returns a dataclasses.field with this default_factory: no shared dict
    severity: dict[str, str] = option(factory=dict, help=(  # noqa: RUF009
        "Rule id -> \"error\", \"warning\" or \"off\", to change a rule's level."))
    trigger: str | None = option(None, example="sks", help=(
        "The trigger word every training caption starts with; unset: the first word of each "
        "subset's class_tokens (dataset.toml) or of its folder name (`10_sks dog` -> sks)."))
    caption_ext: str = option(".txt", help=(
        "Caption extension where dataset.toml does not set one (plain N_name folders)."))
    min_size: int | None = option(None, example=DEFAULT_MIN_SIZE, help=(
        "Smallest short side in pixels; unset: the dataset's min_bucket_reso, else 256."))
    # `curate dedupe` accepts 2 unchecked and confirms looser pairs by feature matching; a check
    # run on every commit does no feature matching, so it stays at 2: the largest threshold that
    # linked no wrong pair in bench/dedupe_accuracy.py (a stereo pair is 4 apart)
    near_threshold: int = option(2, help=(
        "Largest Hamming distance of two 64-bit phashes reported as near duplicates."))
    check_duplicates: bool = option(True, help="Run the duplicate rules (they hash every image, cached).")
    max_tokens: int = option(DEFAULT_MAX_TOKENS, help=(
        "CLIP tokens a caption may have: 75, or 150 / 225 when training with --max_token_length."))
    tokenizer: str = option("openai/clip-vit-large-patch14", help=(
        "Exact token counts need transformers and this tokenizer offline (a folder, or a Hub id "
        "already in the local cache); otherwise a documented lower-bound estimate is used."))
    blacklist: tuple[str, ...] = option((), help=(
        "Tags no caption may have, on top of the blacklist of the tag rules."))
    rules: tuple[str, ...] = option((), help=(
        "Tag rules files (as `curate tags filter --rules`), relative to the config file."))
    workers: int = option(0, help="Processes hashing images on a cold cache (0 = one per core).")

    def validate(self, where: str) -> None:
        check_ids(self.disable, f"{where} disable")
        check_ids(self.severity, f"{where} severity")
        for rule_id, level in self.severity.items():
            if level not in ("error", "warning", "off"):
                raise CurateError(f"{where} severity.{rule_id} = {level!r}: use error, warning or off")
        if not self.caption_ext.startswith("."):
            raise CurateError(f"{where} caption_ext = {self.caption_ext!r}: must look like .txt")
        if not 0 <= self.near_threshold <= 64:
            raise CurateError(f"{where} near_threshold = {self.near_threshold}: must be 0..64")
        if self.max_tokens < 1 or (self.min_size is not None and self.min_size < 1):
            raise CurateError(f"{where} max_tokens and min_size must be positive")

    def level(self, rule_id: str, default: str | None = None) -> str:
        """"error", "warning" or "off" for this rule (a finding's own severity is `default`)."""
        if rule_id in self.disable:
            return "off"
        return self.severity.get(rule_id, default or RULES[rule_id].severity)

    def enabled(self, *rule_ids: str) -> bool:
        return any(self.level(r) != "off" for r in rule_ids)


@dataclass(frozen=True)
class LoadedConfig:
    config: CheckConfig
    source: Path | None  # the file it came from, None = defaults


def find_config_file(start: Path) -> Path | None:
    """The nearest curate.toml, or pyproject.toml with a [tool.curate] table, at or above
    `start`; the search stops at the repository root (a folder holding .git)."""
    folder = start.absolute()
    if not folder.is_dir():
        folder = folder.parent
    for current in (folder, *folder.parents):
        if (current / CONFIG_NAME).is_file():
            return current / CONFIG_NAME
        pyproject = current / PYPROJECT
        if pyproject.is_file() and "curate" in load_toml(pyproject).get("tool", {}):
            return pyproject
        if os.path.exists(current / ".git"):
            return None
    return None


def _table(path: Path | None) -> dict[str, Any]:
    if path is None:
        return {}
    data = load_toml(path)
    if path.name == PYPROJECT:
        data = data.get("tool", {}).get("curate", {})
    table = data.get(SECTION, {})
    if not isinstance(table, dict):
        raise CurateError(f"{path}: {SECTION} must be a table ([{SECTION}])")
    return table


def load_config(start: Path, config_file: Path | None = None, overrides: Iterable[str] = (),
                flags: Mapping[str, Any] | None = None, disable: Iterable[str] = ()) -> LoadedConfig:
    """Defaults < the config file's table < `--set check.key=value` < flags; `disable` adds to
    the file's list rather than replacing it."""
    source = config_file if config_file is not None else find_config_file(start)
    if config_file is not None and not config_file.is_file():
        raise CurateError(f"{config_file}: no such config file")
    where = f"[tool.curate.{SECTION}] of {source}" if source and source.name == PYPROJECT else (
        f"[{SECTION}] of {source}" if source else f"[{SECTION}]")
    table = apply_overrides({SECTION: _table(source)}, overrides)[SECTION]
    merged = {**table, **{k: v for k, v in (flags or {}).items() if v is not None}}
    config = build(CheckConfig, SECTION, merged)
    extra = tuple(disable)
    if extra:
        config = replace(config, disable=tuple(dict.fromkeys((*config.disable, *extra))))
    if source is not None and config.rules:  # rules files are named relative to the config file
        config = replace(config, rules=tuple(str(source.parent / r) for r in config.rules))
    config.validate(where)
    return LoadedConfig(config, source)
