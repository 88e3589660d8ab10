"""From tagger probabilities to caption tags, and how new tags meet an existing caption.

A workspace stores every probability >= STORE_FLOOR (and the four ratings), so a new threshold
can be applied later without the model (`curate tag --rethreshold`). MCut on stored values can
differ from MCut on the full output only when its widest gap lies below the floor.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from curate.record import REMOVED_BY_USER, SELECTION_MARK, Record, filter_mark
from curate.stages.tag.config import TagConfig
from curate.stages.tag.result import ProgressFn
from curate.tagging.captions import format_caption, parse_caption
from curate.tagging.engine import Tagger
from curate.tagging.model import CATEGORY_NAMES, TagInfo
from curate.tagging.normalize import normalize_tag
from curate.tagging.select import SelectConfig, format_tag, select_tags
from curate.tagging.tags import tag_key

REPLACED = "rule:replace"  # source of a tag a `tag.replace` rule put in a caption

STORE_FLOOR = 0.05
CATEGORY_NUMBERS = {name: number for number, name in CATEGORY_NAMES.items()}


def select_config(config: TagConfig) -> SelectConfig:
    return SelectConfig(
        threshold=config.threshold, character_threshold=config.character_threshold,
        mcut=config.mcut, rating=config.rating, character_first=config.character_first,
        max_tags=config.max_tags, undesired=config.undesired, replace=config.replacements())


def caption_tags(probs: np.ndarray, tags: Sequence[TagInfo], config: TagConfig) -> list[str]:
    """The caption's tags in display form (spaces, kaomoji kept), in caption order."""
    return [format_tag(t.name) for t in select_tags(probs, tags, select_config(config))]


def stored_rows(probs: np.ndarray, tags: Sequence[TagInfo]) -> list[tuple[str, str, float]]:
    """(canonical name, category, probability) worth keeping for re-thresholding."""
    return [(normalize_tag(t.name), t.category_name, float(p)) for t, p in zip(tags, probs, strict=True)
            if p >= STORE_FLOOR or t.category_name == "rating"]


def from_rows(rows: Sequence[tuple[str, str, float]]) -> tuple[np.ndarray, list[TagInfo]]:
    """Stored rows back into a probability vector and its tag list (those not stored are 0)."""
    tags = [TagInfo(name, CATEGORY_NUMBERS.get(category, 0)) for name, category, _ in rows]
    return np.array([p for *_, p in rows], dtype=np.float32), tags


def merge(existing: Sequence[str] | None, new: Sequence[str], mode: str) -> list[str] | None:
    """The caption to write, or None to leave an existing caption as it is."""
    if not existing or mode == "overwrite":
        return list(new)
    if mode == "skip":
        return None
    have = {tag_key(t) for t in existing}
    return [*existing, *(t for t in new if tag_key(t) not in have)]


def render(tags: Sequence[str], config: TagConfig) -> str:
    return format_caption(tags, escape=config.escape)


def parse(text: str) -> list[str]:
    return parse_caption(text.splitlines()[0] if text.strip() else "")


def imported_names(record: Record) -> list[str]:
    """The tags an image came with (sidecars), in imported order, that nobody removed."""
    tags = [(i, t) for i, t in enumerate(record.tags) if not t.source.startswith(("tagger:", "rule:"))
            and t.source != REMOVED_BY_USER and not (t.removed and not t.removed.startswith(SELECTION_MARK))]
    tags.sort(key=lambda it: (it[1].category == "general", it[0]))
    seen: set[str] = set()
    return [t.name for _, t in tags if tag_key(t.name) not in seen and not seen.add(tag_key(t.name))]


def compose(record: Record, selected: Sequence[str], mode: str) -> list[str]:
    """The tags the image's caption is made of after re-selecting stored probabilities, as
    `existing` says (tag_items' rule: only a sentence caption stays alone under "skip")."""
    existing = imported_names(record)
    if not existing and record.texts and mode == "skip":
        return []
    caption = merge(existing, selected, mode)
    return caption if caption is not None else existing


def placement(rows: Sequence[tuple[int, str, str, str]], caption: Sequence[str]
              ) -> tuple[list[tuple[int, str, int | None]], list[tuple[str, int]]]:
    """Marks (rowid, removed, rank) that make an image's tag rows (rowid, source, tag, removed)
    spell `caption`, and the caption tags no row has (a replacement's new name) with their
    rank. User tags and removals, and filter removals, stay as they are."""
    rank: dict[str, int] = {}
    for i, name in enumerate(caption):
        rank.setdefault(tag_key(name), i)
    marks, have = [], set()
    for rowid, source, name, removed in rows:
        if source == REMOVED_BY_USER or removed == REMOVED_BY_USER:
            continue
        key = tag_key(name)
        ours = not removed or removed.startswith(SELECTION_MARK)
        if key in rank:
            have.add(key)
            marks.append((rowid, "" if ours else removed, rank[key]))
        elif ours:
            why = "select" if source.startswith("tagger:") else "existing"
            marks.append((rowid, SELECTION_MARK + why, None))
        elif filter_mark(removed):
            marks.append((rowid, removed, None))
    missing = [(name, i) for i, name in enumerate(caption) if tag_key(name) not in have
               and rank[tag_key(name)] == i]
    return marks, missing


@dataclass
class Item:
    """One image to tag, from a workspace record or a folder file alike."""

    shown: str
    path: Path  # the file the tagger reads (a workspace image's leaf: crop, cut-out or original)
    existing: list[str]  # the tags it came with (imported sidecars, or its caption file)
    texts_only: bool = False  # it came with a sentence caption and no tags


@dataclass
class Tagged:
    index: int
    probs: np.ndarray | None  # None: the image could not be tagged (error says why)
    caption: list[str] | None  # the caption's tags; None: leave its existing caption as it is
    error: str | None = None


def tag_items(tagger: Tagger, tags: Sequence[TagInfo], items: Sequence[Item], config: TagConfig,
              on_progress: ProgressFn | None = None) -> Iterator[Tagged]:
    """The stage's per-image step, the same for a workspace and a plain folder: the tagger's
    probabilities, the tags they select, merged with the tags the image came with as
    `existing` says (an image with only a sentence caption keeps it under "skip"). Only where
    the result goes differs (manifest annotations, or the caption file beside the image)."""
    for index, probs, error in tagger.predict([it.path for it in items], config.batch_size, on_progress):
        if probs is None:
            yield Tagged(index, None, None, error or "cannot tag")
            continue
        item = items[index]
        if item.texts_only and not item.existing and config.existing == "skip":
            yield Tagged(index, probs, [])
            continue
        yield Tagged(index, probs, merge(item.existing, caption_tags(probs, tags, config), config.existing))
