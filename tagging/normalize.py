"""Tag text as it should appear in a training caption.

Booru tags use underscores (`long_hair`); captions use spaces (`long hair`), except in kaomoji
where the underscore is the face (`^_^`). Namespaced tags from Hydrus and imgbrd-grabber
(`character:hatsune miku`, `creator:...`, `series:...`) carry their category in the prefix.
"""

from __future__ import annotations

# As in SmilingWolf's tagger demo and sd-scripts: these keep their underscores.
KAOMOJI = frozenset(
    {
        "0_0", "(o)_(o)", "+_+", "+_-", "._.", "<o>_<o>", "<|>_<|>", "=_=", ">_<", "3_3",
        "6_9", ">_o", "@_@", "^_^", "o_o", "u_u", "x_x", "|_|", "||_||",
    }
)

# Namespace prefix -> category (Danbooru / WD14 names). Hydrus says creator/series,
# Danbooru says artist/copyright; both map to one category.
NAMESPACES = {
    "general": "general",
    "character": "character",
    "char": "character",
    "creator": "artist",
    "artist": "artist",
    "series": "copyright",
    "copyright": "copyright",
    "franchise": "copyright",
    "meta": "meta",
    "rating": "rating",
    "person": "other",
    "studio": "other",
    "title": "other",
    "medium": "meta",
    "species": "general",
}


def normalize_tag(tag: str) -> str:
    """`long_hair ` -> `long hair`; kaomoji keep their underscores; inner spaces collapsed."""
    tag = " ".join(tag.strip().split())
    if tag in KAOMOJI or tag.lower() in KAOMOJI:
        return tag
    return " ".join(tag.replace("_", " ").split())


def split_namespace(tag: str) -> tuple[str, str]:
    """(`character`, `hatsune miku`) for `character:hatsune_miku`; (`general`, tag) otherwise.

    Only known namespaces split, so `re:zero` or the emoticon `:d` stay whole tags.
    """
    prefix, sep, rest = tag.partition(":")
    category = NAMESPACES.get(prefix.strip().lower()) if sep else None
    if category is None or not rest.strip():
        return "general", normalize_tag(tag)
    return category, normalize_tag(rest)
