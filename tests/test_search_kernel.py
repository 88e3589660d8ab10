"""The compiled candidate comparison (kernel.py, numba) must give exactly the numpy path's pairs,
and the search must stay exact, and work, with it, without it, and without numba installed."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from numba.core.caching import FunctionCache, NullCache

from curate.stages.dedupe import chunkjoin, kernel, search  # numba: the fast extra, in dev
from curate.stages.dedupe.search import Chunk, pairs_bruteforce, pairs_within
from tests.test_dedupe_hashing import run_python
from tests.test_dedupe_search import assert_same, planted


def partition(seed: int, sizes: list[int], payload_bits: int, near: int) -> np.ndarray:
    """Sorted entries `key << payload_bits | payload` in groups of the given sizes; `near` of
    the payloads in each group are copies of its first one with 0..6 bits flipped.

    Every payload is also in the next group, and keys are consecutive (often one bit apart),
    so an entry compared across a group boundary would pass the distance test too."""
    rng = np.random.default_rng(seed)
    keys = np.arange(len(sizes), dtype=np.uint64)
    payload = [rng.integers(0, 1 << payload_bits, size, dtype=np.uint64) for size in sizes]
    for group in payload:
        for k in range(1, min(near, len(group) - 1) + 1):
            bits = rng.choice(payload_bits, rng.integers(0, 7), replace=False)
            group[k] = group[0] ^ np.uint64(sum(1 << int(b) for b in bits))
    for before, group in itertools.pairwise(payload):
        group[: len(before)] = before[: len(group)]
    entries = [key << np.uint64(payload_bits) | group for key, group in zip(keys, payload, strict=True)]
    return np.sort(np.concatenate(entries))


def as_set(found: tuple[np.ndarray, np.ndarray, np.ndarray]) -> set[tuple[int, int, int]]:
    p, r, d = (x.tolist() for x in found)
    assert len(set(zip(p, r, strict=True))) == len(p)  # each pair once
    return set(zip(p, r, d, strict=True))


# group sizes around the four-row block: under it, at it, one and three past it, and long groups
SIZES = [1, 2, 3, 4, 5, 7, 8, 9, 12, 13, 31, 64, 105, 1, 6, 200]


@pytest.mark.parametrize("t", [0, 3, 8, 12])
@pytest.mark.parametrize("near", [0, 2, 9])
def test_one_word_kernel_equals_numpy(t: int, near: int) -> None:
    entries = partition(seed=t + near, sizes=SIZES, payload_bits=42, near=near)
    got = chunkjoin._compiled_candidates(kernel, entries, 42, None, t)
    want = chunkjoin._numpy_candidates(entries, 42, None, t)
    assert as_set(got) == as_set(want)
    if near and t >= 8:
        assert len(got[0]) >= near  # the planted near payloads are among the hits


def test_more_hits_than_the_first_buffer_holds() -> None:
    """A group of near-identical rests (one image re-saved thousands of times) has more hits
    than the buffer sized for random hashes: the count comes back and the loop runs again."""
    entries = partition(seed=1, sizes=[3, 150, 5, 120], payload_bits=40, near=150)
    entries[3:153] = entries[3]  # 150 equal entries in one group: 11,175 pairs at distance 0
    entries.sort()
    got = chunkjoin._compiled_candidates(kernel, entries, 40, None, 8)
    assert len(got[0]) > 4096 + (len(entries) >> 8)
    assert as_set(got) == as_set(chunkjoin._numpy_candidates(entries, 40, None, 8))


@pytest.mark.parametrize("t", [5, 30])
def test_row_kernel_equals_numpy(t: int) -> None:
    """Hashes of several words: entries carry row numbers, distances sum over the row."""
    rows = planted(seed=4, n=600, words=4, bits=256)
    rng = np.random.default_rng(t)
    row_bits = chunkjoin.item_bits(len(rows))
    sizes = [int(s) for s in rng.integers(1, 40, 60)]
    keys = np.repeat(np.arange(len(sizes), dtype=np.uint64), sizes)
    items = rng.integers(0, len(rows), len(keys)).astype(np.uint64)
    entries = np.sort(keys << np.uint64(row_bits) | items)
    got = chunkjoin._compiled_candidates(kernel, entries, row_bits, rows, t)
    want = chunkjoin._numpy_candidates(entries, row_bits, rows, t)
    assert as_set(got) == as_set(want)
    assert len(got[0])  # the planted copies and repeated rows give hits


PLANS = {
    "radius 1 (the plan at 1M-50M)": ((Chunk(0, 22, 1), Chunk(22, 21, 1), Chunk(43, 21, 1)), 8),
    "radius 2 halves": ((Chunk(0, 32, 2), Chunk(32, 32, 2)), 9),
    "exact chunks": ((Chunk(0, 13, 0), Chunk(13, 13, 0), Chunk(26, 13, 0), Chunk(39, 13, 0),
                      Chunk(52, 12, 0)), 4),
    "narrow keys, big groups": ((Chunk(0, 10, 1), Chunk(10, 10, 1), Chunk(20, 10, 1)), 8),
}


@pytest.mark.parametrize("name", PLANS)
def test_compiled_search_equals_bruteforce(name: str) -> None:
    plan, t = PLANS[name]
    hashes = planted(seed=23, n=6_000)
    assert_same(pairs_within(hashes, t, chunks=plan, compiled=True), pairs_bruteforce(hashes, t))


@pytest.mark.parametrize(("words", "bits", "t"), [(4, 256, 32), (3, 144, 6)])
def test_compiled_search_of_longer_hashes(words: int, bits: int, t: int) -> None:
    hashes = planted(seed=29, n=3_000, words=words, bits=bits)
    plan = search._plan(20_000_000, bits, t, words)  # what a large search would use
    assert plan is not None
    assert_same(pairs_within(hashes, t, chunks=plan, compiled=True), pairs_bruteforce(hashes, t))


def test_mirrored_search_with_the_kernel() -> None:
    rng = np.random.default_rng(2)
    hashes = rng.integers(0, 2**63, 3_000, dtype=np.uint64)
    mirrored = rng.integers(0, 2**63, 3_000, dtype=np.uint64)
    hashes[100] = mirrored[7] ^ np.uint64(0b101)
    plan = PLANS["radius 1 (the plan at 1M-50M)"][0]
    assert_same(pairs_within(hashes, 3, mirrored=mirrored, chunks=plan, compiled=True),
                pairs_within(hashes, 3, mirrored=mirrored, chunks=plan, compiled=False))


def test_the_kernel_is_chosen_for_large_searches_only(monkeypatch: pytest.MonkeyPatch,
                                                      caplog: pytest.LogCaptureFixture) -> None:
    """Loading numba costs ~0.4 s, so the numpy path keeps small searches (300k hashes at t=8:
    3e7 candidates, 0.4 s) and the loop takes large ones (1M: 3.3e8, 1.1 s against 1.3 s)."""
    for n, compiled in ((300_000, False), (1_000_000, True), (10_000_000, True)):
        plan = search._plan(n, 64, 8)
        assert plan is not None
        assert (search._comparer(plan, n, 1, None) is kernel) == compiled
        assert search._comparer(plan, n, 1, False) is None
        assert search._comparer(plan, n, 1, True) is kernel
    monkeypatch.setattr(search, "compiled_kernel", lambda: None)  # as without numba
    search._hint_fast.cache_clear()
    assert search._comparer(search._plan(1_000_000, 64, 8), 1_000_000, 1, None) is None
    assert not caplog.text  # a 1M search (1.3 s with numpy) says nothing
    plan = search._plan(10_000_000, 64, 8)
    assert search._comparer(plan, 10_000_000, 1, None) is None
    assert "pip install 'curate[fast]'" in caplog.text  # a 10M search says what would help
    caplog.clear()
    assert search._comparer(plan, 10_000_000, 1, None) is None
    assert not caplog.text  # and says it once, though a run searches once per candidate band
    with pytest.raises(ImportError, match=r"pip install 'curate\[fast\]'"):
        search._comparer(plan, 10_000_000, 1, True)


def test_the_search_runs_without_numba_installed() -> None:
    """numba is an extra: with it absent the import fails and the numpy path answers."""
    code = (
        "import sys; sys.modules['numba'] = None\n"  # `import numba` now raises ImportError
        "import numpy as np\n"
        "from curate.stages.dedupe import search, chunkjoin\n"
        "from curate.stages.dedupe.search import Chunk, pairs_within, pairs_bruteforce\n"
        "assert chunkjoin.compiled_kernel() is None\n"
        "h = np.random.default_rng(0).integers(0, 2**64, 5000, dtype=np.uint64)\n"
        "h[4000:] = h[:1000] ^ np.uint64(0b1011)\n"
        "plan = (Chunk(0, 22, 1), Chunk(22, 21, 1), Chunk(43, 21, 1))\n"
        "got, want = pairs_within(h, 8, chunks=plan), pairs_bruteforce(h, 8)\n"
        "assert len(want.i) == 1000 and all((a == b).all() for a, b in zip(got, want))\n"
        "assert 'curate.stages.dedupe.kernel' not in sys.modules\n"
        "print('ok')\n"
    )
    assert run_python(code).strip() == "ok"


def test_without_a_cache_folder_the_loop_is_compiled_per_process() -> None:
    """numba refuses to cache a function whose file it cannot place a cache beside (here: code
    from a string, as for a read-only install with no writable home); it is compiled anyway."""
    namespace: dict[str, object] = {}
    exec("def double(x):\n    return 2 * x\n", namespace)  # a function with no file
    compiled = kernel._jit(namespace["double"])  # type: ignore[arg-type]
    assert compiled(21) == 42
    assert isinstance(compiled._cache, NullCache)  # not cached, but compiled
    assert isinstance(kernel.one_word_pairs._cache, FunctionCache)  # the package's file: cached


def test_a_numba_that_cannot_compile_here_falls_back_to_numpy(
        monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    """numba installed but failing on this platform (its errors are not ImportError): one line
    says so and the search compares with numpy, with the same pairs."""
    def broken() -> None:
        raise RuntimeError("LLVM ERROR: cannot select instruction\nmore detail")

    monkeypatch.setattr(kernel, "warm_up", broken)
    chunkjoin.compiled_kernel.cache_clear()
    try:
        assert chunkjoin.compiled_kernel() is None
        assert "could not load (LLVM ERROR: cannot select instruction)" in caplog.text
        big = search._plan(10_000_000, 64, 8)
        assert big is not None
        assert search._comparer(big, 10_000_000, 1, None) is None  # a 10M search takes numpy
    finally:
        chunkjoin.compiled_kernel.cache_clear()
    monkeypatch.undo()
    assert chunkjoin.compiled_kernel() is kernel
