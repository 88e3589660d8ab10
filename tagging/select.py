"""From a tagger's probabilities to an ordered tag list: thresholds, MCut, rating, order, rules.

Measuring and judging stay apart: the engine stores probabilities, this module applies
thresholds afterwards, so changing a threshold never means running the model again.

Names stay raw (`long_hair`) in `ScoredTag`; `format_tag` turns one into caption text.
`replace` works for CSV-format models too, unlike sd-scripts' `--tag_replacement`, which is a
no-op for them (bmaltais/kohya_ss #2346).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np

from curate.tagging.model import CATEGORY_NAMES, TagInfo
from curate.tagging.normalize import normalize_tag
from curate.tagging.tags import ScoredTag, tag_key

RATING, GENERAL, CHARACTER = 9, 0, 4
RATING_MODES = ("drop", "keep", "first")
# Floor for the character threshold under MCut, as in SmilingWolf's demo: character
# probabilities are often all low, and MCut alone would then admit noise.
CHARACTER_MCUT_FLOOR = 0.15


@dataclass(frozen=True)
class SelectConfig:
    """How probabilities become tags. Defaults: the common 0.35 general / 0.85 character."""

    threshold: float = 0.35
    character_threshold: float = 0.85
    mcut: bool = False
    rating: Literal["drop", "keep", "first"] = "drop"
    character_first: bool = False
    max_tags: int | None = None
    undesired: tuple[str, ...] = ()
    replace: tuple[tuple[str, str], ...] = ()

    def __post_init__(self) -> None:
        for name in ("threshold", "character_threshold"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} must be between 0 and 1, got {value}")
        if self.rating not in RATING_MODES:
            raise ValueError(f"rating must be one of {', '.join(RATING_MODES)}, got {self.rating!r}")
        if self.max_tags is not None and self.max_tags < 0:
            raise ValueError(f"max_tags must be >= 0, got {self.max_tags}")


def mcut_threshold(probs: np.ndarray) -> float:
    """Maximum Cut Thresholding: the midpoint of the widest gap between sorted probabilities.

    Sorted descending, t = argmax(p[i] - p[i+1]) and the threshold is (p[t] + p[t+1]) / 2, so
    the tags above the biggest drop pass. With fewer than two values there is no gap: 0.0.
    """
    values = np.sort(np.asarray(probs, dtype=np.float64).ravel())[::-1]
    if values.size < 2:
        return 0.0
    t = int(np.argmax(values[:-1] - values[1:]))
    return float((values[t] + values[t + 1]) / 2)


def select_tags(probs: np.ndarray, tags: Sequence[TagInfo], config: SelectConfig) -> list[ScoredTag]:
    """The tags that pass, ordered: [rating if "first"], [characters if character_first],
    general by descending confidence, [characters otherwise], [rating if "keep"]."""
    probs = np.asarray(probs, dtype=np.float64).ravel()
    if probs.size != len(tags):
        raise ValueError(f"{probs.size} probabilities for {len(tags)} tags")
    categories = np.array([tag.category for tag in tags])
    general_idx = np.flatnonzero((categories != RATING) & (categories != CHARACTER))
    character_idx = np.flatnonzero(categories == CHARACTER)
    general_cut, character_cut = _thresholds(probs, general_idx, character_idx, config)
    general = _rules(_passing(probs, tags, general_idx, general_cut), config)
    if config.max_tags is not None:
        general = general[:config.max_tags]
    characters = _rules(_passing(probs, tags, character_idx, character_cut), config)
    rating = _rules(_rating(probs, tags, categories), config) if config.rating != "drop" else []
    head = rating if config.rating == "first" else []
    tail = rating if config.rating == "keep" else []
    ordered = (head + characters + general + tail if config.character_first
               else head + general + characters + tail)
    return _dedupe(ordered)


def _thresholds(probs: np.ndarray, general_idx: np.ndarray, character_idx: np.ndarray,
                config: SelectConfig) -> tuple[float, float]:
    if not config.mcut:
        return config.threshold, config.character_threshold
    general = mcut_threshold(probs[general_idx])
    character = max(mcut_threshold(probs[character_idx]), CHARACTER_MCUT_FLOOR)
    return general, character


def _passing(probs: np.ndarray, tags: Sequence[TagInfo], indices: np.ndarray, cut: float) -> list[ScoredTag]:
    """Tags strictly above `cut` (as SmilingWolf's demo compares), highest confidence first."""
    chosen = [i for i in indices if probs[i] > cut]
    # stable sort on -confidence: equal confidences keep CSV order, so output is reproducible
    chosen.sort(key=lambda i: -probs[i])
    return [ScoredTag(tags[i].name, CATEGORY_NAMES[tags[i].category], float(probs[i])) for i in chosen]


def _rating(probs: np.ndarray, tags: Sequence[TagInfo], categories: np.ndarray) -> list[ScoredTag]:
    """The single most likely rating (the four ratings are exclusive; argmax, no threshold)."""
    idx = np.flatnonzero(categories == RATING)
    if idx.size == 0:
        return []
    best = int(idx[np.argmax(probs[idx])])
    return [ScoredTag(tags[best].name, "rating", float(probs[best]))]


def _rules(scored: list[ScoredTag], config: SelectConfig) -> list[ScoredTag]:
    """`replace` (old=new), then drop `undesired`, matched by either the old or the new name.

    A tag replaced by an empty name is dropped.
    """
    replacements = {tag_key(old): new for old, new in config.replace}
    unwanted = {tag_key(name) for name in config.undesired}
    kept = []
    for tag in scored:
        new_name = replacements.get(tag_key(tag.name), tag.name).strip()
        if not new_name or tag_key(tag.name) in unwanted or tag_key(new_name) in unwanted:
            continue
        kept.append(ScoredTag(new_name, tag.category, tag.confidence))
    return kept


def _dedupe(tags: list[ScoredTag]) -> list[ScoredTag]:
    """First occurrence wins: replacing `short_hair` by `long_hair` must not list it twice."""
    seen: set[str] = set()
    out = []
    for tag in tags:
        if tag_key(tag.name) not in seen:
            seen.add(tag_key(tag.name))
            out.append(tag)
    return out


def format_tag(name: str, escape: bool = False) -> str:
    """Caption text for a raw tag: underscores to spaces except in kaomoji (`^_^` stays, per
    `curate.tagging.normalize.KAOMOJI`).

    `escape=True` writes `\\(` and `\\)` for prompt syntax (A1111/ComfyUI read bare parentheses
    as emphasis); training captions should not be escaped.
    """
    text = normalize_tag(name)
    if escape:
        text = text.replace("(", "\\(").replace(")", "\\)")
    return text

