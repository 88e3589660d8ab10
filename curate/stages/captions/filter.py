"""`curate tags filter`: dataset-level false-positive rules over the captions of a target."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from curate.config import option
from curate.errors import CurateError
from curate.stages.captions.store import CaptionRun, Removed, changed_images, load, save, shown_line
from curate.tagging.filter import FilterConfig, filter_tags
from curate.tagging.rules import load_rules

STAGE = "filter"


@dataclass(frozen=True)
class FilterStageConfig:
    """Options of `curate tags filter`: `curate.tagging.filter.FilterConfig` plus where rules come from."""

    min_share: float = option(0.15, ge=0, le=1, help=(
        "A tag of an exclusive group (hair colour, eye colour...) seen in fewer than this share of "
        "the images that carry the group's majority tag is taken for a tagger mistake and removed."))
    prune_intrinsic: bool = option(False, help=(
        "Drop tags the trigger word should carry (hair and eye colour...) in single-person images."))
    trigger: str | None = option(None, example="sks", help=(
        "Never removed; with prune_intrinsic it is what carries the character's look."))
    blacklist: tuple[str, ...] = option((), help="Tags always removed.")
    min_confidence: tuple[str, ...] = option((), help=(
        "\"category=P\" or \"*=P\" (e.g. general=0.4): tagger tags below the confidence are removed."))
    implications: bool = option(True, help=(
        "Remove a tag another one implies ('shirt' beside 'white shirt') and merge aliases."))
    exclusive: bool = option(True, help="Apply the exclusive-group rule (see min_share).")
    single_character: bool = option(True, help=(
        "The dataset shows one character: hair and eye colours are exclusive groups. Multi-character "
        "datasets legitimately mix them: set false."))
    rules: tuple[str, ...] = option((), help=(
        "Extra rule files (TOML, same form as tagging/rules/default.toml), applied in order."))
    caption_ext: str = option(".txt", help="Plain folders: the caption files beside the images.")

    def filter_config(self) -> FilterConfig:
        pairs = []
        for item in self.min_confidence:
            category, _, value = item.partition("=")
            try:
                pairs.append((category.strip(), float(value)))
            except ValueError:  # also when "=" is missing: float("") fails
                raise CurateError(f"tags-filter.min_confidence {item!r}: expected category=number, "
                                  "e.g. general=0.4") from None
        try:
            return FilterConfig(min_share=self.min_share, prune_intrinsic=self.prune_intrinsic,
                                trigger=self.trigger, blacklist=self.blacklist,
                                min_confidence=tuple(pairs), implications=self.implications,
                                exclusive=self.exclusive, single_character=self.single_character)
        except ValueError as exc:
            raise CurateError(f"[tags-filter]: {exc}") from exc


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

