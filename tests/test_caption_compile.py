"""Captions compiled from annotations (curate.tagging.compile), issue 15.

Two halves: the rules of each format on real-looking tag sets (names from
tagging/rules/default.toml and the scrapers' sidecars), and sd-scripts' own `process_caption`
(cases in tests/data/sd_scripts_dataset.json, made by tests/data/extract_sd_scripts_dataset.py
from the captions this compiler writes) turning each format into what the user meant.
"""

from __future__ import annotations

import json
import random
import re
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from curate.config import build
from curate.errors import CurateError
from curate.record import ARTIST, CHARACTER, COPYRIGHT, GENERAL, META, RATING, Tag, Text
from curate.tagging.compile import CaptionFormat, Compiled, compile_caption, subset_captions

TABLE = json.loads((Path(__file__).parent / "data" / "sd_scripts_dataset.json").read_text(encoding="utf-8"))
COMPILED_CASES = [case for case in TABLE["process_caption"] if "compiled" in case]

TAGS = CaptionFormat()
NL = CaptionFormat(format="nl")
HYBRID = CaptionFormat(format="hybrid")
JSON = CaptionFormat(format="json")
SENTENCE = "A woman with long blonde hair, wearing a blue dress, stands in a garden."

# A gallery-dl sidecar (categories known) and a WD14 run (general, with confidences) on one image.
SCRAPED = [
    Tag("saber", CHARACTER, 1.0, "gallery-dl"), Tag("fate/stay night", COPYRIGHT, 1.0, "gallery-dl"),
    Tag("takeuchi takashi", ARTIST, 1.0, "gallery-dl"), Tag("highres", META, 1.0, "gallery-dl"),
    Tag("commentary request", META, 1.0, "gallery-dl"), Tag("general", RATING, 1.0, "gallery-dl"),
    Tag("1girl", GENERAL, 0.99, "wd14:vit-v3"), Tag("solo", GENERAL, 0.97, "wd14:vit-v3"),
    Tag("blonde hair", GENERAL, 0.9, "wd14:vit-v3"), Tag("ahoge", GENERAL, 0.9, "wd14:vit-v3"),
    Tag("green eyes", GENERAL, 0.85, "wd14:vit-v3"), Tag("armor", GENERAL, 0.7, "wd14:vit-v3"),
    Tag("blue dress", GENERAL, 0.65, "wd14:vit-v3"),
]


def items(text: str) -> list[str]:
    return [item.strip() for item in text.split(",") if item.strip()]


# --- tags ---------------------------------------------------------------------------------

def test_tags_order_trigger_class_character_copyright_then_general_by_confidence() -> None:
    out = compile_caption(SCRAPED, [], TAGS, trigger="sks", class_tokens="woman")
    # blonde hair and ahoge tie at 0.9: in the order the tagger listed them; meta, artist and
    # rating left out
    assert out.text == ("sks, woman, saber, fate/stay night, 1girl, solo, blonde hair, ahoge, green eyes, "
                        "armor, blue dress")
    assert (out.keep_tokens, out.keep_tokens_separator, out.shuffle_caption) == (2, "", True)
    assert "|||" not in out.text and out.fallback == "" and not out.user


def test_a_sources_own_order_is_kept_where_confidences_tie() -> None:
    """Imported tags all have confidence 1: a scraper's or a user's caption order is what decides
    (a Kohya dataset laid out again gives back its captions), and a rank beats it."""
    kohya = [Tag("sks cat", source="kohya"), Tag("cat", source="kohya"), Tag("orange fur", source="kohya"),
             Tag("indoors", source="kohya")]
    assert compile_caption(kohya, [], TAGS).text == "sks cat, cat, orange fur, indoors"
    shuffled = list(kohya)
    random.Random(4).shuffle(shuffled)
    assert compile_caption(shuffled, [], TAGS).text == ", ".join(t.name for t in shuffled)
    ranked = [replace(t, rank=len(kohya) - i) for i, t in enumerate(kohya)]  # `captions sort` placed them
    assert compile_caption(ranked, [], TAGS).text == "indoors, orange fur, cat, sks cat"


def test_each_categorys_place_is_configurable() -> None:
    fmt = CaptionFormat(order=("general", "artist", "character"), leave_out=("meta",))
    out = compile_caption(SCRAPED, [], fmt, trigger="sks")
    # copyright and rating are listed nowhere: after the listed ones, by category name
    assert items(out.text) == ["sks", "1girl", "solo", "blonde hair", "ahoge", "green eyes", "armor",
                               "blue dress", "takeuchi takashi", "saber", "fate/stay night", "general"]
    assert out.keep_tokens == 1


def test_spelling_defaults_to_spaces_and_no_escapes() -> None:
    tags = [Tag("long_hair", confidence=0.9), Tag("saber_\\(fate\\)", CHARACTER), Tag("^_^", confidence=0.8),
            Tag(">_<", confidence=0.7), Tag("0_0", confidence=0.6), Tag("o_o", confidence=0.5),
            Tag("=_=", confidence=0.4)]
    assert compile_caption(tags, [], TAGS).text == "saber (fate), long hair, ^_^, >_<, 0_0, o_o, =_="


def test_booru_spelling_underscores_and_escapes_but_kaomoji_keep_their_faces() -> None:
    tags = [Tag("long hair", confidence=0.9), Tag("saber (fate)", CHARACTER), Tag("^_^", confidence=0.8),
            Tag("o_o", confidence=0.5), Tag("hair between eyes", confidence=0.4)]
    fmt = CaptionFormat(underscores=True, escape_parentheses=True)
    out = compile_caption(tags, [], fmt, trigger="sks", class_tokens="blue archive (student)")
    assert out.text == ("sks, blue_archive_\\(student\\), saber_\\(fate\\), long_hair, ^_^, o_o, "
                        "hair_between_eyes")
    unescaped = compile_caption(tags, [], CaptionFormat(underscores=True)).text
    assert unescaped.startswith("saber_(fate), long_hair")


def test_one_tag_spelled_several_ways_is_written_once() -> None:
    """Issue case 3: `saber (fate)`, `saber \\(fate\\)`, `saber_\\(fate\\)`; `long hair` / `long_hair`."""
    tags = [Tag("saber (fate)", CHARACTER, 1.0, "hydrus"), Tag("saber \\(fate\\)", CHARACTER, 1.0, ".txt"),
            Tag("saber_\\(fate\\)", GENERAL, 0.9, "wd14"), Tag("long hair", GENERAL, 0.8, ".txt"),
            Tag("long_hair", GENERAL, 0.95, "wd14"), Tag("Long Hair", GENERAL, 1.0, "user")]
    out = compile_caption(tags, [], TAGS)
    # the general copy from the tagger does not pull the character down into general
    assert out.text == "saber (fate), Long Hair"


def test_removed_tags_are_left_out_unless_another_source_keeps_them() -> None:
    tags = [Tag("1girl"), Tag("simple background", confidence=0.8, source="wd14", removed="rule:blacklist"),
            Tag("blurry", confidence=0.3, source="wd14", removed="rule:threshold"),
            Tag("blurry", source="gallery-dl"),
            Tag("watermark", source="gallery-dl"),
            Tag("watermark", confidence=0.9, source="wd14", removed="user")]
    # a rule removing the tagger's copy leaves the human's; the user's removal wins over every copy
    assert compile_caption(tags, [], TAGS).text == "1girl, blurry"


def test_max_tags_keeps_head_characters_and_the_most_confident() -> None:
    out = compile_caption(SCRAPED, [], CaptionFormat(max_tags=3), trigger="sks", class_tokens="woman")
    assert out.text == "sks, woman, saber, fate/stay night, 1girl"


def test_commas_and_separator_inside_a_tag_do_not_make_two_items() -> None:
    tags = [Tag("yes, i'm sure", confidence=0.9), Tag("a ||| b", confidence=0.8),
            Tag("line\nbreak", confidence=0.7)]
    out = compile_caption(tags, [], TAGS, trigger="sks")
    assert items(out.text) == ["sks", "yes i'm sure", "a b", "line break"]


def test_semicolon_separator_splits_only_at_semicolons() -> None:
    fmt = CaptionFormat(format="hybrid", caption_separator=";")
    out = compile_caption([Tag("yes; no", confidence=0.9), Tag("1girl")], [Text(SENTENCE, ".caption")], fmt,
                          trigger="sks", class_tokens="woman, knight")
    # commas (in the class tokens, the template, the sentence) are text to a `;` separator
    assert out.text == f"sks woman, knight, {SENTENCE} ||| 1girl; yes no"
    assert (out.keep_tokens, out.caption_separator) == (1, ";")
    tags = compile_caption([Tag("smile")], [], CaptionFormat(caption_separator=";"), trigger="sks",
                           class_tokens="woman; knight")
    assert (tags.text, tags.keep_tokens) == ("sks; woman; knight; smile", 3)


# --- the trigger, exactly once -------------------------------------------------------------

@pytest.mark.parametrize("tags", [
    [Tag("sks woman", source=".txt")],  # issue case 8: an imported caption `sks woman`
    [Tag("sks", source=".txt"), Tag("woman", source=".txt")],
    [Tag("SKS"), Tag("Woman"), Tag("sks_woman")],
])
def test_trigger_once_whatever_the_sources_held(tags: list[Tag]) -> None:
    tags = [*tags, Tag("1girl", confidence=0.9), Tag("smile", confidence=0.8)]
    out = compile_caption(tags, [], TAGS, trigger="sks", class_tokens="woman")
    assert out.text == "sks, woman, 1girl, smile"
    assert out.keep_tokens == 2


def test_class_tokens_holding_the_trigger_are_not_written_twice() -> None:
    # a Kohya folder `10_sks woman` gives the class tokens "sks woman"
    out = compile_caption([Tag("smile")], [], TAGS, trigger="sks", class_tokens="sks woman")
    assert out.text == "sks, woman, smile"
    assert compile_caption([Tag("smile")], [], TAGS, trigger="sks", class_tokens="sks").text == "sks, smile"
    several = compile_caption([Tag("red dress")], [], TAGS, trigger="sks",
                              class_tokens=["woman", "red dress"])
    assert (several.text, several.keep_tokens) == ("sks, woman, red dress", 3)


def test_a_name_that_ends_with_the_trigger_is_another_tag() -> None:
    tags = [Tag("hatsune miku", CHARACTER), Tag("miku", CHARACTER, 0.5)]
    assert compile_caption(tags, [], TAGS, trigger="miku").text == "miku, hatsune miku"


def test_a_trigger_holding_the_separator_is_refused() -> None:
    with pytest.raises(CurateError, match="trigger 'sks, woman': must be one tag"):
        compile_caption([], [], TAGS, trigger="sks, woman")


def test_nothing_to_write_gives_an_empty_caption() -> None:
    out = compile_caption([Tag("highres", META)], [], TAGS)
    assert (out.text, out.keep_tokens) == ("", 0)


# --- nl ------------------------------------------------------------------------------------

def test_nl_works_the_trigger_into_the_sentence_and_never_shuffles() -> None:
    """Issue case 6: img2dataset prose is not split at commas nor shuffled."""
    out = compile_caption(SCRAPED, [Text(SENTENCE, "img2dataset")], CaptionFormat(format="nl", shuffle=True),
                          trigger="sks", class_tokens="woman")
    assert out.text == f"sks woman, {SENTENCE}"
    assert (out.keep_tokens, out.keep_tokens_separator, out.shuffle_caption) == (0, "", False)


def test_nl_picks_the_sentence_by_source_preference_user_first() -> None:
    texts = [Text("alt text from the web page", "img2dataset"), Text("a blip caption", ".caption"),
             Text("   ", "user"), Text("a vlm caption", "vlm:florence-2:<DETAILED_CAPTION>"),
             Text("my own words", "user")]
    assert compile_caption([], texts, NL).text == "my own words"
    assert compile_caption([], texts[:4], NL).text == "a vlm caption"
    assert compile_caption([], texts[:2], NL).text == "a blip caption"
    # unlisted sources come after the listed ones, in the order they were recorded
    fmt = CaptionFormat(format="nl", text_sources=("img2dataset",))
    assert compile_caption([], [Text("b", "x"), Text("a", "img2dataset")], fmt).text == "a"
    assert compile_caption([], [Text("b", "x"), Text("c", "y")], fmt).text == "b"


def test_nl_sentence_that_already_names_the_trigger_is_kept_as_written() -> None:
    out = compile_caption([], [Text("A photo of SKS in a\ngarden.", "user")], NL, trigger="sks",
                          class_tokens="woman")
    assert out.text == "A photo of SKS in a garden."
    assert compile_caption([], [Text("a sksx logo", "user")], NL, trigger="sks").text == "sks, a sksx logo"


@pytest.mark.parametrize(("template", "trigger", "klass", "expected"), [
    ("{trigger} {class}, {text}", None, None, SENTENCE),
    ("{trigger} {class}, {text}", "sks", None, f"sks, {SENTENCE}"),
    ("{trigger}, {text}", "sks", "woman", f"sks, {SENTENCE}"),
    ("photo of {trigger} {class}. {text}", "sks", "woman", f"photo of sks woman. {SENTENCE}"),
    ("{text} ({trigger})", "sks", None, f"{SENTENCE} (sks)"),
])
def test_nl_template(template: str, trigger: str | None, klass: str | None, expected: str) -> None:
    fmt = CaptionFormat(format="nl", nl_template=template)
    out = compile_caption([], [Text(SENTENCE, ".caption")], fmt, trigger=trigger, class_tokens=klass)
    assert out.text == expected


def test_nl_without_a_sentence_falls_back_to_tags_unshuffled() -> None:
    out = compile_caption(SCRAPED, [Text(" \n ", ".caption")], NL, trigger="sks", class_tokens="woman")
    assert out.fallback == "tags"
    assert out.text.startswith("sks, woman, saber, fate/stay night, 1girl")
    assert (out.shuffle_caption, out.keep_tokens_separator) == (False, "")


# --- hybrid --------------------------------------------------------------------------------

def test_hybrid_uses_the_txt_tags_and_the_caption_sentence_both() -> None:
    """Issue case 10: `a.txt` (WD14 tags) and `a.caption` (BLIP sentence) beside one image."""
    tags = [Tag("1girl", source=".txt"), Tag("solo", source=".txt"), Tag("blonde hair", source=".txt"),
            Tag("blue dress", source=".txt")]
    out = compile_caption(tags, [Text(SENTENCE, ".caption")], HYBRID, trigger="sks", class_tokens="woman")
    assert out.text == f"sks woman, {SENTENCE} ||| 1girl, solo, blonde hair, blue dress"
    assert (out.keep_tokens_separator, out.shuffle_caption) == ("|||", True)
    assert out.keep_tokens == len(items(f"sks woman, {SENTENCE}")) == 4


def test_hybrid_separator_in_the_sentence_cannot_move_the_head() -> None:
    out = compile_caption([Tag("smile")], [Text("a ||| b", "user")], HYBRID, trigger="sks")
    assert out.text == "sks, a b ||| smile"


def test_hybrid_without_a_sentence_falls_back_to_tags_with_its_head_kept() -> None:
    out = compile_caption(SCRAPED, [], HYBRID, trigger="sks", class_tokens="woman")
    assert out.fallback == "tags"
    assert out.text.startswith("sks, woman ||| saber, fate/stay night, 1girl")
    assert (out.keep_tokens, out.keep_tokens_separator, out.shuffle_caption) == (2, "|||", True)


def test_separator_is_never_written_when_shuffle_is_off() -> None:
    """Issue case 7: with shuffle_caption = false sd-scripts trains a `|||` as text."""
    texts = [Text(SENTENCE, ".caption")]
    for fmt in (CaptionFormat(format="hybrid", shuffle=False), CaptionFormat(shuffle=False), NL, JSON):
        for sentences in (texts, []):
            out = compile_caption(SCRAPED, sentences, fmt, trigger="sks", class_tokens="woman")
            assert "|||" not in out.text and out.keep_tokens_separator == "" and not out.shuffle_caption
    plain = compile_caption(SCRAPED, texts, CaptionFormat(format="hybrid", shuffle=False), trigger="sks")
    assert plain.text.startswith(f"sks, {SENTENCE} saber, fate/stay night")


# --- json ----------------------------------------------------------------------------------

def test_json_is_one_line_with_trigger_class_caption_and_tags_by_category() -> None:
    out = compile_caption(SCRAPED, [Text(SENTENCE + "\nsecond line", ".caption")], JSON, trigger="sks",
                          class_tokens="woman")
    assert "\n" not in out.text
    assert json.loads(out.text) == {
        "trigger": "sks", "class": "woman", "caption": SENTENCE + " second line",
        "tags": {"character": ["saber"], "copyright": ["fate/stay night"],
                 "general": ["1girl", "solo", "blonde hair", "ahoge", "green eyes", "armor", "blue dress"]}}
    assert (out.keep_tokens, out.shuffle_caption, out.fallback) == (0, False, "")
    bare = json.loads(compile_caption([Tag("1girl")], [], JSON).text)
    assert bare == {"trigger": None, "class": None, "caption": None, "tags": {"general": ["1girl"]}}


# --- the user's own caption ---------------------------------------------------------------

@pytest.mark.parametrize("fmt", [TAGS, NL, HYBRID, JSON], ids=lambda f: f.format)
def test_the_users_caption_wins_verbatim(fmt: CaptionFormat) -> None:
    out = compile_caption(SCRAPED, [Text(SENTENCE, ".caption")], fmt, trigger="sks", class_tokens="woman",
                          user_caption="  my girl,  Saber\r\nin armour ")
    # tags and hybrid keep the trigger rule even here: first and once (a trigger set after the
    # caption was edited must still reach it); sentences are the user's words alone
    head = "sks, " if fmt.format in ("tags", "hybrid") else ""  # the trigger only: the rest is theirs
    assert out.text == head + "my girl,  Saber in armour"
    assert out.user and out.keep_tokens == 0
    if head:
        for own, written in (("woman, x, sks", "sks, woman, x"), ("sks, woman, x", "sks, woman, x"),
                             ("x, y", "sks, x, y")):
            assert compile_caption([], [], fmt, trigger="sks", class_tokens="woman",
                                   user_caption=own).text == written
    blank = compile_caption(SCRAPED, [], fmt, trigger="sks", user_caption=" \n")
    assert not blank.user and blank.text.startswith(("sks", "{"))


# --- the format's options --------------------------------------------------------------------

def test_format_options_are_built_and_checked_like_curate_toml() -> None:
    fmt = build(CaptionFormat, "captions", {"format": "hybrid", "order": ["character", "general"],
                                            "leave_out": ["meta"], "max_tags": 20})
    assert fmt.order == ("character", "general") and fmt.max_tags == 20
    with pytest.raises(CurateError, match=r"captions.max_tags = -1 is out of range"):
        build(CaptionFormat, "captions", {"max_tags": -1})
    with pytest.raises(CurateError, match="expected one of"):
        build(CaptionFormat, "captions", {"format": "prose"})


@pytest.mark.parametrize(("values", "message"), [
    ({"order": ["general", "meta"]}, "both name meta"),
    ({"nl_template": "{text}"}, "must be one line holding"),
    ({"nl_template": "{trigger} {text} {text}"}, "must be one line holding"),
    ({"nl_template": "{trigger} {klass}, {text}"}, r"unknown: \{klass\}"),
    ({"keep_tokens_separator": " "}, "must be a mark without spaces"),
    ({"keep_tokens_separator": "|,|"}, "must be a mark without spaces"),
])
def test_bad_format_options_are_refused(values: dict[str, Any], message: str) -> None:
    with pytest.raises(CurateError, match=message):
        build(CaptionFormat, "captions", values)
    with pytest.raises(CurateError, match=message):  # a library caller's CaptionFormat too
        compile_caption([], [], CaptionFormat(**{k: tuple(v) if isinstance(v, list) else v
                                                 for k, v in values.items()}))


# --- one subset's dataset.toml keys ----------------------------------------------------------

def test_subset_keys_take_the_largest_head() -> None:
    hybrid = {f"{i}.png": compile_caption(SCRAPED, texts, HYBRID, trigger="sks", class_tokens="woman")
              for i, texts in enumerate([[Text(SENTENCE, ".caption")], [Text("a woman", ".caption")], []])}
    keys = subset_captions(hybrid)
    assert keys.toml_keys() == {"shuffle_caption": True, "keep_tokens": 4, "keep_tokens_separator": "|||",
                                "caption_separator": ","}
    assert keys.warnings == ()
    tags = subset_captions({"a.png": compile_caption(SCRAPED, [], TAGS, trigger="sks")})
    assert tags.toml_keys() == {"shuffle_caption": True, "keep_tokens": 1, "caption_separator": ","}


def test_subset_keys_refuse_two_formats_in_one_subset() -> None:
    mixed = {"a.png": compile_caption(SCRAPED, [], TAGS), "b.png": compile_caption(SCRAPED, [], NL)}
    with pytest.raises(CurateError, match="different caption formats"):
        subset_captions(mixed)


def test_subset_keys_warn_about_a_users_caption_sd_scripts_would_break() -> None:
    shuffled = subset_captions({
        "a.png": compile_caption([], [Text(SENTENCE, ".caption")], HYBRID, trigger="sks"),
        "b.png": compile_caption([], [], HYBRID, user_caption="sks, my own sentence, with commas"),
        "c.png": compile_caption([], [], HYBRID, user_caption="sks, my sentence ||| smile")})
    assert len(shuffled.warnings) == 1
    assert shuffled.warnings[0].startswith("b.png: your own caption is shuffled")
    literal = subset_captions({"d.png": compile_caption([], [], NL, user_caption="sks ||| smile")})
    assert len(literal.warnings) == 1 and "trains as text" in literal.warnings[0]


# --- sd-scripts' own process_caption on compiled captions ------------------------------------

def _compile(inputs: dict[str, Any]) -> Compiled:
    return compile_caption([Tag(*tag) for tag in inputs["tags"]], [Text(*text) for text in inputs["texts"]],
                           CaptionFormat(**inputs["format"]), trigger=inputs.get("trigger"),
                           class_tokens=inputs.get("class_tokens"), user_caption=inputs.get("user_caption"))


def test_every_format_has_a_pinned_case() -> None:
    kinds = {case["compiled"]["format"]["format"] for case in COMPILED_CASES}
    assert kinds == {"tags", "nl", "hybrid", "json"}


@pytest.mark.parametrize("case", COMPILED_CASES, ids=lambda c: c["name"])
def test_the_pinned_captions_are_what_the_compiler_writes(case: dict[str, Any]) -> None:
    """When this fails the compiler changed: run tests/data/extract_sd_scripts_dataset.py."""
    made = _compile(case["compiled"])
    fields = {"shuffle_caption": made.shuffle_caption, "keep_tokens": made.keep_tokens,
              "caption_separator": made.caption_separator}
    if made.keep_tokens_separator:
        fields["keep_tokens_separator"] = made.keep_tokens_separator
    assert (made.text, fields) == (case["caption"], case["subset"])


@pytest.mark.parametrize("case", COMPILED_CASES, ids=lambda c: c["name"])
def test_sd_scripts_trains_what_the_user_meant(case: dict[str, Any]) -> None:
    caption, subset, outcomes = case["caption"], case["subset"], case["outcomes"]
    sep = subset.get("keep_tokens_separator")
    for outcome in outcomes:
        assert "|||" not in outcome  # never trained as text
        assert len(re.findall(r"(?<!\w)sks(?!\w)", outcome)) == 1  # the trigger, once
    if not subset["shuffle_caption"]:
        assert outcomes == [caption]  # prose and JSON: exactly as written
        return
    if sep:
        head_text, _, tail_text = caption.partition(sep)
        head, tail = items(head_text), items(tail_text)
    else:
        head, tail = items(caption)[: subset["keep_tokens"]], items(caption)[subset["keep_tokens"]:]
    assert head and head[0].startswith("sks")  # the trigger first
    if case["compiled"]["texts"]:
        assert ", ".join(head).endswith(case["compiled"]["texts"][0][0])  # the sentence, whole, in the head
    for outcome in outcomes:
        got = items(outcome)
        assert got[: len(head)] == head  # the head in place and in order
        assert sorted(got[len(head):]) == sorted(tail)  # only the tags after it move
    assert (len(outcomes) > 1) == (len(tail) > 1)  # the tags really are shuffled
