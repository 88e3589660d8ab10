"""Near-duplicate search: the fast search must return exactly what brute force returns."""

from __future__ import annotations

import numpy as np
import pytest

from curate.stages.dedupe import search
from curate.stages.dedupe.clusters import (
    UnionFind,
    cluster_hashes,
    clusters_from_pairs,
    component_labels,
    groups_from_labels,
)
from curate.stages.dedupe.search import Chunk, Pairs, pack_hashes, pairs_bruteforce, pairs_within


def flip_bits(rng: np.random.Generator, words: np.ndarray, max_flips: int, bits: int) -> np.ndarray:
    """Copies of the rows with 0..max_flips random bits flipped."""
    out = words.copy()
    for row in out:
        for bit in rng.choice(bits, rng.integers(0, max_flips + 1), replace=False):
            row[bit // 64] ^= np.uint64(1) << np.uint64(bit % 64)
    return out


def planted(seed: int, n: int, words: int = 1, bits: int = 64) -> np.ndarray:
    """Random hashes, near copies at 0..12 bits, and many identical ones (blank images)."""
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 2**63, (n, words), dtype=np.uint64) << np.uint64(1)
    base |= rng.integers(0, 2, (n, words), dtype=np.uint64)
    if bits % 64:
        base[:, -1] &= np.uint64((1 << (bits % 64)) - 1)
    near = flip_bits(rng, base[rng.integers(0, n, n // 5)], 12, bits)
    same = np.repeat(base[:3], [150, 40, 2], axis=0)
    out = np.concatenate([base, near, same, np.zeros((30, words), np.uint64)])
    return out[rng.permutation(len(out))]


def assert_same(got: Pairs, want: Pairs) -> None:
    np.testing.assert_array_equal(got.i, want.i)
    np.testing.assert_array_equal(got.j, want.j)
    np.testing.assert_array_equal(got.distance, want.distance)


@pytest.mark.parametrize("t", [0, 1, 4, 8, 10])
def test_equals_bruteforce_with_planted_pairs(t: int) -> None:
    hashes = planted(seed=t, n=12_000)[:, 0]
    if t:
        assert search._plan(len(np.unique(hashes)), 64, t) is not None  # the fast path runs
    want = pairs_bruteforce(hashes, t)
    assert len(want.i) > 10_000  # the identical hashes alone give 11,000+ pairs
    assert_same(pairs_within(hashes, t), want)


PLANS = {
    "exact chunks": ((Chunk(0, 13, 0), Chunk(13, 13, 0), Chunk(26, 13, 0), Chunk(39, 13, 0),
                      Chunk(52, 12, 0)), 4),
    "radius 1": ((Chunk(0, 22, 1), Chunk(22, 21, 1), Chunk(43, 21, 1)), 8),
    "radius 2 and a skipped chunk": ((Chunk(0, 22, 2), Chunk(22, 21, 2)), 9),
    "mixed": ((Chunk(0, 16, 2), Chunk(16, 16, 1), Chunk(32, 16, 0), Chunk(48, 16, 1)), 11),
}


@pytest.mark.parametrize("name", PLANS)
def test_every_kind_of_chunk_plan_is_exact(name: str) -> None:
    plan, t = PLANS[name]
    hashes = planted(seed=7, n=3_000)
    assert_same(pairs_within(hashes, t, chunks=plan), pairs_bruteforce(hashes, t))


def test_a_chunking_that_could_miss_pairs_is_refused() -> None:
    hashes = planted(seed=7, n=100)
    for plan in ((Chunk(0, 32, 1), Chunk(32, 32, 1)),  # 3 + 3 units < 9: misses 3+3-bit pairs
                 (Chunk(0, 40, 2), Chunk(30, 34, 2)),  # overlapping
                 (Chunk(0, 32, 2), Chunk(32, 40, 2))):  # past bit 64
        with pytest.raises(ValueError):
            pairs_within(hashes, 8, chunks=plan)


def test_the_plan_follows_the_measured_costs() -> None:
    """Three ~21-bit chunks at radius 1 (67 variants a hash, candidates ~N^2) against two 32-bit
    halves at radius 2 (1,058 variants, few candidates): measured at 1M and 10M the first is
    6-7x and 2.7x faster (docs/benchmarks.md), and the model says so up to ~50M; the halves win
    past that, and the variant cap must not hide them there (at 2^35 it did, from 65M on)."""
    def shape(n: int) -> list[tuple[int, int]]:
        return [(c.width, c.radius) for c in search._plan(n, 64, 8) or ()]
    for n in (1_000_000, 10_000_000, 20_000_000):
        assert shape(n) == [(22, 1), (21, 1), (21, 1)]
    for n in (100_000_000, 300_000_000):
        assert shape(n) == [(32, 2), (32, 2)]


def test_chosen_plans_satisfy_the_pigeonhole_bound() -> None:
    for n in (1_000, 100_000, 1_000_000):
        for t in range(1, 13):
            plan = search._plan(n, 64, t)
            if plan is not None:
                assert sum(2 * c.radius + 1 for c in plan) >= t + 1
                assert all(c.start + c.width <= 64 for c in plan)


def test_small_batches_give_the_same_pairs(monkeypatch: pytest.MonkeyPatch) -> None:
    hashes = planted(seed=3, n=5_000)
    want = pairs_within(hashes, 8)
    monkeypatch.setattr(search, "BATCH", 1000)
    assert_same(pairs_within(hashes, 8, workers=1), want)


@pytest.mark.parametrize("t", [3, 10, 30])
def test_multiword_hashes(t: int) -> None:
    hashes = planted(seed=11, n=3_000, words=4, bits=256)
    assert_same(pairs_within(hashes, t), pairs_bruteforce(hashes, t))


def test_hash_length_not_a_multiple_of_64() -> None:
    hashes = planted(seed=5, n=4_000, words=3, bits=144)  # hash_size 12
    assert_same(pairs_within(hashes, 6, bits=144), pairs_bruteforce(hashes, 6))
    assert_same(pairs_within(hashes, 6), pairs_bruteforce(hashes, 6))


def test_mirrored_hashes_match_flipped_copies() -> None:
    rng = np.random.default_rng(2)
    hashes = rng.integers(0, 2**63, 2_000, dtype=np.uint64)
    mirrored = rng.integers(0, 2**63, 2_000, dtype=np.uint64)
    hashes[100] = mirrored[7] ^ np.uint64(0b101)  # 100 is 7 flipped, 2 bits off
    found = pairs_within(hashes, 3, mirrored=mirrored)
    with_mirrors = set(zip(found.i.tolist(), found.j.tolist(), found.distance.tolist(), strict=True))
    assert (7, 100, 2) in with_mirrors
    plain = pairs_within(hashes, 3)
    assert set(zip(plain.i.tolist(), plain.j.tolist(), strict=True)) <= {(i, j) for i, j, _ in with_mirrors}


def test_inputs() -> None:
    values = [0, 1, (1 << 64) - 1, (1 << 100) | 3]
    words = pack_hashes(values, bits=128)
    assert words.shape == (4, 2)
    assert int(words[3, 1]) == 1 << 36 and int(words[3, 0]) == 3
    found = pairs_within(values, 1)
    assert list(zip(found.i.tolist(), found.j.tolist(), strict=True)) == [(0, 1)]
    assert len(pairs_within(np.empty(0, np.uint64), 8).i) == 0
    assert len(pairs_within(np.array([5], np.uint64), 8).i) == 0
    with pytest.raises(ValueError, match="64-bit"):
        pairs_within(np.zeros(3, np.float64), 2)


def test_clusters_from_pairs() -> None:
    pairs = [(0, 1), (1, 2), (5, 4), (7, 7)]
    assert clusters_from_pairs(8, pairs) == [[0, 1, 2], [4, 5]]
    assert clusters_from_pairs(8, np.array(pairs), min_size=1) == [[0, 1, 2], [3], [4, 5], [6], [7]]
    assert clusters_from_pairs(3, []) == []
    uf = UnionFind(8)
    assert uf.union(0, 1) and uf.union(2, 1) and not uf.union(0, 2)
    uf.union(5, 4)
    assert uf.groups() == [[0, 1, 2], [4, 5]]
    assert uf.find(5) == 4


def test_union_find_labels_are_each_elements_root() -> None:
    rng = np.random.default_rng(3)
    uf = UnionFind(5_000)
    for a, b in rng.integers(0, 5_000, size=(3_000, 2)).tolist():  # long, unhalved chains too
        uf.union(a, b)
    parent = list(uf.parent)
    labels = uf.labels()
    uf.parent = parent
    assert labels.tolist() == [uf.find(x) for x in range(5_000)]
    assert uf.groups() == clusters_from_pairs(5_000, [(x, int(r)) for x, r in enumerate(labels)])


@pytest.mark.parametrize("min_size", [1, 2, 3])
def test_groups_from_labels_equal_a_plain_grouping(min_size: int) -> None:
    """Singletons are left out before the split (most images are in no group); the groups and
    their order stay those of grouping every label."""
    labels = np.random.default_rng(min_size).integers(0, 400, 1_000)
    by_label: dict[int, list[int]] = {}
    for k, label in enumerate(labels.tolist()):
        by_label.setdefault(label, []).append(k)
    want = sorted((g for g in by_label.values() if len(g) >= min_size), key=lambda g: g[0])
    assert groups_from_labels(labels, min_size) == want
    assert groups_from_labels(np.empty(0, np.int64), min_size) == []


def test_component_labels_on_a_long_chain() -> None:
    rng = np.random.default_rng(0)
    order = rng.permutation(10_000)  # a path through every node, in random order
    labels = component_labels(10_000, order[:-1], order[1:])
    assert (labels == 0).all()


@pytest.mark.parametrize("t", [0, 4, 10])
def test_cluster_hashes_equals_clusters_of_all_pairs(t: int) -> None:
    hashes = planted(seed=13, n=4_000)
    want = clusters_from_pairs(len(hashes), pairs_bruteforce(hashes, t))
    assert cluster_hashes(hashes, t) == want


def test_cluster_hashes_with_mirrors() -> None:
    rng = np.random.default_rng(4)
    hashes = rng.integers(0, 2**63, 500, dtype=np.uint64)
    mirrored = rng.integers(0, 2**63, 500, dtype=np.uint64)
    hashes[9] = mirrored[3]
    hashes[20] = hashes[3]
    assert cluster_hashes(hashes, 0) == [[3, 20]]
    assert cluster_hashes(hashes, 0, mirrored=mirrored) == [[3, 9, 20]]


def test_bucket_lookup_equals_searchsorted() -> None:
    """lookup.left/right answer as np.searchsorted does: duplicates, empty buckets, both ends."""
    from curate.stages.dedupe.lookup import left, right, sorted_lookup

    rng = np.random.default_rng(5)
    for n in (0, 1, 7, 1_000, 50_000):
        values = rng.integers(0, 2**64, n, dtype=np.uint64)
        values = np.sort(np.concatenate([values, values[: n // 3], np.full(n // 10, 2**63, np.uint64)]))
        queries = np.concatenate([rng.integers(0, 2**64, 2_000, dtype=np.uint64), values[::5],
                                  np.array([0, 2**63, 2**64 - 1], dtype=np.uint64)])
        table = sorted_lookup(values)
        assert np.array_equal(left(table, queries), np.searchsorted(values, queries))
        assert np.array_equal(right(table, queries), np.searchsorted(values, queries, side="right"))
