"""The tag part of a compiled caption (see `curate.tagging.compile`): which tags, in what order, spelled how.

Pure functions over `curate.record.Tag`. Names arrive canonical (spaces, unescaped) from the one
normaliser at every entry point; they are canonicalised once more here anyway, so that a name
stored before that normaliser existed (`saber_\\(fate\\)`) still compares equal to `saber (fate)`.
Spelling (underscores, escaped parentheses) is chosen only here, at compile time.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from curate.record import GENERAL, Tag
from curate.tagging.normalize import KAOMOJI, normalize_tag

USER = "user"  # Tag.removed / Text.source for the user's own edits


def canonical(name: str, separators: Iterable[str] = ()) -> str:
    """`saber_\\(fate\\)` -> `saber (fate)`: escapes undone, underscores to spaces (kaomoji keep
    theirs), whitespace collapsed. Each of `separators` becomes a space: a comma inside a tag
    would make sd-scripts read two tags, and a `|||` inside one would move the kept head."""
    name = name.replace("\\(", "(").replace("\\)", ")")
    for sep in separators:
        name = name.replace(sep, " ")
    return normalize_tag(name)


def key(name: str) -> str:
    """The comparison form: canonical and case-folded (`Long_Hair` == `long hair`)."""
    return canonical(name).casefold()


def without_prefix(name: str, words: Sequence[str]) -> str:
    """`sks woman` without the leading trigger words `["sks"]` -> `woman`. Only a leading
    occurrence is removed: `hatsune miku` keeps its words when the trigger is `miku`."""
    parts = name.split()
    if words and len(parts) > len(words) and [p.casefold() for p in parts[: len(words)]] == list(words):
        return " ".join(parts[len(words):])
    return name


def spell(name: str, underscores: bool, escape: bool) -> str:
    """A canonical name in the spelling the user chose: `long_hair`, `saber \\(fate\\)`."""
    if underscores and name.casefold() not in KAOMOJI:
        name = name.replace(" ", "_")
    if escape:
        name = re.sub(r"(?<!\\)([()])", r"\\\1", name)
    return name


@dataclass
class _Merged:
    """All copies of one tag (several sources may name it)."""

    names: list[tuple[float, str]] = field(default_factory=list)  # (confidence, name) kept copies
    categories: set[str] = field(default_factory=set)
    user_removed: bool = False
    # where it goes when nothing else decides: a rank a stage or the user gave it (captions
    # sort, the tagger's selection, a migrated caption), else the order its sources listed it in
    place: tuple[int, int] = (1, 0)

    @property
    def confidence(self) -> float:
        return max(conf for conf, _ in self.names)

    @property
    def name(self) -> str:
        # the spelling of the most confident copy; ties by name, so the result never depends
        # on the order the sources were read in
        return min(self.names, key=lambda item: (-item[0], item[1]))[1]

    @property
    def category(self) -> str:
        # A source that knows a category beats one that files everything as general (a plain
        # .txt sidecar); between two that know, the first by name, for determinism.
        specific = sorted(self.categories - {GENERAL})
        return specific[0] if specific else GENERAL


@dataclass(frozen=True)
class TagChoice:
    """What `select_tags` needs of a CaptionFormat (kept apart so this module stays free of it)."""

    order: tuple[str, ...]
    leave_out: frozenset[str]
    max_tags: int
    separators: tuple[str, ...]


def _merge(tags: Iterable[Tag], drop: set[str], trigger_words: Sequence[str],
           separators: tuple[str, ...]) -> dict[str, _Merged]:
    merged: dict[str, _Merged] = {}
    for index, tag in enumerate(tags):
        name = without_prefix(canonical(tag.name, separators), trigger_words)
        if not name or name.casefold() in drop:
            continue
        place = (0, tag.rank) if tag.rank is not None else (1, index)
        entry = merged.setdefault(name.casefold(), _Merged(place=place))
        entry.place = min(entry.place, place)
        if tag.removed == USER:
            entry.user_removed = True  # the user's edit wins over every source
        elif not tag.removed:
            entry.names.append((tag.confidence, name))
            entry.categories.add(tag.category or GENERAL)
    return merged


def select_tags(tags: Iterable[Tag], choice: TagChoice, *, drop: Iterable[str] = (),
                trigger_words: Sequence[str] = ()) -> list[tuple[str, str]]:
    """(category, canonical name) of the tags to write, in caption order.

    A name is written once (copies merged after canonicalising), when at least one copy is kept
    (`removed == ""`) and the user did not remove it; its category must not be left out. `drop`
    holds keys already in the caption's head (trigger, class tokens); a tag starting with the
    trigger's words loses them first (`sks woman` -> `woman`), so the trigger is written once.
    Order: tags a stage or the user placed (Tag.rank) first, in that order; then by the
    category's place in `choice.order` (unlisted categories after, by name), confidence (highest
    first), and the order the sources listed them in (a scraper's or a user's tag order is kept
    where confidences tie, as they do for every imported tag); at most `max_tags` (0 = all).
    """
    merged = _merge(tags, set(drop), trigger_words, choice.separators)
    rank = {category: i for i, category in enumerate(choice.order)}
    rows = []
    for entry in merged.values():
        if entry.user_removed or not entry.names or entry.category in choice.leave_out:
            continue
        placed, at = entry.place
        where = (rank.get(entry.category, len(rank)), "" if entry.category in rank else entry.category)
        if placed == 0:  # an explicit place beats category and confidence
            rows.append(((0, at), (0, ""), 0.0, 0, entry.category, entry.name))
        else:
            rows.append(((1, 0), where, -entry.confidence, at, entry.category, entry.name))
    rows.sort()
    if choice.max_tags:
        rows = rows[: choice.max_tags]
    return [(category, name) for *_, category, name in rows]
