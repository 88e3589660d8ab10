import pytest

from curate.tagging.normalize import normalize_tag, split_namespace


@pytest.mark.parametrize(("raw", "expected"), [
    ("long_hair", "long hair"), ("  blue_eyes ", "blue eyes"), ("^_^", "^_^"), (">_<", ">_<"),
    ("o_o", "o_o"), ("star_(symbol)", "star (symbol)"), ("a__b", "a b"),
])
def test_normalize(raw: str, expected: str) -> None:
    assert normalize_tag(raw) == expected


@pytest.mark.parametrize(("raw", "expected"), [
    ("character:hatsune_miku", ("character", "hatsune miku")),
    ("creator:someone", ("artist", "someone")),
    ("series:vocaloid", ("copyright", "vocaloid")),
    ("re:zero", ("general", "re:zero")),
    (":d", ("general", ":d")),
    ("character:", ("general", "character:")),
])
def test_namespaces(raw: str, expected: tuple[str, str]) -> None:
    assert split_namespace(raw) == expected
