"""Captions compiled from annotations, per trainer format: nothing here is stored.

An image's annotations (its `Tag`s and `Text`s, the concept's trigger word and class tokens, the
user's own caption) go in; the caption file's one line comes out, with the sd-scripts subset
keys it needs (`keep_tokens`, `keep_tokens_separator`, `shuffle_caption`, `caption_separator`).
Plain data in and out, so `curate layout`, `curate captions` and tests call it the same way.

Formats (docs/captions.md shows each with an example):
- `tags`: trigger, class tokens, then tags by category (character, copyright, general), each
  category by confidence; meta/artist/rating left out. The head (trigger + class tokens) is
  kept in place with `keep_tokens`: its length is the same for every image of a concept.
- `nl`: one sentence with the trigger worked in (`nl_template`); never shuffled.
- `hybrid`: trigger and sentence, `|||`, tags. The sentence's length in comma-items differs per
  image, so only sd-scripts' `keep_tokens_separator` keeps it whole while the tags shuffle.
- `json`: one JSON object (trigger, class, caption, tags by category) on one line.

`|||` is written only when the subset shuffles (sd-scripts splits on it only then; otherwise it
trains the literal `|||`). The user's own caption wins verbatim. `subset_captions` merges the
per-image results into one subset's dataset.toml keys.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from curate.config import check_ranges, option
from curate.errors import CurateError
from curate.record import Tag, Text
from curate.tagging.compile_tags import TagChoice, canonical, key, select_tags, spell, without_prefix

SECTION = "captions"  # its curate.toml table (curate.config.SECTIONS)
PLACEHOLDER = re.compile(r"\{([^{}]*)\}")
PLACEHOLDERS = ("trigger", "class", "text")


@dataclass(frozen=True)
class CaptionFormat:
    """How `curate layout` writes each caption file from the image's annotations (tags, sentences,
    trigger): one format per dataset, or per concept (`format` in concepts.toml). See
    docs/captions.md for one example of each format."""

    format: Literal["tags", "nl", "hybrid", "json"] = option("tags", help=(
        "What the caption file holds: \"tags\" (booru tags: SD 1.x, SDXL, Illustrious, Pony), \"nl\" (a "
        "sentence: Flux, SD3, Qwen-Image), \"hybrid\" (trigger and sentence kept first, tags after, "
        "shuffled) or \"json\" (one JSON object, for trainers that read structured captions)."))
    order: tuple[str, ...] = option(("character", "copyright", "general"), help=(
        "Tag categories in caption order, after the trigger and class tokens. A category named neither "
        "here nor in leave_out (species, other, ...) follows these, by name."))
    leave_out: tuple[str, ...] = option(("meta", "artist", "rating"), help=(
        "Categories never written: they describe the file (highres, translated), who drew it or its "
        "rating, not what the picture shows."))
    underscores: bool = option(False, help=(
        "Booru spelling: `long_hair` instead of `long hair` (kaomoji such as ^_^ always keep theirs)."))
    escape_parentheses: bool = option(False, help=(
        "Write `saber \\(fate\\)`. Escaping is prompt syntax (the webui reads `(x)` as emphasis); "
        "sd-scripts reads a caption literally, so training captions are normally unescaped."))
    max_tags: int = option(0, ge=0, le=1000, help=(
        "At most this many tags after the trigger and class tokens (0 = all); the least confident general"
        " tags go first."))
    shuffle: bool = option(True, help=(
        "Shuffle the tags after the kept head while training (sd-scripts' shuffle_caption), for \"tags\" "
        "and \"hybrid\". \"nl\" and \"json\" captions are never shuffled."))
    caption_separator: Literal[",", ";"] = option(",", help=(
        "sd-scripts' caption_separator: what splits a caption into the items it shuffles and counts."))
    keep_tokens_separator: str = option("|||", help=(
        "sd-scripts' keep_tokens_separator, written after a hybrid caption's sentence."))
    nl_template: str = option("{trigger} {class}, {text}", help=(
        "How \"nl\" and \"hybrid\" work the trigger into the sentence; placeholders {trigger}, {class}, "
        "{text}. Empty ones vanish with the separator beside them. A sentence that already names the "
        "trigger (as a word, any case) is written without trigger and class."))
    text_sources: tuple[str, ...] = option(("user", "vlm", ".caption", "img2dataset"), help=(
        "Which sentence to use when an image has several, by Text.source: an entry matches a source equal"
        " to it or starting with it and \":\" (\"vlm\" matches \"vlm:<model>:<prompt>\"). Sources not "
        "listed come after, in the order they were recorded."))

    def check(self) -> None:
        check_ranges(self, SECTION)
        overlap = sorted(set(self.order) & set(self.leave_out))
        if overlap:
            raise CurateError(f"{SECTION}.order and {SECTION}.leave_out both name {', '.join(overlap)}: "
                              "a category is either written or left out; remove it from one")
        sep = self.keep_tokens_separator
        if not sep.strip() or sep != sep.strip() or self.caption_separator in sep or "\n" in sep:
            raise CurateError(f"{SECTION}.keep_tokens_separator = {sep!r}: must be a mark without spaces "
                              f"or {self.caption_separator!r}, such as '|||'")
        names = PLACEHOLDER.findall(self.nl_template)
        unknown = sorted(set(names) - set(PLACEHOLDERS))
        if unknown or names.count("text") != 1 or "trigger" not in names or "\n" in self.nl_template:
            extra = f"; unknown: {', '.join('{' + n + '}' for n in unknown)}" if unknown else ""
            raise CurateError(f"{SECTION}.nl_template = {self.nl_template!r}: must be one line holding "
                              "{text} once and {trigger} (and may hold {class}), "
                              f"e.g. '{{trigger}} {{class}}, {{text}}'{extra}")


@dataclass(frozen=True)
class Compiled:
    """One caption file's line and what its subset needs in dataset.toml."""

    text: str  # the caption file's content, one line; "" = write no caption file
    keep_tokens: int = 0  # caption_separator-split items of the kept head in this caption
    keep_tokens_separator: str = ""  # "" or the mark between kept head and shuffled tags
    shuffle_caption: bool = False  # True only when what follows the head is tags
    caption_separator: str = ","
    fallback: str = ""  # "tags": nl/hybrid asked for a sentence, the image had none
    user: bool = False  # the user's own caption, written as they wrote it


def compile_caption(tags: Sequence[Tag], texts: Sequence[Text], fmt: CaptionFormat, *,
                    trigger: str | None = None, class_tokens: str | Sequence[str] | None = None,
                    user_caption: str | None = None) -> Compiled:
    """The caption of one image in `fmt`. `class_tokens` may be one string ("woman", split at
    the caption separator) or a list. A non-blank `user_caption` wins (line breaks become
    spaces: the file holds one line; blank counts as none): written as the user wrote it, except
    that in tags and hybrid captions the trigger still comes first and once (see `_user`)."""
    fmt.check()  # a library caller's format did not pass through config.build
    shuffle, sep = _subset_keys(fmt)
    head = _Head.of(trigger, class_tokens, fmt)
    if user_caption is not None and user_caption.strip():
        text = re.sub(r"\s*[\r\n]+\s*", " ", user_caption.strip())
        return Compiled(_user(text, head, fmt), 0, sep, shuffle, fmt.caption_separator, user=True)
    if fmt.format == "tags":
        return _tags(tags, head, fmt)
    if fmt.format == "json":
        return _json(tags, _sentence(texts, fmt), head, fmt)
    sentence = _sentence(texts, fmt)
    if sentence is None:
        return _tags(tags, head, fmt, fallback="tags")  # the caller warns: no sentence
    if fmt.format == "nl":
        return Compiled(_render(fmt.nl_template, head, sentence), 0, "", False, fmt.caption_separator)
    return _hybrid(tags, head, " ".join(sentence.replace(fmt.keep_tokens_separator, " ").split()), fmt)


def _subset_keys(fmt: CaptionFormat) -> tuple[bool, str]:
    """(shuffle_caption, keep_tokens_separator) of a subset in this format: one pair per format,
    so every caption of a subset (fallbacks and the user's own included) agrees."""
    if fmt.format == "tags":
        return fmt.shuffle, ""
    if fmt.format == "hybrid":
        return fmt.shuffle, fmt.keep_tokens_separator if fmt.shuffle else ""
    return False, ""


@dataclass(frozen=True)
class _Head:
    """The trigger and class tokens: written first, once, and kept in place."""

    trigger: str  # as given (whitespace collapsed): a made-up word is not respelled
    spelled: tuple[str, ...]  # class tokens in the chosen spelling
    drop: frozenset[str]  # keys no tag may repeat
    trigger_words: tuple[str, ...]

    @classmethod
    def of(cls, trigger: str | None, class_tokens: str | Sequence[str] | None, fmt: CaptionFormat) -> _Head:
        seps = (fmt.caption_separator, fmt.keep_tokens_separator)
        word = " ".join((trigger or "").split())
        if any(s in word for s in seps):
            raise CurateError(f"trigger {trigger!r}: must be one tag, without {' or '.join(seps)}")
        words = tuple(key(word).split())
        items = [class_tokens] if isinstance(class_tokens, str) else list(class_tokens or ())
        seen, classes = {key(word)} if word else set(), []
        for item in (part for text in items for part in text.split(fmt.caption_separator)):
            name = without_prefix(canonical(item, seps), words)  # "sks woman" after "sks": "woman"
            if name and name.casefold() not in seen:
                seen.add(name.casefold())
                classes.append(name)
        spelled = tuple(spell(name, fmt.underscores, fmt.escape_parentheses) for name in classes)
        return cls(word, spelled, frozenset(seen), words)

    def items(self) -> list[str]:
        return [self.trigger, *self.spelled] if self.trigger else list(self.spelled)


def _user(text: str, head: _Head, fmt: CaptionFormat) -> str:
    """The user's own caption with the trigger first and once: a trigger set after the caption
    was edited by hand (`curate captions trigger`) must still reach it. Nothing else is added:
    the class words are the user's to choose. A caption that already starts with the trigger is
    left as it is; sentences (nl, json) always are."""
    if fmt.format in ("nl", "json") or not head.trigger:
        return text
    sep = fmt.caption_separator
    items = [item.strip() for item in text.split(sep) if item.strip()]
    if items and key(items[0]) == key(head.trigger):
        return text
    rest = [i for i in items if key(i) != key(head.trigger)]
    if len(rest) == len(items):  # nothing taken out: the user's own spacing stays as it was
        return f"{head.trigger}{sep} {text}"
    return f"{sep} ".join([head.trigger, *rest])


def _tag_names(tags: Sequence[Tag], head: _Head, fmt: CaptionFormat) -> list[tuple[str, str]]:
    """(category, spelled name) of the tags after the head."""
    choice = TagChoice(fmt.order, frozenset(fmt.leave_out), fmt.max_tags,
                       (fmt.caption_separator, fmt.keep_tokens_separator))
    chosen = select_tags(tags, choice, drop=head.drop, trigger_words=head.trigger_words)
    return [(category, spell(name, fmt.underscores, fmt.escape_parentheses)) for category, name in chosen]


def _join(items: Sequence[str], fmt: CaptionFormat) -> str:
    return f"{fmt.caption_separator} ".join(items)


def _tags(tags: Sequence[Tag], head: _Head, fmt: CaptionFormat, fallback: str = "") -> Compiled:
    """Trigger, class tokens, tags. In a shuffled hybrid subset (a fallback there) the separator
    follows the head too, so every caption of that subset keeps its head the same way."""
    fixed = head.items()
    names = [name for _, name in _tag_names(tags, head, fmt)]
    shuffle, sep = _subset_keys(fmt)
    if sep and fixed:
        return Compiled(_separated(_join(fixed, fmt), _join(names, fmt), sep), len(fixed), sep, shuffle,
                        fmt.caption_separator, fallback)
    return Compiled(_join(fixed + names, fmt), len(fixed), sep, shuffle, fmt.caption_separator, fallback)


def _separated(head: str, rest: str, sep: str) -> str:
    return f"{head} {sep} {rest}" if rest else f"{head} {sep}"


def _hybrid(tags: Sequence[Tag], head: _Head, sentence: str, fmt: CaptionFormat) -> Compiled:
    first = _render(fmt.nl_template, head, sentence)
    count = len([item for item in first.split(fmt.caption_separator) if item.strip()])
    rest = _join([name for _, name in _tag_names(tags, head, fmt)], fmt)
    _, sep = _subset_keys(fmt)
    if sep:
        return Compiled(_separated(first, rest, sep), count, sep, True, fmt.caption_separator)
    # shuffle off: sd-scripts would train a `|||` literally, so the caption is written plain; a
    # sentence that ends in a full stop is followed by a space, not `., `
    glue = " " if first.endswith((".", "!", "?")) else f"{fmt.caption_separator} "
    text = f"{first}{glue}{rest}" if rest else first
    return Compiled(text, count, "", False, fmt.caption_separator)


def _json(tags: Sequence[Tag], sentence: str | None, head: _Head, fmt: CaptionFormat) -> Compiled:
    by_category: dict[str, list[str]] = {}
    for category, name in _tag_names(tags, head, fmt):
        by_category.setdefault(category, []).append(name)
    data: dict[str, Any] = {"trigger": head.trigger or None,
                            "class": _join(head.spelled, fmt) or None,
                            "caption": sentence, "tags": by_category}
    return Compiled(json.dumps(data, ensure_ascii=False), 0, "", False, fmt.caption_separator)


def _sentence(texts: Sequence[Text], fmt: CaptionFormat) -> str | None:
    """The preferred non-blank sentence, on one line."""
    def rank(item: tuple[int, Text]) -> tuple[int, int]:
        index, text = item
        for place, source in enumerate(fmt.text_sources):
            if text.source == source or text.source.startswith(source + ":"):
                return place, index
        return len(fmt.text_sources), index

    for _, text in sorted(enumerate(texts), key=rank):
        line = " ".join(text.text.split())
        if line:
            return line
    return None


def _render(template: str, head: _Head, sentence: str) -> str:
    """The template filled in; a sentence that already names the trigger gets neither it nor the
    class tokens (it names the subject its own way)."""
    named = head.trigger and re.search(rf"(?<!\w){re.escape(head.trigger)}(?!\w)", sentence, re.IGNORECASE)
    values = {"trigger": "" if named else head.trigger,
              "class": "" if named else " ".join(head.spelled), "text": "\0"}
    filled = PLACEHOLDER.sub(lambda m: values[m.group(1)], template)
    before, _, after = filled.partition("\0")
    return _tidy(before, lead=True) + sentence + _tidy(after, lead=False)


def _tidy(part: str, *, lead: bool) -> str:
    """What empty placeholders leave behind goes: ` , ` -> ``, `sks , ` -> `sks, `."""
    if not re.search(r"\w", part):
        return ""
    part = re.sub(r"\s+", " ", part)
    part = re.sub(r" ([,;])", r"\1", part)
    part = re.sub(r"([,;])(\s*[,;])+", r"\1", part)
    return part.lstrip(" ,;") if lead else part.rstrip(" ,;")


@dataclass(frozen=True)
class SubsetCaptions:
    """One subset's caption keys for dataset.toml, and what the caller should tell the user."""

    shuffle_caption: bool
    keep_tokens: int
    keep_tokens_separator: str
    caption_separator: str
    warnings: tuple[str, ...] = ()

    def toml_keys(self) -> dict[str, Any]:
        """sd-scripts' subset keys; keep_tokens_separator only when a caption uses it."""
        keys: dict[str, Any] = {"shuffle_caption": self.shuffle_caption, "keep_tokens": self.keep_tokens,
                                "caption_separator": self.caption_separator}
        if self.keep_tokens_separator:
            keys["keep_tokens_separator"] = self.keep_tokens_separator
        return keys


def subset_captions(compiled: Mapping[str, Compiled]) -> SubsetCaptions:
    """Merge one subset's captions (image name -> Compiled) into its dataset.toml keys.

    keep_tokens is one number per subset: the largest head, since keeping a few tags of a
    shorter head in place costs nothing while shuffling part of a longer head would move its
    trigger. Captions compiled in one format agree on the rest; mixing formats in one subset
    is an error. A user's own caption that sd-scripts would shuffle, or one holding the
    separator in an unshuffled subset, becomes a warning naming the image.
    """
    kinds = {(c.shuffle_caption, c.keep_tokens_separator, c.caption_separator) for c in compiled.values()}
    if len(kinds) > 1:
        raise CurateError("one subset's captions were compiled in different caption formats "
                          f"({len(kinds)} kinds of dataset.toml keys); use one format per concept")
    shuffle, sep, caption_sep = kinds.pop() if kinds else (False, "", ",")
    keep = max((c.keep_tokens for c in compiled.values() if not c.user), default=0)
    warnings = []
    for name, item in sorted(compiled.items()):
        if not item.user:
            continue
        if shuffle and sep and sep not in item.text:
            warnings.append(f"{name}: your own caption is shuffled after its first {keep} item(s) "
                            f"(shuffle_caption is on); write {sep} after the part to keep whole")
        elif not shuffle and "|||" in item.text:
            warnings.append(f"{name}: your own caption holds '|||', which sd-scripts trains as text "
                            "when shuffle_caption is off; remove it")
    return SubsetCaptions(shuffle, keep, sep, caption_sep, tuple(warnings))
