"""One tag normaliser for every entry point: sidecars, tagger output, rules, caption edits, check.

Booru tags use underscores (`long_hair`); captions use spaces (`long hair`), except in kaomoji
where the underscore is the face (`^_^`). Prompt-escaped parentheses (`saber \\(fate\\)`) are the
same tag as `saber (fate)`. Namespaced tags from Hydrus and imgbrd-grabber
(`character:hatsune miku`, `creator:...`, `series:...`, `rating:safe`) carry their category in
the prefix. Known non-content tags (`highres`, `commentary request`) are `meta` even without a
namespace: the list is data, `rules/meta_tags.toml`.

- `normalize_tag`: the display form (case kept); `canonical_tag`: that, lower-cased: the one
  name a tag is stored under; `curate.tagging.tags.tag_key` compares names through `normalize_tag`.
- `parse_tag`: raw sidecar/tagger text -> `ParsedTag(name, category, namespace)`.
- `category_for`: a category word a scraper uses (`tags_metadata`, `tag_string_meta`, e621's
  `species`/`lore`) -> ours.
- `split_tag_line`: one caption line -> its tags, or None when the line is a sentence.
"""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass
from fnmatch import fnmatchcase
from functools import lru_cache
from importlib import resources

# As in SmilingWolf's tagger demo and sd-scripts: these keep their underscores.
KAOMOJI = frozenset(
    {
        "0_0", "(o)_(o)", "+_+", "+_-", "._.", "<o>_<o>", "<|>_<|>", "=_=", ">_<", "3_3",
        "6_9", ">_o", "@_@", "^_^", "o_o", "u_u", "x_x", "|_|", "||_||",
    }
)
# Danbooru tags whose backslash is part of the tag, not a prompt escape.
VERBATIM = frozenset({"\\(^o^)/", "\\m/", "\\||/", "\\n/"})

# Namespace prefix (and scraper category word) -> our category. Hydrus says creator/series,
# Danbooru artist/copyright, Gelbooru "metadata", e621 species/lore/contributor/invalid.
NAMESPACES = {
    "general": "general", "tag": "general",
    "character": "character", "char": "character", "person": "character",
    "creator": "artist", "artist": "artist", "studio": "artist", "contributor": "artist",
    "series": "copyright", "copyright": "copyright", "franchise": "copyright",
    "meta": "meta", "metadata": "meta", "medium": "meta",
    "rating": "rating",
    "species": "species",
    "lore": "lore",
    "title": "title",
    "invalid": "other", "deprecated": "other", "model": "character",
}
# A word that reads as an (unknown) namespace in a namespaced export: `page:1`, `gender:female`.
# Two letters are not enough (`re:zero` is a tag), nor a space after the colon.
_NAMESPACE_LIKE = re.compile(r"[a-z][a-z0-9_ -]{2,29}")
# Rating values as sites write them -> the WD14 / Danbooru names; e621's `s` is "safe".
RATINGS = {"g": "general", "general": "general", "s": "sensitive", "sensitive": "sensitive",
           "q": "questionable", "questionable": "questionable", "e": "explicit",
           "explicit": "explicit", "safe": "safe", "nsfw": "explicit", "sfw": "general"}
_ESCAPED = re.compile(r"\\([()\[\]])")
_BOORU_WORD = re.compile(r"\w_\w|^[a-z0-9_]+:\S")  # `long_hair`, `character:saber`


@dataclass(frozen=True)
class ParsedTag:
    """A tag as the annotation model stores it; `namespace` is set only for a namespace we do
    not understand (category "other"), so it is kept as data instead of glued into the name."""

    name: str
    category: str = "general"
    namespace: str = ""


@lru_cache(maxsize=1)
def meta_patterns() -> tuple[frozenset[str], tuple[str, ...]]:
    """(exact names, glob patterns) of known meta tags, from `rules/meta_tags.toml`."""
    data = tomllib.loads(resources.files("curate.tagging.rules").joinpath("meta_tags.toml")
                         .read_text(encoding="utf-8"))
    return frozenset(data["names"]), tuple(data["patterns"])


def is_meta(name: str) -> bool:
    """True for a known non-content tag (`highres`, `translation request`), canonical form."""
    exact, patterns = meta_patterns()
    return name in exact or any(fnmatchcase(name, p) for p in patterns)


def normalize_tag(tag: str) -> str:
    """`long_hair ` -> `long hair`; `saber \\(fate\\)` -> `saber (fate)`; kaomoji keep their
    underscores; inner spaces collapsed. Case is kept (see `canonical_tag`)."""
    tag = " ".join(tag.strip().split())
    if tag in KAOMOJI or tag.lower() in KAOMOJI or tag in VERBATIM:
        return tag
    tag = _ESCAPED.sub(r"\1", tag)
    if tag in KAOMOJI or tag.lower() in KAOMOJI:
        return tag
    return " ".join(tag.replace("_", " ").split())


def canonical_tag(tag: str) -> str:
    """The one stored name of a tag: normalised and lower-cased (booru tags are lower-case;
    the spelling a caption uses is chosen when it is compiled)."""
    return normalize_tag(tag).lower()


def category_for(word: str) -> str | None:
    """Our category for a scraper's category word (`metadata`, `tags_artist`, `tag_string_meta`),
    or None when it is not one we know."""
    key = word.strip().lower()
    for prefix in ("tag_string_", "tags_"):
        key = key.removeprefix(prefix)
    return NAMESPACES.get(key.replace("_", " ").strip())


def rating_name(value: str, site: str = "") -> str | None:
    """A post's rating as the annotation model names it (`g` -> general); None if unknown."""
    key = value.strip().lower()
    if key == "s" and site.lower() in ("e621", "e926", "e6ai"):
        return "safe"
    return RATINGS.get(key)


def parse_tag(raw: str, category: str | None = None, *, namespaced: bool = False) -> ParsedTag | None:
    """One raw tag -> its canonical name and category; None for an empty tag.

    `category` is the category the source gave (then no namespace is looked for: booru tag
    strings hold `nier:automata` as a tag). Without it, a known namespace prefix sets the
    category; with `namespaced` (the file is a Hydrus/imgbrd-grabber namespaced export) an
    unknown namespace becomes category "other" with the namespace kept.
    """
    text = raw.strip()
    if not text:
        return None
    namespace = ""
    if category is None:
        category, text, namespace = _split(text, namespaced)
    if category == "rating":
        name = rating_name(text) or canonical_tag(text)
        return ParsedTag(name, "rating") if name else None
    name = canonical_tag(text)
    if not name:
        return None
    if category == "general" and is_meta(name):
        category = "meta"
    return ParsedTag(name, category, namespace)


def _split(text: str, namespaced: bool) -> tuple[str, str, str]:
    prefix, sep, rest = text.partition(":")
    if not sep or not rest.strip():
        return "general", text, ""
    key = prefix.strip().lower()
    known = NAMESPACES.get(key.replace("_", " "))
    if known is not None:
        return known, rest, ""
    if namespaced and _NAMESPACE_LIKE.fullmatch(key) and not rest.startswith(" "):
        return "other", rest, key
    return "general", text, ""


def split_namespace(tag: str) -> tuple[str, str]:
    """(`character`, `hatsune miku`) for `character:hatsune_miku`; (`general`, tag) otherwise.

    Only known namespaces split, so `re:zero` or the emoticon `:d` stay whole tags.
    """
    parsed = parse_tag(tag)
    return (parsed.category, parsed.name) if parsed else ("general", normalize_tag(tag))


def has_namespace(tag: str) -> bool:
    """True when `tag` starts with a namespace we know (`character:...`)."""
    prefix, sep, rest = tag.partition(":")
    return bool(sep and rest.strip()) and prefix.strip().lower().replace("_", " ") in NAMESPACES


def split_tag_line(line: str) -> list[str] | None:
    """The tags of one caption line, or None when the line is a sentence.

    `1girl, long hair, smile` -> three tags; imgbrd-grabber's `%all%` (one line of booru tags
    separated by spaces, their own spaces written as underscores: `1girl long_hair smile`) ->
    split at spaces; `a photo of a cat, on a sofa` -> None (prose is never split at commas).
    """
    line = " ".join(line.split())
    if not line:
        return []
    if "," in line:
        items = [item.strip() for item in line.split(",") if item.strip()]
        return None if _prose(line, items) else items
    words = line.split(" ")
    if len(words) > 1 and any(_BOORU_WORD.search(w) for w in words) and not line.endswith("."):
        return words
    return [line] if len(words) <= 3 else None


_ARTICLES = ("a ", "an ", "the ")


def _prose(line: str, items: list[str]) -> bool:
    """A comma list reads as prose when a part is long, the line ends a sentence, or it opens
    with an article followed by a long clause (BLIP, img2dataset alt text)."""
    counts = [len(item.split()) for item in items]
    if max(counts) > 6 or (line.endswith((".", "!", "?")) and sum(counts) > 4):
        return True
    return items[0].lower().startswith(_ARTICLES) and counts[0] >= 4
