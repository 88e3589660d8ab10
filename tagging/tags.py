"""The plain data that tag rules and caption edits work on.

A dataset is `Mapping[str, Sequence[ScoredTag]]`: image id -> its tags in caption order. Names
are in display form (`brown hair`, not `brown_hair`). Two names denote the same tag when their
`tag_key`s are equal, so `Brown_Hair` typed by a user finds `brown hair` in a caption.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache

from curate.tagging.normalize import normalize_tag

# As in Danbooru / WD14 `selected_tags.csv`.
CATEGORIES = ("general", "character", "copyright", "artist", "meta", "rating")


@dataclass(frozen=True)
class ScoredTag:
    """One tag of one image; `confidence` is the tagger's probability (1.0 for human tags)."""

    name: str
    category: str = "general"
    confidence: float = 1.0


Dataset = Mapping[str, Sequence[ScoredTag]]


@lru_cache(maxsize=1 << 16)  # rules compare every tag of every image, many times over
def tag_key(name: str) -> str:
    """The comparison form of a tag name: normalised (`_` -> space) and case-folded."""
    return normalize_tag(name).casefold()


def names(tags: Iterable[ScoredTag]) -> list[str]:
    """The caption of an image: its tag names in order."""
    return [tag.name for tag in tags]


def from_captions(
    captions: Mapping[str, Sequence[str]], category: str = "general"
) -> dict[str, list[ScoredTag]]:
    """A dataset from plain caption lists (human tags: confidence 1.0)."""
    return {image: [ScoredTag(name, category) for name in tags] for image, tags in captions.items()}


def to_captions(dataset: Dataset) -> dict[str, list[str]]:
    """Image id -> caption tag names, in order."""
    return {image: names(tags) for image, tags in dataset.items()}
