"""Caption text (trigger, keep_tokens, separator, format/parse) and bulk tag edits."""

from __future__ import annotations

import pytest

from curate.errors import CurateError
from curate.tagging.captions import (
    Change,
    TagCount,
    add_tag,
    dedupe_tags,
    format_caption,
    insert_trigger,
    keep_tokens_for,
    parse_caption,
    regex_replace,
    remove_tags,
    rename,
    replace_tag,
    sort_tags,
    stats,
    with_separator,
)
from curate.tagging.tags import ScoredTag, from_captions, names, to_captions

T = ScoredTag


def sd_scripts_split(caption: str, sep: str = "|||") -> tuple[list[str], list[str]]:
    """(fixed, flex) tokens as sd-scripts' process_caption splits a caption with
    keep_tokens_separator set (library/train_util.py)."""
    fixed_part, flex_part = caption.split(sep, 1)
    return ([t.strip() for t in fixed_part.split(",") if t.strip()],
            [t.strip() for t in flex_part.split(",") if t.strip()])


# --- trigger, keep_tokens, separator --------------------------------------------------------

@pytest.mark.parametrize(("tags", "class_token", "expected"), [
    (["1girl", "SKS", "smile", "sks"], None, ["sks", "1girl", "smile"]),
    (["sks", "solo"], None, ["sks", "solo"]),
    ([], None, ["sks"]),
    (["smile", "Woman", "sks", "solo"], "woman", ["sks", "woman", "smile", "solo"]),
    (["smile"], "SKS", ["sks", "smile"]),  # class token equal to the trigger: once
    (["long_hair", "sks"], "long hair", ["sks", "long hair"]),
])
def test_insert_trigger(tags: list[str], class_token: str | None, expected: list[str]) -> None:
    assert insert_trigger(tags, "sks", class_token) == expected


@pytest.mark.parametrize("trigger", ["", "  ", "sks, woman"])
def test_insert_trigger_rejects_non_tags(trigger: str) -> None:
    with pytest.raises(CurateError, match="must be one non-empty tag without commas"):
        insert_trigger(["a"], trigger)


def test_keep_tokens_for() -> None:
    captions = [insert_trigger(["smile", "solo"], "sks", "woman"), insert_trigger([], "sks", "woman")]
    assert keep_tokens_for(captions, "sks", "woman") == 2
    assert keep_tokens_for(captions, "SKS") == 1
    assert keep_tokens_for(captions) == 0
    assert keep_tokens_for([["sks"]], "sks", "sks") == 1
    with pytest.raises(CurateError, match=r"caption 'woman, sks, \.\.\.' does not start with sks"):
        keep_tokens_for([["sks", "smile"], ["woman", "sks"]], "sks")


def test_with_separator() -> None:
    tags = ["sks", "woman", "smile", "solo"]
    caption = with_separator(tags, 2)
    assert caption == "sks, woman ||| smile, solo"
    assert sd_scripts_split(caption) == (["sks", "woman"], ["smile", "solo"])
    assert with_separator(tags, 4) == "sks, woman, smile, solo |||"
    assert with_separator(tags, 0) == "sks, woman, smile, solo"
    assert with_separator(["a", "b"], 1, sep="###") == "a ### b"
    assert parse_caption(caption) == tags
    with pytest.raises(CurateError, match="cannot keep 5 tags of a caption with 4"):
        with_separator(tags, 5)
    with pytest.raises(CurateError, match="a tag contains the separator"):
        with_separator(["a|||b", "c"], 1)


# --- caption text ---------------------------------------------------------------------------

def test_format_caption() -> None:
    messy = ["1girl", "long\nhair", "red, white", "  ", "smile\t "]
    assert format_caption(messy) == "1girl, long hair, red white, smile"
    assert format_caption(["star (symbol)", r"a \(b\)"]) == r"star (symbol), a \(b\)"
    assert format_caption(["star (symbol)", r"a \(b\)"], escape=True) == r"star \(symbol\), a \(b\)"
    assert format_caption([]) == ""


def test_parse_caption() -> None:
    text = "1girl,  long hair,,\n smile ||| solo\r\n"
    assert parse_caption(text) == ["1girl", "long hair", "smile", "solo"]
    assert parse_caption("a ||| b", sep=None) == ["a ||| b"]
    assert parse_caption("") == []
    tags = ["sks", "star (symbol)", ":d", "^_^"]
    assert parse_caption(format_caption(tags)) == tags


# --- bulk edits -----------------------------------------------------------------------------

def dataset() -> dict[str, list[ScoredTag]]:
    return {
        "a": [T("sks"), T("smile", confidence=0.5), T("blue eyes", confidence=0.9),
              T("solo", confidence=0.7)],
        "b": [T("sks"), T("Blue_Eyes", confidence=0.6), T("grin", confidence=0.8)],
        "c": [T("cat", confidence=0.4)],
    }


def test_add_tag() -> None:
    result = add_tag(dataset(), "looking_at_viewer", 1, only={"a", "c"})
    assert to_captions(result.dataset) == {
        "a": ["sks", "looking at viewer", "smile", "blue eyes", "solo"],
        "b": ["sks", "Blue_Eyes", "grin"],
        "c": ["cat", "looking at viewer"],
    }
    assert result.diff() == ["a: + looking at viewer", "c: + looking at viewer"]
    assert to_captions(add_tag(dataset(), "blue eyes", "start").dataset)["c"] == ["blue eyes", "cat"]
    assert add_tag(dataset(), "blue eyes", "start").changes == [Change("c", ("cat",), ("blue eyes", "cat"))]
    assert to_captions(add_tag(dataset(), "x", "end").dataset)["a"][-1] == "x"
    assert to_captions(add_tag(dataset(), "x", -1).dataset)["b"] == ["sks", "Blue_Eyes", "x", "grin"]
    with pytest.raises(CurateError, match="position must be 'start', 'end' or an index"):
        add_tag(dataset(), "x", "middle")


def test_remove_tags() -> None:
    result = remove_tags(dataset(), ["blue eyes", "CAT"])
    assert to_captions(result.dataset) == {"a": ["sks", "smile", "solo"], "b": ["sks", "grin"], "c": []}
    assert result.diff() == ["a: - blue eyes", "b: - Blue_Eyes", "c: - cat"]


def test_replace_tag_and_merge() -> None:
    data = dataset()
    data["a"].append(T("grin", confidence=0.95))
    result = replace_tag(data, "grin", "smile")
    assert to_captions(result.dataset) == {
        "a": ["sks", "smile", "blue eyes", "solo"],  # merged at the earlier place
        "b": ["sks", "Blue_Eyes", "smile"],
        "c": ["cat"],
    }
    assert result.dataset["a"][1] == T("smile", confidence=0.95)
    assert result.dataset["b"][2] == T("smile", confidence=0.8)
    assert result.diff() == ["a: - grin", "b: - grin", "b: + smile"]
    assert rename(data, "grin", "smile") == result
    assert to_captions(replace_tag(dataset(), "blue eyes", "Blue Eyes").dataset)["b"][1] == "Blue Eyes"


def test_regex_replace() -> None:
    result = regex_replace(dataset(), r"(?i)^(\w+?)[ _]eyes$", r"\1 eyes, eyes")
    assert to_captions(result.dataset)["a"] == ["sks", "smile", "blue eyes", "eyes", "solo"]
    assert result.diff() == ["a: + eyes", "b: - Blue_Eyes", "b: + Blue eyes", "b: + eyes"]
    emptied = regex_replace(dataset(), "^s.*", "")
    assert to_captions(emptied.dataset) == {"a": ["blue eyes"], "b": ["Blue_Eyes", "grin"], "c": ["cat"]}
    merged = regex_replace(dataset(), "^grin$", "sks")
    assert to_captions(merged.dataset)["b"] == ["sks", "Blue_Eyes"]


@pytest.mark.parametrize(("pattern", "repl", "message"), [
    ("(blue", "x", r"bad regular expression '\(blue': missing \), unterminated subpattern at position 0"),
    ("(blue)", r"\2", r"bad replacement '\\\\2' for '\(blue\)': invalid group reference 2"),
])
def test_regex_errors(pattern: str, repl: str, message: str) -> None:
    with pytest.raises(CurateError, match=message):
        regex_replace(dataset(), pattern, repl)


def test_sort_tags() -> None:
    data = dataset()
    assert to_captions(sort_tags(data, "confidence", keep_first=1).dataset)["a"] == [
        "sks", "blue eyes", "solo", "smile"]
    assert to_captions(sort_tags(data, "alpha").dataset)["a"] == ["blue eyes", "sks", "smile", "solo"]
    # sks and blue eyes in 2 images, the rest in 1: ties keep their order.
    assert to_captions(sort_tags(data, "frequency").dataset)["a"] == ["sks", "blue eyes", "smile", "solo"]
    assert sort_tags(data, "frequency").diff() == ["a: ~ sks, blue eyes, smile, solo"]
    message = "cannot sort by 'length'; use one of: confidence, alpha, frequency"
    with pytest.raises(CurateError, match=message):
        sort_tags(data, "length")


def test_dedupe_tags() -> None:
    data = {"a": [T("smile", confidence=0.5), T("Smile", confidence=0.9), T("solo"), T("smile")]}
    result = dedupe_tags(data)
    assert result.dataset == {"a": [T("smile", confidence=1.0), T("solo")]}
    assert result.diff() == ["a: - smile", "a: - Smile"]  # one of the two lowercase copies, and Smile


def test_edits_leave_input_alone() -> None:
    data = dataset()
    before = {image: list(tags) for image, tags in data.items()}
    add_tag(data, "x")
    remove_tags(data, ["sks"])
    sort_tags(data, "alpha")
    replace_tag(data, "sks", "x")
    regex_replace(data, "s", "z")
    dedupe_tags(data)
    assert data == before


# --- statistics -----------------------------------------------------------------------------

def test_stats() -> None:
    data = from_captions({
        "a": ["sks", "blonde hair", "smile", "smile"],
        "b": ["sks", "Blonde_Hair", "solo"],
        "c": ["sks", "smile", "solo"],
        "d": [],
    })
    result = stats(data)
    assert result.images == 4
    assert result.frequency == (
        TagCount("sks", 3, 0.75), TagCount("blonde hair", 2, 0.5), TagCount("smile", 2, 0.5),
        TagCount("solo", 2, 0.5),
    )
    assert dict(result.images_per_tag) == {
        "sks": ("a", "b", "c"), "blonde hair": ("a", "b"), "smile": ("a", "c"), "solo": ("b", "c")}
    assert dict(result.tags_per_image) == {"a": 4, "b": 3, "c": 3, "d": 0}
    assert result.count("BLONDE HAIR") == 2 and result.count("cat") == 0
    assert result.cooccurrence("smile") == [("sks", 2), ("blonde hair", 1), ("solo", 1)]
    assert result.cooccurrence("sks", limit=1) == [("blonde hair", 2)]
    assert result.cooccurrence("cat") == []
    assert names(data["a"]) == ["sks", "blonde hair", "smile", "smile"]
