"""`curate tags filter`: dataset-level false-positive rules over the captions of a target."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from curate.config import option
from curate.errors import CurateError
from curate.stages.captions.store import CaptionRun, Removed, changed_images, load, save, shown_line
from tagging.filter import FilterConfig, filter_tags
from tagging.rules import load_rules

STAGE = "filter"


@dataclass(frozen=True)
class FilterStageConfig:
    """The `[filter]` table: `tagging.filter.FilterConfig` plus where rules come from."""

    # A tag of an exclusive group (hair colour, eye colour...) seen in fewer than this share
    # of the images that carry the group's majority tag is taken for a tagger mistake.
    min_share: float = option(0.15, ge=0, le=1)
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


def run_filter(target: Path, config: FilterStageConfig, *, dry_run: bool = False) -> CaptionRun:
    captions = load(target, config.caption_ext)
    rules = load_rules([Path(p) for p in config.rules])
    result = filter_tags(captions.tags, rules, config.filter_config())
    run = CaptionRun(str(captions.root), captions.kind, dry_run, len(captions.tags),
                    skipped=captions.skipped, counts=result.counts())
    shown = captions.shown
    run.diff = [shown_line(line, shown) for line in result.diff()]
    removed = [Removed(r.image, r.tag, r.rule, r.detail) for r in result.removals]
    if dry_run:
        run.changed = changed_images(captions, result.dataset)
    else:
        run.changed = save(captions, result.dataset, STAGE, removed)
    return run

