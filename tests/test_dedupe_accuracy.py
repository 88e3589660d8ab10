"""Dedupe accuracy on real photos (fixtures/dupes.py), and the verify step's contract.

The default pipeline is the one docs/benchmarks.md (Dedupe accuracy) chose with bench/dedupe_accuracy.py:
phash (hash_size 8, draft decoding); pairs within THRESHOLD are duplicates as they are, pairs
within `candidate_threshold` only when `confirm_pairs` agrees.
"""

from __future__ import annotations

import hashlib
import shutil
import sqlite3
from pathlib import Path

import pytest
from PIL import Image

from curate.stages.dedupe import group as group_module
from curate.stages.dedupe import search as search_module
from curate.stages.dedupe import verify as verify_module
from curate.stages.dedupe.clusters import clusters_from_pairs
from curate.stages.dedupe.config import DedupeConfig
from curate.stages.dedupe.hashing import hash_files
from curate.stages.dedupe.run import dedupe
from curate.stages.dedupe.search import pack_hashes, pairs_within
from curate.stages.dedupe.verify import VerifyConfig, candidate_threshold, confirm_pairs
from curate.stages.ingest import ImportConfig, import_sources
from fixtures.dupes import build_dupe_set, load_truth

# The default direct threshold (of 64 bits) chosen in docs/benchmarks.md (Dedupe accuracy): the stereo
# pair is 4 bits apart, so anything from 4 up needs the second look.
THRESHOLD = DedupeConfig().effective_threshold()


@pytest.fixture(scope="session")
def dupes(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_dupe_set(tmp_path_factory.mktemp("dupes"))


@pytest.fixture(scope="session")
def predicted(dupes: Path) -> tuple[list[str], set[tuple[int, int]]]:
    """File names and the pairs the default pipeline links."""
    names = sorted(load_truth(dupes))
    paths = [str(dupes / n) for n in names]
    hashes = [h.value for h in hash_files(paths, "phash", 8)]
    assert None not in hashes
    words = pack_hashes(hashes)
    strict = pairs_within(words, THRESHOLD)
    linked = set(zip(strict.i.tolist(), strict.j.tolist(), strict=True))
    loose = pairs_within(words, candidate_threshold("phash", 8))
    todo = [p for p in zip(loose.i.tolist(), loose.j.tolist(), strict=True) if p not in linked]
    linked |= {(i, j) for i, j, _score in confirm_pairs(paths, todo)}
    return names, linked


def truth_pairs(names: list[str], truth: dict[str, str]) -> set[tuple[int, int]]:
    return {(i, j) for i in range(len(names)) for j in range(i + 1, len(names))
            if truth[names[i]] == truth[names[j]]}


def test_fixture_is_deterministic(dupes: Path, tmp_path: Path) -> None:
    again = build_dupe_set(tmp_path)

    def digests(root: Path) -> dict[str, str]:
        return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(root.iterdir())}
    assert digests(again) == digests(dupes)
    truth = load_truth(dupes)
    assert set(truth) == {p.name for p in dupes.iterdir()} - {"truth.json"}
    assert 150 <= len(truth) <= 200 and len(set(truth.values())) == 23


def test_default_meets_the_target_on_pairs(
    dupes: Path, predicted: tuple[list[str], set[tuple[int, int]]]
) -> None:
    names, linked = predicted
    truth = truth_pairs(names, load_truth(dupes))
    hits = len(linked & truth)
    precision, recall = hits / len(linked), hits / len(truth)
    assert len(truth) == 966  # 9 clusters of 13 files and 4 (grey originals) of 12
    assert precision >= 0.99, sorted((names[i], names[j]) for i, j in linked - truth)
    assert recall >= 0.95, sorted((names[i], names[j]) for i, j in truth - linked)


def test_default_finds_exactly_the_truth_clusters(
    dupes: Path, predicted: tuple[list[str], set[tuple[int, int]]]
) -> None:
    names, linked = predicted
    truth = load_truth(dupes)
    groups = clusters_from_pairs(len(names), sorted(linked), min_size=1)
    found = sorted(sorted(names[k] for k in g) for g in groups)
    expected: dict[str, list[str]] = {}
    for name in names:
        expected.setdefault(truth[name], []).append(name)
    assert found == sorted(expected.values())


def pair_scores(
    paths: list[Path], pairs: list[tuple[int, int]], **config: object
) -> dict[tuple[int, int], float]:
    found = confirm_pairs(paths, pairs, VerifyConfig(**config), workers=1)  # type: ignore[arg-type]
    return {(i, j): s for i, j, s in found}


def test_identical_images_score_one(dupes: Path, tmp_path: Path) -> None:
    copy = tmp_path / "copy.jpg"
    shutil.copyfile(dupes / "astronaut.jpg", copy)
    scores = pair_scores([dupes / "astronaut.jpg", copy, dupes / "logo.png"], [(0, 1), (2, 2)])
    assert scores.keys() == {(0, 1)}
    assert scores[(0, 1)] >= 0.99


@pytest.mark.parametrize(("a", "b"), [
    ("motorcycle_left.jpg", "motorcycle_right.jpg"),  # stereo pair: phash 4 bits apart
    ("hubble_a.jpg", "hubble_b.jpg"),  # crops of one photo overlapping by 16%
    ("coffee_left.jpg", "coffee_right.jpg"),  # ... by 28%
    ("coffee.jpg", "coffee_left.jpg"),  # a 60% crop is another picture, not a copy
    ("astronaut__watermark.jpg", "retina__watermark.jpg"),  # different photos, same watermark
    ("page.jpg", "text.jpg"),
])
def test_hard_negatives_are_rejected(dupes: Path, a: str, b: str) -> None:
    assert pair_scores([dupes / a, dupes / b], [(0, 1)], min_score=0.0).get((0, 1), 0.0) < 0.7


@pytest.mark.parametrize("copy", ["resize25", "crop8around", "watermark", "alpha", "grey"])
def test_edited_copies_are_confirmed(dupes: Path, copy: str) -> None:
    [path] = [p for p in dupes.iterdir() if p.name.startswith(f"retina__{copy}")]
    assert pair_scores([dupes / "retina.jpg", path], [(0, 1)]).get((0, 1), 0.0) >= 0.8


def test_bad_files_drop_their_pairs_and_never_raise(dupes: Path, tmp_path: Path) -> None:
    truncated = tmp_path / "truncated.jpg"
    truncated.write_bytes((dupes / "chelsea.jpg").read_bytes()[:2000])
    garbage = tmp_path / "garbage.png"
    garbage.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4)
    paths = [dupes / "chelsea.jpg", truncated, garbage, tmp_path / "missing.jpg", dupes / "chelsea__q95.jpg"]
    scores = pair_scores(paths, [(0, 1), (0, 2), (3, 0), (2, 3), (0, 4)])
    assert list(scores) == [(0, 4)]


def test_mirrored_copies_only_when_asked(dupes: Path, tmp_path: Path) -> None:
    flipped = tmp_path / "flipped.jpg"
    with Image.open(dupes / "chelsea.jpg") as image:
        image.transpose(Image.Transpose.FLIP_LEFT_RIGHT).save(flipped, quality=90)
    paths = [dupes / "chelsea.jpg", flipped]
    assert pair_scores(paths, [(0, 1)]) == {}
    assert pair_scores(paths, [(0, 1)], mirrored=True)[(0, 1)] >= 0.9


def test_results_keep_the_order_given(dupes: Path) -> None:
    paths = [dupes / "moon.jpg", dupes / "gravel.jpg", dupes / "moon__webp.webp", dupes / "gravel__q95.jpg"]
    found = confirm_pairs(paths, iter([(3, 1), (0, 1), (2, 0)]), workers=2)
    assert [(i, j) for i, j, _ in found] == [(3, 1), (2, 0)]
    assert all(0.0 <= s <= 1.0 for _, _, s in found)


def test_candidate_threshold_scales_with_the_hash_length() -> None:
    assert candidate_threshold("phash", 8) == 18
    assert candidate_threshold("phash", 16) == 72
    assert candidate_threshold("phash", 8) > THRESHOLD
    with pytest.raises(ValueError, match="unknown hash method"):
        candidate_threshold("md5", 8)


def test_the_dedupe_stage_at_its_defaults_finds_exactly_the_truth(
    dupes: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`curate dedupe FOLDER` with no options: the groups are the truth clusters, no more."""
    monkeypatch.setenv("CURATE_CACHE_DIR", str(tmp_path / "cache"))
    truth = load_truth(dupes)
    result = dedupe(dupes, DedupeConfig(workers=2))
    got = sorted(sorted(result.items[i].shown for i in g.members) for g in result.groups)
    clusters: dict[object, list[str]] = {}
    for name, cluster in truth.items():
        clusters.setdefault(cluster, []).append(name)
    want = sorted(sorted(c) for c in clusters.values() if len(c) > 1)
    assert got == want


def test_verification_cap_is_reported(dupes: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CURATE_CACHE_DIR", str(tmp_path / "cache"))
    full = dedupe(dupes, DedupeConfig(workers=2))
    capped = dedupe(dupes, DedupeConfig(workers=2, verify_max_pairs=5))
    assert not full.warnings
    assert any("verified the 5 closest candidate pairs" in reason for _f, reason in capped.warnings)
    assert capped.duplicates < full.duplicates


def test_the_capped_candidate_search_stops_at_the_band_it_needs(
    dupes: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With a budget of 5 the closest candidates lie in the first band above the threshold, so
    the search never goes to the candidate threshold (18 of 64 bits)."""
    monkeypatch.setenv("CURATE_CACHE_DIR", str(tmp_path / "cache"))
    searched: list[int] = []
    real = search_module.search_unique

    def spy(unique, t, *args, **kwargs):  # type: ignore[no-untyped-def]
        searched.append(t)
        return real(unique, t, *args, **kwargs)

    monkeypatch.setattr(group_module, "search_unique", spy)
    capped = dedupe(dupes, DedupeConfig(workers=2, verify_max_pairs=5))
    loose = candidate_threshold("phash", 8)
    assert searched[0] == THRESHOLD and max(searched) < loose
    (reason,) = [r for _f, r in capped.warnings if "closest candidate pairs" in r]
    assert f"(hash distance <= {max(searched)})" in reason


def test_a_workspace_rerun_verifies_only_pairs_it_has_not_scored(
    dupes: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Scores live in the manifest by the images' content and the settings: a re-run scores
    nothing and groups the same; new images bring only their own pairs; other settings rescore."""
    scored: list[int] = []
    real = verify_module.score_pairs

    def spy(paths, pairs, *args, **kwargs):  # type: ignore[no-untyped-def]
        scored.append(len(pairs))
        return real(paths, pairs, *args, **kwargs)

    monkeypatch.setattr(verify_module, "score_pairs", spy)
    names = sorted(load_truth(dupes))
    first_half = tmp_path / "a"
    first_half.mkdir()
    for name in names[: len(names) // 2]:
        (first_half / name).write_bytes((dupes / name).read_bytes())
    ws = tmp_path / "ws"
    import_sources(ws, [first_half], ImportConfig(workers=1))
    first = dedupe(ws, DedupeConfig(workers=2))
    assert sum(scored) > 0
    scored.clear()
    again = dedupe(ws, DedupeConfig(workers=2))
    assert sum(scored) == 0 and groups_of(again) == groups_of(first)
    import_sources(ws, [dupes], ImportConfig(workers=1))  # the other half comes in
    grown = dedupe(ws, DedupeConfig(workers=2))
    fresh_pairs = sum(scored)
    scored.clear()
    (ws / ".curate" / "dedupe-index.npz").unlink()
    with sqlite3.connect(ws / ".curate" / "manifest.sqlite") as db:
        db.execute("DELETE FROM pair_scores")
    reference = dedupe(ws, DedupeConfig(workers=2))
    assert groups_of(grown) == groups_of(reference)
    assert 0 < fresh_pairs < sum(scored)  # the grown run scored only pairs with a new image
    scored.clear()
    dedupe(ws, DedupeConfig(workers=2, flip_invariant=True))  # other settings: scored again
    assert sum(scored) > 0


def groups_of(result) -> set[frozenset[str]]:  # type: ignore[no-untyped-def]
    return {frozenset(result.items[i].sha256 for i in g.members) for g in result.groups}
