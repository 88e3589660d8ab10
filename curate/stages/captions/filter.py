"""`curate tags filter`: dataset-level false-positive rules over the captions of a target."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from curate.errors import CurateError
from curate.stages.captions.store import Removed, changed_images, load, save
from tagging.filter import FilterConfig, filter_tags
from tagging.rules import load_rules

STAGE = "filter"


@dataclass(frozen=True)
class FilterStageConfig:
    """The `[filter]` table: `tagging.filter.FilterConfig` plus where rules come from."""

    # A tag of an exclusive group (hair colour, eye colour...) seen in fewer than this share
    # of the images that carry the group's majority tag is taken for a tagger mistake.
    min_share: float = 0.15
    # Drop tags a trigger word should carry (hair and eye colour...) in single-person images.
    prune_intrinsic: bool = False
    # Never removed; with prune_intrinsic it is what carries the character's look.
    trigger: str | None = None
    blacklist: tuple[str, ...] = ()
    # "category=0.5" or "*=0.3": tagger tags below the confidence are removed.
    min_confidence: tuple[str, ...] = ()
    implications: bool = True
    exclusive: bool = True
    # Multi-character datasets legitimately mix hair colours: set false to skip exclusive groups.
    single_character: bool = True
    # Extra rule files (TOML, same form as tagging/rules/default.toml), applied in order.
    rules: tuple[str, ...] = ()
    caption_ext: str = ".txt"

    def filter_config(self) -> FilterConfig:
        pairs = []
        for item in self.min_confidence:
            category, _, value = item.partition("=")
            try:
                pairs.append((category.strip(), float(value)))
            except ValueError:  # also when "=" is missing: float("") fails
                raise CurateError(f"filter.min_confidence {item!r}: expected category=number, "
                                  "e.g. general=0.4") from None
        try:
            return FilterConfig(min_share=self.min_share, prune_intrinsic=self.prune_intrinsic,
                                trigger=self.trigger, blacklist=self.blacklist,
                                min_confidence=tuple(pairs), implications=self.implications,
                                exclusive=self.exclusive, single_character=self.single_character)
        except ValueError as exc:
            raise CurateError(f"[filter]: {exc}") from exc


@dataclass
class FilterRun:
    target: str
    kind: str
    dry_run: bool
    images: int = 0
    changed: list[str] = field(default_factory=list)
    diff: list[str] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=dict)
    skipped: list[tuple[str, str]] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {"target": self.target, "kind": self.kind, "dry_run": self.dry_run, "images": self.images,
                "changed": len(self.changed), "removed_by_rule": self.counts, "diff": self.diff,
                "skipped": [{"file": f, "reason": r} for f, r in self.skipped]}


def run_filter(target: Path, config: FilterStageConfig, *, dry_run: bool = False) -> FilterRun:
    captions = load(target, config.caption_ext)
    rules = load_rules([Path(p) for p in config.rules])
    result = filter_tags(captions.tags, rules, config.filter_config())
    run = FilterRun(str(captions.root), captions.kind, dry_run, len(captions.tags),
                    skipped=captions.skipped, counts=result.counts())
    shown = captions.shown
    run.diff = [_shown_line(line, shown) for line in result.diff()]
    removed = [Removed(r.image, r.tag, r.rule, r.detail) for r in result.removals]
    if dry_run:
        run.changed = changed_images(captions, result.dataset)
    else:
        run.changed = save(captions, result.dataset, STAGE, removed)
    return run


def _shown_line(line: str, shown: dict[str, str]) -> str:
    image, sep, rest = line.partition(": ")
    return f"{shown.get(image, image)}{sep}{rest}"
