"""The one record type that flows through the pipeline.

A `Record` is an image in a workspace together with everything the stages learned about it:
where it came from, its tags with confidences, its caption and the decisions taken about it,
each with a reason. Records are immutable; a stage returns new ones via `dataclasses.replace`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

# Verdicts shared by stages; reports and `curate status` count them.
IMPORTED = "imported"
REPAIRED = "repaired"
MERGED = "merged"
SKIPPED = "skipped"
WARNING = "warning"
DUPLICATE = "duplicate"  # dedupe: another image of the group was kept; reason names it
KEPT = "kept"  # dedupe: this image stands for its group
REJECTED = "rejected"  # quality: failed a check of `curate filter`; reason names each
CAPTIONED = "captioned"  # caption: a model sentence became the image's text
# caption: the model's sentence failed a check (reason names it); no text is stored, and the
# image stays in the dataset, to be re-tried or captioned by hand
CAPTION_REJECTED = "caption-rejected"
# An image with a current decision of one of these verdicts is left out of later stages.
EXCLUDING = frozenset({DUPLICATE, REJECTED})

# Tag categories, as in Danbooru / WD14 `selected_tags.csv` plus the namespaces scrapers use.
GENERAL = "general"
CHARACTER = "character"
COPYRIGHT = "copyright"
ARTIST = "artist"
META = "meta"
RATING = "rating"
OTHER = "other"


@dataclass(frozen=True)
class Decision:
    """What a stage decided about an image (or a source file that never became one)."""

    stage: str
    verdict: str
    reason: str
    subject: str = ""


@dataclass(frozen=True)
class Origin:
    """One place an image was imported from (an exact duplicate has several)."""

    source_path: str
    source_kind: str
    source_root: str
    metadata: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Tag:
    """One tag of an image: its canonical name (curate.tagging.normalize), category, where it came from
    ("gallery-dl", "hydrus", "wd14:<model>", "user", ...) and the confidence when there is one.
    `removed` names the rule (or "user") that took it out of captions; it stays as data."""

    name: str
    category: str = GENERAL
    confidence: float = 1.0
    source: str = ""
    removed: str = ""
    # Place in the caption a stage or the user gave it (None: not placed; imported order).
    rank: int | None = None


@dataclass(frozen=True)
class Text:
    """A sentence caption of an image and where it came from (".caption", "img2dataset",
    "vlm:<model>:<prompt>", "user")."""

    text: str
    source: str = ""


# Who took a tag out of the caption (Tag.removed): the user, the tag stage's selection
# ("tag:..."); any other non-empty mark is the id of the `curate tags filter` rule.
REMOVED_BY_USER = "user"
SELECTION_MARK = "tag:"


def filter_mark(removed: str) -> bool:
    """True for a mark `curate tags filter` owns (it clears and re-applies them each run)."""
    return bool(removed) and removed != REMOVED_BY_USER and not removed.startswith(SELECTION_MARK)


@dataclass(frozen=True)
class Record:
    """An image and its annotations. `tags` holds removed tags too (see Tag.removed); `texts`
    the sentence captions; `trigger`/`class_tokens` what `curate captions trigger` set;
    `user_caption` a caption the user edited by hand in a laid-out dataset, which wins over
    every stage. The caption itself is compiled from these (`caption`), never stored."""

    sha256: str
    path: Path
    width: int
    height: int
    mode: str
    format: str
    origins: tuple[Origin, ...] = ()
    tags: tuple[Tag, ...] = ()
    texts: tuple[Text, ...] = ()
    trigger: str | None = None
    class_tokens: str | None = None
    user_caption: str | None = None
    decisions: tuple[Decision, ...] = ()
    extra: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))

    @property
    def kept_tags(self) -> tuple[Tag, ...]:
        return tuple(t for t in self.tags if not t.removed)

    @property
    def pixels(self) -> int:
        return self.width * self.height

    @property
    def has_alpha(self) -> bool:
        return self.mode in ("RGBA", "LA", "PA")

    @property
    def excluded(self) -> bool:
        return any(d.verdict in EXCLUDING for d in self.decisions)

    def tag_confidences(self, source: str | None = None) -> dict[str, float]:
        """Tag -> confidence, highest confidence wins when several sources name a tag."""
        out: dict[str, float] = {}
        for tag in self.tags:
            if source is None or tag.source == source:
                out[tag.name] = max(out.get(tag.name, 0.0), tag.confidence)
        return out

    def with_decision(self, decision: Decision) -> Record:
        from dataclasses import replace

        return replace(self, decisions=(*self.decisions, decision))
