"""The search built for 10M hashes (chunkjoin.py) and the incremental index (index.py): both must
return exactly what brute force returns, whatever the chunking, partitioning or history."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from curate.stages.dedupe import chunkjoin, search
from curate.stages.dedupe.config import DedupeConfig
from curate.stages.dedupe.index import INDEX_NAME, SearchIndex, indexed_search
from curate.stages.dedupe.run import dedupe
from curate.stages.dedupe.search import Chunk, Pairs, collapse, pairs_bruteforce, pairs_within, search_unique
from curate.stages.ingest import ImportConfig, import_sources
from fixtures.scrape import jpeg, photo, write
from tests.test_dedupe_search import assert_same, planted


def flipped(rng: np.random.Generator, base: np.ndarray, distance: int) -> np.ndarray:
    """Copies of one-word hashes with exactly `distance` random bits flipped."""
    out = base.copy()
    for row in range(len(out)):
        for bit in rng.choice(64, distance, replace=False):
            out[row] ^= np.uint64(1) << np.uint64(bit)
    return out


@pytest.mark.parametrize(("n", "words", "bits", "t"), [
    (3_000, 1, 64, 2), (20_000, 1, 64, 8), (8_000, 1, 64, 12), (6_000, 4, 256, 16), (4_000, 4, 256, 32),
])
def test_random_subsets_equal_bruteforce(n: int, words: int, bits: int, t: int) -> None:
    hashes = planted(seed=n + t, n=n, words=words, bits=bits)
    subset = hashes[np.random.default_rng(t).permutation(len(hashes))[: n // 2]]
    for part in (hashes, subset):
        assert_same(pairs_within(part, t), pairs_bruteforce(part, t))


PLANS = {  # (chunks, t): radius-2 chunks and narrow chunks, as the planner picks at other N
    "two radius-2 halves": ((Chunk(0, 32, 2), Chunk(32, 32, 2)), 9),
    "radius 2 and radius 1": ((Chunk(0, 30, 2), Chunk(30, 20, 1), Chunk(50, 14, 0)), 8),
    "keyed on part of the bits": ((Chunk(3, 18, 1), Chunk(25, 18, 1), Chunk(44, 18, 1)), 8),
}


@pytest.mark.parametrize("name", PLANS)
@pytest.mark.parametrize("partition", [1 << 20, 1 << 10])
def test_plans_and_partitions_are_exact(name: str, partition: int, monkeypatch: pytest.MonkeyPatch) -> None:
    plan, t = PLANS[name]
    monkeypatch.setattr(search, "_plan", lambda *args: plan)
    monkeypatch.setattr(chunkjoin, "PARTITION", partition)  # many partitions of the key space
    hashes = planted(seed=17, n=4_000)
    assert_same(pairs_within(hashes, t), pairs_bruteforce(hashes, t))


def test_planted_pairs_at_every_distance_are_found() -> None:
    rng = np.random.default_rng(5)
    base = rng.integers(0, 2**64, 40_000, dtype=np.uint64)
    pairs = []
    for d in range(11):
        rows = rng.choice(len(base), 50, replace=False)
        copies = flipped(rng, base[rows], d)
        pairs += [(int(r), len(base) + k, d) for k, r in enumerate(rows)]
        base = np.concatenate([base, copies])
    found = pairs_within(base, 8)
    got = set(zip(found.i.tolist(), found.j.tolist(), found.distance.tolist(), strict=True))
    for a, b, d in pairs:
        assert ((a, b, d) in got) == (d <= 8)
    assert_same(found, pairs_bruteforce(base, 8))


def test_hashes_that_share_their_other_bits() -> None:
    """One-word entries carry the bits outside the chunk: hashes equal there but a bit or two
    apart inside the chunk give identical entries, which must still resolve to every row."""
    rng = np.random.default_rng(9)
    base = rng.integers(0, 2**64, 300, dtype=np.uint64)
    near = [base ^ np.uint64(1 << b) for b in (0, 1, 5, 20, 21, 40, 63)]
    hashes = np.unique(np.concatenate([base, *near, base ^ np.uint64(0b11), base ^ np.uint64(3 << 20)]))
    plan = (Chunk(0, 22, 1), Chunk(22, 21, 1), Chunk(43, 21, 1))
    for t in (1, 2, 4):
        assert_same(_with_plan(plan, hashes, t), pairs_bruteforce(hashes, t))


def _with_plan(plan: tuple[Chunk, ...], hashes: np.ndarray, t: int) -> Pairs:
    chosen = search._plan
    search._plan = lambda *args: plan
    try:
        return pairs_within(hashes, t)
    finally:
        search._plan = chosen


@pytest.mark.parametrize(("words", "bits", "t"), [(1, 64, 8), (1, 64, 3), (4, 256, 30)])
def test_incremental_equals_full(tmp_path: Path, words: int, bits: int, t: int) -> None:
    unique, _ = collapse(planted(seed=21, n=12_000, words=words, bits=bits))
    order = np.random.default_rng(1).permutation(len(unique))
    path = tmp_path / INDEX_NAME
    runs = [order[:8_000], order[:8_100], order[300:9_000], order[300:9_000], order[:4_000]]
    for n, run in enumerate(runs):  # a first run, 1% more, some removed and more added, none new, fewer
        rows = np.sort(run)
        assert_same(indexed_search(path, "phash", unique[rows], t, bits, 2),
                    search_unique(unique[rows], t, bits, 2))
        assert_same(indexed_search(path, "phash", unique[rows], t - 1, bits, 2),
                    search_unique(unique[rows], t - 1, bits, 2))
        if n == 1:  # the 1% were appended to the index, not searched with the rest again
            index = SearchIndex.load(path, "phash", t)
            assert index is not None
            np.testing.assert_array_equal(index.words[:8_000], unique[np.sort(order[:8_000])])
    if words == 1:  # 64-bit probes are cheap: the index only ever grew
        index = SearchIndex.load(path, "phash", t)
        assert index is not None and len(index.words) == 9_000


def test_index_is_rebuilt_when_settings_change_or_it_is_damaged(tmp_path: Path) -> None:
    unique, _ = collapse(planted(seed=4, n=5_000))
    path = tmp_path / INDEX_NAME
    indexed_search(path, "phash-8", unique[:3_000], 4, 64, 1)
    assert SearchIndex.load(path, "phash-8", 4) is not None
    assert SearchIndex.load(path, "dhash-8", 4) is None  # other hash settings
    assert SearchIndex.load(path, "phash-8", 6) is None  # a higher threshold than it holds
    assert_same(indexed_search(path, "phash-8", unique, 6, 64, 1), search_unique(unique, 6, 64, 1))
    assert SearchIndex.load(path, "phash-8", 6) is not None  # rebuilt for 6
    path.write_bytes(path.read_bytes()[:1000])  # a torn file (a write is atomic; a disk is not)
    assert SearchIndex.load(path, "phash-8", 6) is None
    assert_same(indexed_search(path, "phash-8", unique, 6, 64, 1), search_unique(unique, 6, 64, 1))
    assert not list(tmp_path.glob(".curate-tmp-*"))


def test_workspace_dedupe_keeps_the_index_and_gives_the_same_groups(tmp_path: Path) -> None:
    raw = tmp_path / "raw"
    for k, name in enumerate(("astronaut", "coffee", "chelsea", "rocket")):
        picture = photo(name).convert("RGB")
        write(raw / f"{name}.jpg", jpeg(picture))
        half = picture.resize((picture.width // 2, picture.height // 2))
        write(raw / f"{name}_small.jpg", jpeg(half, quality=70 + k))
    ws = tmp_path / "ws"
    import_sources(ws, [raw], ImportConfig(workers=1))
    config = DedupeConfig(verify=False, workers=1)
    first = dedupe(ws, config)
    index = ws / ".curate" / INDEX_NAME
    assert index.is_file() and first.duplicates == 4
    more = tmp_path / "more"
    write(more / "camera.jpg", jpeg(photo("camera").convert("RGB")))
    write(more / "coffee_again.jpg", jpeg(photo("coffee").convert("RGB"), quality=60))
    import_sources(ws, [more], ImportConfig(workers=1))
    stamp = index.stat().st_mtime_ns
    with_index = dedupe(ws, config)
    assert index.stat().st_mtime_ns != stamp  # updated with the new hashes
    index.unlink()
    without = dedupe(ws, config)
    def names(result) -> list[list[str]]:  # type: ignore[no-untyped-def]
        return [[result.items[m].shown for m in g.members] for g in result.groups]

    assert names(with_index) == names(without)
    assert with_index.duplicates == 5
    dedupe(ws, DedupeConfig(verify=False, workers=1, threshold=12), dry_run=True)
    assert SearchIndex.load(index, f"{first.hash_key}/64", 12) is None  # a dry run writes no index
