"""From tagger probabilities to caption tags, and how new tags meet an existing caption.

A workspace stores every probability >= STORE_FLOOR (and the four ratings), so a new threshold
can be applied later without the model (`curate tag --rethreshold`). MCut on stored values can
differ from MCut on the full output only when its widest gap lies below the floor.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from curate.stages.tag.config import TagConfig
from tagging.captions import format_caption, parse_caption
from tagging.model import CATEGORY_NAMES, TagInfo
from tagging.select import SelectConfig, format_tag, select_tags
from tagging.tags import tag_key

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
    """(raw name, category, probability) worth keeping for re-thresholding."""
    return [(t.name, t.category_name, float(p)) for t, p in zip(tags, probs, strict=True)
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
