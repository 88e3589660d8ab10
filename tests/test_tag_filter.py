"""Tag rules (`curate.tagging.rules`) and the filter (`curate.tagging.filter`): each rule on hand-made cases
with exact results, then all of them on the planted-mistake fixture."""

from __future__ import annotations

from pathlib import Path

import pytest

from curate.errors import CurateError
from curate.tagging.filter import FilterConfig, Removal, filter_tags
from curate.tagging.rules import Merge, Rules, load_rules
from curate.tagging.tags import ScoredTag, names, tag_key
from fixtures.tag_dataset import MIN_CONFIDENCE, build_tag_dataset

T = ScoredTag


@pytest.fixture(scope="module")
def rules() -> Rules:
    return load_rules()


def hair_dataset(blonde: int, brown: int, both: int = 0) -> dict[str, list[ScoredTag]]:
    """`blonde` images with only blonde hair, `brown` with only brown hair, `both` with both."""
    data = {f"b{i:02}": [T("1girl"), T("blonde hair"), T("smile")] for i in range(blonde)}
    data |= {f"r{i:02}": [T("1girl"), T("brown hair")] for i in range(brown)}
    data |= {f"x{i:02}": [T("1girl"), T("blonde hair"), T("brown hair")] for i in range(both)}
    return data


def run(data: dict[str, list[ScoredTag]], rules: Rules, **config: object) -> dict[str, list[str]]:
    result = filter_tags(data, rules, FilterConfig(**config))  # type: ignore[arg-type]
    return {image: names(tags) for image, tags in result.dataset.items()}


# --- the built-in rules ---------------------------------------------------------------------

def test_default_rules(rules: Rules) -> None:
    assert set(rules.exclusive) == {"hair_colour", "eye_colour", "hair_length", "skin_colour", "breast_size"}
    assert rules.exclusive["hair_length"] == (
        "very short hair", "short hair", "medium hair", "long hair", "very long hair", "absurdly long hair")
    assert rules.implies["white shirt"] == {"shirt"}
    assert rules.implies["fingerless gloves"] == {"gloves"}
    assert rules.implies["red boots"] == {"boots", "red footwear"}
    assert rules.implies["sleeves past fingers"] == {"sleeves past wrists", "long sleeves"}
    assert rules.implies["sleeveless dress"] == {"dress", "sleeveless"}
    assert Merge(("boots", "red footwear"), "red boots") in rules.merges
    assert not any(merge.into == "aqua boots" for merge in rules.merges)
    assert rules.blacklist == frozenset()
    assert {"blonde hair", "blue eyes", "long hair", "ahoge", "cat ears"} <= rules.intrinsic
    assert "ponytail" not in rules.intrinsic and "smile" not in rules.intrinsic
    assert {"2girls", "multiple girls"} <= rules.multi_person
    assert rules.person_counts == {"1girl", "1boy", "1other"}


# --- exclusive groups -----------------------------------------------------------------------

def test_exclusive_removes_rare_value_everywhere(rules: Rules) -> None:
    result = filter_tags(hair_dataset(blonde=19, brown=1, both=1), rules, FilterConfig())
    assert names(result.dataset["r00"]) == ["1girl"]  # nothing is added in its place
    assert names(result.dataset["x00"]) == ["1girl", "blonde hair"]
    assert result.removals == [
        Removal("r00", "brown hair", "exclusive:hair_colour",
                "'blonde hair' in 20 of 21 images, 'brown hair' in 2 (< 15% of 20)"),
        Removal("x00", "brown hair", "exclusive:hair_colour",
                "'blonde hair' in 20 of 21 images, 'brown hair' in 2 (< 15% of 20)"),
    ]
    assert result.diff() == [
        "r00: - brown hair  (exclusive:hair_colour: 'blonde hair' in 20 of 21 images, 'brown hair' in 2 "
        "(< 15% of 20))",
        "x00: - brown hair  (exclusive:hair_colour: 'blonde hair' in 20 of 21 images, 'brown hair' in 2 "
        "(< 15% of 20))",
    ]
    assert result.counts() == {"exclusive": 2}


@pytest.mark.parametrize(("brown", "min_share", "removed"), [
    (3, 0.15, False),  # 3 / 20 = 0.15 exactly: not fewer than min_share, kept
    (2, 0.15, True),   # 2 / 20 = 0.10
    (2, 0.10, False),
    (4, 0.25, True),   # 4 / 20 = 0.20
    (5, 0.25, False),
])
def test_min_share_boundary(rules: Rules, brown: int, min_share: float, removed: bool) -> None:
    out = run(hair_dataset(blonde=20, brown=brown), rules, min_share=min_share)
    assert out["r00"] == (["1girl"] if removed else ["1girl", "brown hair"])
    assert out["b00"] == ["1girl", "blonde hair", "smile"]


@pytest.mark.parametrize(("blonde", "removed"), [(4, False), (5, True)])
def test_too_small_to_tell(rules: Rules, blonde: int, removed: bool) -> None:
    # 1 / 4 and 1 / 5 are both under min_share 0.5; only a majority in 5+ images is trusted.
    out = run(hair_dataset(blonde=blonde, brown=1), rules, min_share=0.5)
    assert out["r00"] == (["1girl"] if removed else ["1girl", "brown hair"])


def test_second_look_above_min_share_is_kept(rules: Rules) -> None:
    data = hair_dataset(blonde=20, brown=4)  # 4 / 20 = 20%: a costume, not a mistake
    assert run(data, rules) == {image: names(tags) for image, tags in data.items()}


def test_two_tone_hair_keeps_both_majority_colours(rules: Rules) -> None:
    data = {f"i{i:02}": [T("black hair"), T("red hair"), T("two-tone hair")] for i in range(10)}
    data["odd"] = [T("black hair"), T("red hair"), T("brown hair")]
    result = filter_tags(data, rules, FilterConfig())
    assert names(result.dataset["odd"]) == ["black hair", "red hair"]
    assert result.removals[0].detail == "'black hair' in 11 of 11 images, 'brown hair' in 1 (< 15% of 11)"


def test_multi_character_dataset_skips_exclusive(rules: Rules) -> None:
    data = hair_dataset(blonde=19, brown=1, both=1)
    assert run(data, rules, single_character=False) == {image: names(tags) for image, tags in data.items()}
    assert run(data, rules, exclusive=False) == {image: names(tags) for image, tags in data.items()}


@pytest.mark.parametrize("people", [["2girls"], ["multiple girls"], ["1girl", "1boy"]])
def test_images_with_two_people_are_left_alone(rules: Rules, people: list[str]) -> None:
    data = hair_dataset(blonde=20, brown=1)
    data["pair"] = [*(T(p) for p in people), T("blonde hair"), T("brown hair")]
    out = run(data, rules)
    assert out["pair"] == [*people, "blonde hair", "brown hair"]
    assert out["r00"] == ["1girl"]


def test_exclusive_matches_names_loosely(rules: Rules) -> None:
    data = {f"i{i}": [T("Blonde Hair")] for i in range(10)} | {"odd": [T("brown_hair")]}
    assert run(data, rules)["odd"] == []


# --- merges and implications ----------------------------------------------------------------

def test_implied_general_tags_are_dropped(rules: Rules) -> None:
    data = {"a": [T("shirt"), T("white shirt"), T("sleeves past fingers"), T("long sleeves"), T("smile")]}
    result = filter_tags(data, rules, FilterConfig())
    assert names(result.dataset["a"]) == ["white shirt", "sleeves past fingers", "smile"]
    assert [(r.rule, r.detail) for r in result.removals] == [
        ("implies:white shirt>shirt", "redundant beside 'white shirt'"),
        ("implies:sleeves past fingers>long sleeves", "redundant beside 'sleeves past fingers'"),
    ]
    assert run(data, rules, implications=False)["a"] == names(data["a"])


def test_merge_combines_parts(rules: Rules) -> None:
    data = {"a": [T("1girl"), T("boots", confidence=0.8), T("smile"), T("red footwear", confidence=0.6)]}
    result = filter_tags(data, rules, FilterConfig())
    assert result.dataset["a"] == [T("1girl"), T("red boots", confidence=0.6), T("smile")]
    assert result.diff() == [
        "a: - boots  (merge:boots+red footwear>red boots: combined into 'red boots')",
        "a: - red footwear  (merge:boots+red footwear>red boots: combined into 'red boots')",
        "a: + red boots  (merge:boots+red footwear>red boots: combined from 'boots', 'red footwear')",
    ]


def test_merge_left_alone_when_ambiguous_or_done(rules: Rules) -> None:
    two_colours = [T("boots"), T("red footwear"), T("white footwear")]
    done = [T("red boots"), T("boots"), T("red footwear")]
    out = run({"two": two_colours, "done": done}, rules)
    assert out == {"two": ["boots", "red footwear", "white footwear"], "done": ["red boots"]}


# --- blacklist, confidence, intrinsic, trigger ----------------------------------------------

def test_blacklist_and_min_confidence(rules: Rules) -> None:
    data = {"a": [T("Watermark"), T("smile", confidence=0.35), T("cat", confidence=0.2),
                  T("hatsune miku", "character", 0.5), T("general", "rating", 0.1)]}
    result = filter_tags(data, rules, FilterConfig(blacklist=("watermark",),
                                                   min_confidence=(("character", 0.85), ("*", 0.35))))
    assert names(result.dataset["a"]) == ["smile"]  # 0.35 is not below 0.35
    assert [(r.tag, r.rule, r.detail) for r in result.removals] == [
        ("cat", "min_confidence", "0.20 < 0.35 for general tags"),
        ("hatsune miku", "min_confidence", "0.50 < 0.85 for character tags"),
        ("general", "min_confidence", "0.10 < 0.35 for rating tags"),
        ("Watermark", "blacklist", "listed"),
    ]


def test_prune_intrinsic(rules: Rules) -> None:
    data = {"solo": [T("1girl"), T("blonde hair"), T("blue eyes"), T("ahoge"), T("ponytail"), T("smile")],
            "pair": [T("2girls"), T("blonde hair"), T("brown hair")]}
    assert run(data, rules)["solo"] == names(data["solo"])
    assert run(data, rules, prune_intrinsic=True) == {
        "solo": ["1girl", "ponytail", "smile"], "pair": ["2girls", "blonde hair", "brown hair"]}


def test_trigger_first_once_and_protected(rules: Rules) -> None:
    data = {"a": [T("1girl"), T("SKS"), T("smile"), T("sks")], "b": [T("sks"), T("solo")], "c": []}
    result = filter_tags(data, rules, FilterConfig(trigger="sks", blacklist=("sks",)))
    assert {image: names(tags) for image, tags in result.dataset.items()} == {
        "a": ["sks", "1girl", "smile"], "b": ["sks", "solo"], "c": ["sks"]}
    assert result.diff() == [
        "a: - SKS  (trigger: moved to the front)",
        "a: - sks  (trigger: moved to the front)",
        "a: + sks  (trigger: first tag of every caption)",
        "c: + sks  (trigger: first tag of every caption)",
    ]


def test_input_is_not_modified(rules: Rules) -> None:
    data = hair_dataset(blonde=10, brown=1)
    before = {image: list(tags) for image, tags in data.items()}
    filter_tags(data, rules, FilterConfig(trigger="sks", prune_intrinsic=True))
    assert data == before


@pytest.mark.parametrize(("config", "message"), [
    (FilterConfig(min_share=1.5), "min_share must be between 0 and 1"),
    (FilterConfig(min_confidence=(("generic", 0.3),)), "unknown category 'generic'"),
    (FilterConfig(trigger="a, b"), "must be one non-empty tag"),
])
def test_bad_config(rules: Rules, config: FilterConfig, message: str) -> None:
    with pytest.raises(CurateError, match=message):
        filter_tags({}, rules, config)


# --- user rules files -----------------------------------------------------------------------

def write(tmp_path: Path, text: str, name: str = "my.toml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def test_user_file_edits_defaults(tmp_path: Path) -> None:
    path = write(tmp_path, """
[blacklist]
add = ["Signature"]
[exclusive.hair_colour]
remove = ["brown hair"]
[exclusive.outfit]
tags = ["school uniform", "swimsuit"]
[exclusive.skin_colour]
tags = []
[[implies]]
tag = "white shirt"
drops = []
[[merge]]
tags = ["jacket", "hood"]
into = "hooded jacket"
[patterns]
boot_colours = ["brown"]
""")
    rules = load_rules([path])
    assert rules.sources == ("tagging/rules/default.toml", str(path))
    assert rules.blacklist == {"signature"}
    hair = rules.exclusive["hair_colour"]
    assert "brown hair" not in hair and "blonde hair" in hair
    assert rules.exclusive["outfit"] == ("school uniform", "swimsuit")
    assert "skin_colour" not in rules.exclusive
    assert "white shirt" not in rules.implies and rules.implies["black shirt"] == {"shirt"}
    assert rules.implies["hooded jacket"] == {"jacket", "hood"}
    assert {m.into for m in rules.merges if m.into.endswith("boots")} == {"brown boots"}
    shirt = {"s": [T("white shirt"), T("shirt"), T("jacket"), T("hood")]}
    out = run(hair_dataset(blonde=19, brown=1) | shirt, rules)
    assert out["r00"] == ["1girl", "brown hair"] and out["s"] == ["white shirt", "shirt", "hooded jacket"]


def test_later_files_win(tmp_path: Path) -> None:
    first = write(tmp_path, '[blacklist]\ntags = ["a", "b"]\n', "1.toml")
    second = write(tmp_path, '[blacklist]\nremove = ["a"]\n[people]\nsingle = ["1girl"]\n', "2.toml")
    rules = load_rules([first, second])
    assert rules.blacklist == {"b"} and rules.person_counts == {"1girl"}


@pytest.mark.parametrize(("text", "message"), [
    ('[blacklist]\ntags = ["a",\n  oops]\n', r"my\.toml, line 3 column 3: not valid TOML: "),
    ('# rules\n\n[blacklst]\ntags = []\n', r"my\.toml, line 3: unknown section \[blacklst\]"),
    ('[blacklist]\n# what to drop\ntags = "watermark"\n',
     r"my\.toml, line 3: tags must be a list of strings"),
    ('[exclusive.eyes]\ntags = ["a"]\ncolour = 1\n', r"my\.toml, line 3: unknown key 'colour'"),
    ('[[implies]]\ntag = "a"\ndrops = ["b"]\n\n[[implies]]\ntag = "c"\ndrops = [1]\n',
     r"my\.toml, line 7: drops must be a list of strings"),
    ('[[implies]]\ntag = "a"\n', r"my\.toml, line 1: an \[\[implies\]\] entry needs"),
    ('[[merge]]\ntags = ["a, b"]\ninto = "c"\n', r"my\.toml, line 2: 'a, b' is not a tag name"),
    ('[[pattern]]\nwords = "colors"\nitems = ["hat"]\n', r"my\.toml, line 1: words = 'colors' names no"),
    ('[intrinsic]\ngroups = ["hair"]\n', r"my\.toml, line 2: 'hair' is not an exclusive group"),
    ('[[implies]]\ntag = "a"\ndrops = ["b"]\n[[implies]]\ntag = "b"\ndrops = ["a"]\n',
     r"rules: implications form a cycle: a > b > a"),
])
def test_malformed_user_file(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(CurateError, match=message):
        load_rules([write(tmp_path, text)])


def test_missing_user_file(tmp_path: Path) -> None:
    with pytest.raises(CurateError, match=r"nothing\.toml: cannot read rules file"):
        load_rules([tmp_path / "nothing.toml"])


# --- the planted-mistake fixture ------------------------------------------------------------

def test_fixture_is_deterministic() -> None:
    assert build_tag_dataset(3) == build_tag_dataset(3)
    assert build_tag_dataset(3).dataset != build_tag_dataset(4).dataset


@pytest.mark.parametrize("seed", [0, 1])
def test_fixture_truth_has_no_redundant_pair(rules: Rules, seed: int) -> None:
    fixture = build_tag_dataset(seed)
    for image, tags in fixture.dataset.items():
        true = {tag_key(t.name) for t in tags if (image, t.name) not in fixture.planted}
        assert not [(a, b) for a in true for b in true & rules.implies.get(a, frozenset())], image


def test_fixture_all_rules(rules: Rules) -> None:
    fixture = build_tag_dataset(0)
    result = filter_tags(fixture.dataset, rules, FilterConfig(min_confidence=MIN_CONFIDENCE))
    removed = {(r.image, r.tag): r for r in result.removals}
    assert set(fixture.planted) <= set(removed)
    wrongly = [removed[key] for key in set(removed) - set(fixture.planted)]
    assert {r.rule for r in wrongly} == {"min_confidence"} and len(wrongly) == 4
    assert all(float(r.detail.split(" < ")[0]) < 0.35 for r in wrongly)  # the weak true tags
    assert {(a.image, a.tag) for a in result.additions} == set(fixture.merged)
    assert set(result.counts()) == {"min_confidence", "exclusive", "merge", "implies"}
    kept = result.dataset
    dyed = [image for image, tags in fixture.dataset.items() if any(t.name == "black hair" for t in tags)]
    assert len(dyed) == 11 and all("black hair" in names(kept[image]) for image in dyed)
    pairs = [image for image, tags in fixture.dataset.items() if tags and "2girls" in names(tags)]
    assert len(pairs) == 3 and all("brown hair" in names(kept[image]) for image in pairs)
