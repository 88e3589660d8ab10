"""Captions as sd-scripts reads them, and bulk tag edits over a whole dataset.

Caption text: `format_caption` / `parse_caption` (one line, tags joined by ", "),
`insert_trigger` (trigger word first, exactly once), `keep_tokens_for` and `with_separator`
(the two ways to keep that head fixed while sd-scripts shuffles or drops the other tags).

Bulk edits, as in the webui's dataset-tag-editor: `add_tag`, `remove_tags`, `replace_tag` /
`rename`, `regex_replace`, `sort_tags`, `dedupe_tags`. Each takes a dataset (image id -> tags in
order), optionally `only=` a set of image ids, and returns an `EditResult`: the new dataset (the
input is not modified) and one `Change` per image whose caption changed, for a dry-run diff.
`stats` counts tags per image and images per tag, with co-occurrence.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from types import MappingProxyType
from typing import TYPE_CHECKING

from curate.errors import CurateError
from curate.record import Record
from curate.tagging.normalize import normalize_tag
from curate.tagging.tags import Dataset, ScoredTag, names, tag_key

if TYPE_CHECKING:
    from curate.tagging.compile import CaptionFormat

SEPARATOR = "|||"  # what users put in sd-scripts' keep_tokens_separator


def _clean(tag: str) -> str:
    """A tag as one caption item: commas would split it and newlines end the caption (sd-scripts
    reads the first line only), so both become spaces."""
    return " ".join(tag.replace(",", " ").split())


def _tag_name(tag: str, what: str = "tag") -> str:
    name = normalize_tag(tag)
    if not name or "," in name:
        raise CurateError(f"{what} {tag!r} must be one non-empty tag without commas")
    return name


def format_caption(tags: Sequence[str], escape: bool = False) -> str:
    """One caption line: `a, b, c`. Empty tags are left out. `escape` writes `(` as `\\(` for
    use in a webui prompt; training captions stay unescaped (sd-scripts reads them literally)."""
    cleaned = [name for name in map(_clean, tags) if name]
    if escape:
        cleaned = [re.sub(r"(?<!\\)([()])", r"\\\1", name) for name in cleaned]
    return ", ".join(cleaned)


def parse_caption(text: str, sep: str | None = SEPARATOR) -> list[str]:
    """Tags of a caption: split on commas and newlines, whitespace collapsed, empties dropped.
    A keep_tokens separator (`a ||| b`) counts as a comma."""
    if sep:
        text = text.replace(sep, ",")
    return [name for name in (" ".join(part.split()) for part in re.split(r"[,\n]", text)) if name]


def insert_trigger(tags: Sequence[str], trigger: str, class_token: str | None = None) -> list[str]:
    """`[trigger, class_token, *rest]`: every other copy of either (any case, `_` or space) is
    removed from the rest, so each appears exactly once and in front."""
    head = [_tag_name(trigger, "trigger")]
    if class_token is not None and tag_key(class_token) != tag_key(trigger):
        head.append(_tag_name(class_token, "class token"))
    fixed = {tag_key(name) for name in head}
    return head + [name for name in tags if tag_key(name) not in fixed]


def keep_tokens_for(captions: Iterable[Sequence[str]], trigger: str | None = None,
                    class_token: str | None = None) -> int:
    """sd-scripts' `keep_tokens` for captions made by `insert_trigger`: how many leading tags
    (trigger, class token) must stay in place when tags are shuffled or dropped. It is one
    number for a whole subset, so every caption must start with that head."""
    head = [tag_key(name) for name in (trigger, class_token) if name]
    if len(head) == 2 and head[0] == head[1]:
        head = head[:1]
    for tags in captions:
        if [tag_key(name) for name in tags[: len(head)]] != head:
            start = ", ".join(tags[: len(head) + 1])
            raise CurateError(f"caption '{start}, ...' does not start with {', '.join(head)}: "
                              "insert the trigger first (insert_trigger)")
    return len(head)


def with_separator(tags: Sequence[str], fixed: int, sep: str = SEPARATOR) -> str:
    """`a, b ||| c, d`: the first `fixed` tags before sd-scripts' keep_tokens_separator.

    sd-scripts splits on the separator only when it shuffles, drops tags or warms up tokens;
    otherwise the separator stays in the caption text, so use this form only with those.
    With `fixed` = 0 there is nothing to keep and the caption is written without a separator.
    """
    if not 0 <= fixed <= len(tags):
        raise CurateError(f"cannot keep {fixed} tags of a caption with {len(tags)}")
    cleaned = [_clean(name) for name in tags]
    if any(sep in name for name in cleaned):
        raise CurateError(f"a tag contains the separator {sep!r}: {', '.join(cleaned)}")
    if fixed == 0:
        return format_caption(cleaned)
    head, tail = format_caption(cleaned[:fixed]), format_caption(cleaned[fixed:])
    return f"{head} {sep} {tail}" if tail else f"{head} {sep}"


def caption_of(record: Record, fmt: CaptionFormat | None = None) -> str | None:
    """The caption `curate layout` writes for `record` in `fmt` (default: the `tags` format),
    compiled from its annotations (tagging/compile.py), never stored; None when it has none.
    What the report, concept matching and caption edits see."""
    from curate.tagging.compile import CaptionFormat, compile_caption

    made = compile_caption(record.tags, record.texts, fmt or CaptionFormat(), trigger=record.trigger,
                           class_tokens=record.class_tokens, user_caption=record.user_caption)
    return made.text or None


@dataclass(frozen=True)
class Change:
    """One image's caption before and after an edit."""

    image: str
    before: tuple[str, ...]
    after: tuple[str, ...]

    @property
    def removed(self) -> list[str]:
        return list((Counter(self.before) - Counter(self.after)).elements())

    @property
    def added(self) -> list[str]:
        return list((Counter(self.after) - Counter(self.before)).elements())

    def lines(self) -> list[str]:
        """`image: - tag` / `image: + tag`; a pure reordering shows the new caption after `~`."""
        removed, added = self.removed, self.added
        if not removed and not added:
            return [f"{self.image}: ~ {', '.join(self.after)}"]
        return [f"{self.image}: - {name}" for name in removed] + [f"{self.image}: + {name}" for name in added]


@dataclass(frozen=True)
class EditResult:
    dataset: dict[str, list[ScoredTag]]
    changes: list[Change]

    def diff(self) -> list[str]:
        return [line for change in self.changes for line in change.lines()]


Edit = Callable[[list[ScoredTag]], list[ScoredTag]]


def _edit(dataset: Dataset, edit: Edit, only: Collection[str] | None) -> EditResult:
    chosen = None if only is None else set(only)
    out: dict[str, list[ScoredTag]] = {}
    changes = []
    for image, tags in dataset.items():
        before = list(tags)
        after = edit(list(before)) if chosen is None or image in chosen else before
        out[image] = after
        if names(after) != names(before):
            changes.append(Change(image, tuple(names(before)), tuple(names(after))))
    return EditResult(out, changes)


def add_tag(dataset: Dataset, tag: str, position: str | int = "end", *, category: str = "general",
            confidence: float = 1.0, only: Collection[str] | None = None) -> EditResult:
    """Add `tag` at "start", "end" or an index (list.insert rules) to every image lacking it."""
    name = _tag_name(tag)
    if position not in ("start", "end") and (isinstance(position, bool) or not isinstance(position, int)):
        raise CurateError(f"position must be 'start', 'end' or an index, not {position!r}")
    new = ScoredTag(name, category, confidence)

    def edit(tags: list[ScoredTag]) -> list[ScoredTag]:
        if any(tag_key(t.name) == tag_key(name) for t in tags):
            return tags
        index = 0 if position == "start" else len(tags) if position == "end" else int(position)
        tags.insert(index, new)
        return tags

    return _edit(dataset, edit, only)


def remove_tags(dataset: Dataset, tags: Iterable[str], *, only: Collection[str] | None = None) -> EditResult:
    """Remove every tag of `tags` (any case, `_` or space) wherever it appears."""
    keys = {tag_key(name) for name in tags}
    return _edit(dataset, lambda current: [t for t in current if tag_key(t.name) not in keys], only)


def replace_tag(dataset: Dataset, old: str, new: str, *, only: Collection[str] | None = None) -> EditResult:
    """Replace `old` by `new` in place. Where `new` is already there the two merge into one
    `new` at the earlier of their places, with the higher confidence of the two."""
    name = _tag_name(new)
    old_key, new_key = tag_key(old), tag_key(name)

    def edit(tags: list[ScoredTag]) -> list[ScoredTag]:
        hits = [i for i, t in enumerate(tags) if tag_key(t.name) in (old_key, new_key)]
        if not any(tag_key(tags[i].name) == old_key for i in hits):
            return tags
        existing = next((tags[i] for i in hits if tag_key(tags[i].name) == new_key), tags[hits[0]])
        merged = replace(existing, name=name, confidence=max(tags[i].confidence for i in hits))
        kept = [t for i, t in enumerate(tags) if i not in hits]
        kept.insert(hits[0], merged)
        return kept

    return _edit(dataset, edit, only)


def rename(dataset: Dataset, old: str, new: str, *, only: Collection[str] | None = None) -> EditResult:
    """Same as `replace_tag` (dataset-tag-editor names it both ways)."""
    return replace_tag(dataset, old, new, only=only)


def regex_replace(dataset: Dataset, pattern: str, repl: str, *,
                  only: Collection[str] | None = None) -> EditResult:
    """`re.sub(pattern, repl, tag)` on every tag (anchor with ^...$ to match whole tags). A
    result that is empty removes the tag; one with commas becomes several tags; a result the
    image already has is merged into it."""
    try:
        regex = re.compile(pattern)
    except re.error as exc:
        raise CurateError(f"bad regular expression {pattern!r}: {exc}") from None

    def edit(tags: list[ScoredTag]) -> list[ScoredTag]:
        result: list[ScoredTag] = []
        seen = {tag_key(t.name) for t in tags if regex.search(t.name) is None}
        for tag in tags:
            if regex.search(tag.name) is None:
                result.append(tag)
                continue
            try:
                replaced = regex.sub(repl, tag.name)
            except (re.error, IndexError) as exc:
                raise CurateError(f"bad replacement {repl!r} for {pattern!r}: {exc}") from None
            for name in (normalize_tag(part) for part in replaced.split(",")):
                if name and tag_key(name) not in seen:
                    seen.add(tag_key(name))
                    result.append(replace(tag, name=name))
        return result

    return _edit(dataset, edit, only)


def _sort_keys(dataset: Dataset) -> dict[str, Callable[[ScoredTag], tuple]]:
    images_with = Counter(key for tags in dataset.values() for key in {tag_key(t.name) for t in tags})
    return {
        "confidence": lambda tag: (-tag.confidence,),
        "alpha": lambda tag: (tag.name.casefold(),),
        "frequency": lambda tag: (-images_with[tag_key(tag.name)],),
    }


def sort_tags(dataset: Dataset, by: str = "confidence", keep_first: int = 0, *,
              only: Collection[str] | None = None) -> EditResult:
    """Sort each caption after its first `keep_first` tags (trigger, class token): highest
    confidence first, alphabetically, or most frequent in the dataset first. Ties keep their
    order."""
    keys = _sort_keys(dataset)
    if by not in keys:
        raise CurateError(f"cannot sort by {by!r}; use one of: {', '.join(keys)}")
    if keep_first < 0:
        raise CurateError(f"keep_first must be 0 or more, not {keep_first}")
    return _edit(dataset, lambda tags: tags[:keep_first] + sorted(tags[keep_first:], key=keys[by]), only)


def dedupe_tags(dataset: Dataset, *, only: Collection[str] | None = None) -> EditResult:
    """One copy of each tag (any case, `_` or space): the first, with the highest confidence."""

    def edit(tags: list[ScoredTag]) -> list[ScoredTag]:
        first: dict[str, ScoredTag] = {}
        for tag in tags:
            key = tag_key(tag.name)
            kept = first.get(key, tag)
            first[key] = replace(kept, confidence=max(kept.confidence, tag.confidence))
        return list(first.values())

    return _edit(dataset, edit, only)


@dataclass(frozen=True)
class TagCount:
    tag: str
    images: int
    share: float  # of all images in the dataset


@dataclass(frozen=True)
class Stats:
    images: int
    frequency: tuple[TagCount, ...]  # most frequent first, ties by name
    images_per_tag: Mapping[str, tuple[str, ...]]
    tags_per_image: Mapping[str, int]
    _names: Mapping[str, str] = field(repr=False)  # tag key -> name as first spelled
    _image_keys: Mapping[str, frozenset[str]] = field(repr=False)

    def count(self, tag: str) -> int:
        """How many images carry `tag` (any case, `_` or space)."""
        name = self._names.get(tag_key(tag))
        return len(self.images_per_tag[name]) if name is not None else 0

    def cooccurrence(self, tag: str, limit: int | None = None) -> list[tuple[str, int]]:
        """The tags found in images with `tag`, and in how many of them; most first, ties by name."""
        name = self._names.get(tag_key(tag))
        if name is None:
            return []
        together: Counter[str] = Counter()
        for image in self.images_per_tag[name]:
            together.update(self._image_keys[image] - {tag_key(name)})
        pairs = [(self._names[key], count) for key, count in together.items()]
        ranked = sorted(pairs, key=lambda pair: (-pair[1], pair[0]))
        return ranked[:limit] if limit is not None else ranked


def stats(dataset: Dataset) -> Stats:
    """Tag frequencies of a dataset; a tag twice in one image counts once."""
    shown: dict[str, str] = {}
    images_of: dict[str, list[str]] = {}
    image_keys: dict[str, frozenset[str]] = {}
    for image, tags in dataset.items():
        keys = []
        for tag in tags:
            key = tag_key(tag.name)
            shown.setdefault(key, tag.name)
            keys.append(key)
        image_keys[image] = frozenset(keys)
        for key in dict.fromkeys(keys):
            images_of.setdefault(key, []).append(image)
    total = len(dataset)
    frequency = sorted(
        (TagCount(shown[key], len(found), len(found) / total) for key, found in images_of.items()),
        key=lambda row: (-row.images, row.tag),
    )
    return Stats(
        images=total,
        frequency=tuple(frequency),
        images_per_tag=MappingProxyType({shown[key]: tuple(found) for key, found in images_of.items()}),
        tags_per_image=MappingProxyType({image: len(tags) for image, tags in dataset.items()}),
        _names=MappingProxyType(shown),
        _image_keys=MappingProxyType(image_keys),
    )
