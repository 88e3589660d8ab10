"""All pairs of perceptual hashes within Hamming distance t, in sub-quadratic time.

Hashes are rows of uint64 words, shape (N, words), bit k in word k // 64 (a 1-D uint64 array is
one word per hash). `pairs_within` returns every pair i < j with distance <= t, exactly the set
that `pairs_bruteforce` returns, and each pair once.

Why this design (numbers from `bench/dedupe_bench.py`, 2 cores; see docs/benchmarks.md):

* Brute force is quadratic: numpy all-pairs with `bitwise_count` takes 19 s at 100k, so ~32 min
  at 1M. imagededup's Cython brute force grows as N^2.1 (92 s at 30k, ~40 h at 1M), and its
  BK-tree is slower still (71 s at 5k): within 8 of 64 bits, a query visits most of the tree.
* Plain multi-index hashing (split 64 bits into t+1 chunks, pairs must share one chunk exactly)
  has 7-bit chunks at t=8: every chunk value is shared by N/128 hashes, so it stays nearly
  quadratic (42 s at 300k, ~3.5e10 candidates and ~6 min at 1M).
* The generalised pigeonhole principle fixes that: split the bits into m chunks with radii r_i
  such that sum(2 r_i + 1) >= t + 1; a pair within t is then within 2 r_i on some chunk i
  (otherwise its distance would be >= sum(2 r_i + 1) > t). A chunk with radius r finds the
  pairs within 2 r on it by giving each hash all its variants with <= r bits flipped and
  grouping equal variants (one sort). At 1M and t=8 that is three 21-bit chunks of radius 1:
  22 variants per hash and ~1e8 candidates per chunk; how a chunk is built and its candidates
  compared, in bounded memory, is `chunkjoin.py`: 1.1 s at 1M, 10 s at 10M (2 cores).
* What no chunking avoids at t=8 on 64 bits: nine pigeonhole units in 64 bits allow chunks of
  ~21 bits at radius 1, or of 32 bits at radius 2 (529 variants a hash). The first keeps the
  candidates of a chunk at N^2 * 232 / 2^22 (quadratic; 1.1e10 at 10M), the second pays ~16x
  the variants (linear up to a few million; measured 6.3x slower at 1M, 2.7x at 10M);
  `bench/search_plans.py` prices every other chunking and finds none both faster and flatter.
  So past a few million hashes the time is comparing candidates: numpy does it in four passes
  over memory (~0.8 ns a pair, N^1.48 from 1M to 10M), numba's compiled loop (`kernel.py`, the
  `fast` extra) in one (~0.2 ns, N^0.97); docs/benchmarks.md, "Search to 10M".
* `_plan` picks m and the radii from a cost model fitted to measured runs of both plans (brute
  force is still cheaper below a few thousand hashes). Each pair is emitted by one canonical variant
  per chunk, so duplicates only come from pairs found by several chunks.
* Identical hashes (every blank white image has the same phash) are collapsed before the
  search and expanded after it, so they cannot form one giant bucket; chunk partitions hold
  ~1M variants each, so memory stays bounded whatever the data.
"""

from __future__ import annotations

import functools
import itertools
import logging
import math
import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from math import comb
from types import ModuleType
from typing import NamedTuple

import numpy as np

from curate.stages.dedupe.chunkjoin import chunk_pairs, compiled_kernel, item_bits, popcount

log = logging.getLogger(__name__)
__all__ = ["Chunk", "Pairs", "pairs_bruteforce", "pairs_within", "popcount", "search_unique"]

# Candidate pairs materialised at once (~40 bytes each): bounds peak memory whatever the buckets.
BATCH = 1 << 22
# Variants of one chunk; they are built a partition at a time, so this bounds time, not memory.
# High enough that past ~15M hashes the two 32-bit halves (529 variants a hash, linear) stay
# eligible: at 2^35 they dropped out at 65M and the quadratic plan came back (3 h at 100M).
MAX_VARIANTS = 1 << 40
# More chunks than this only pays off at thresholds where brute force wins anyway.
MAX_CHUNKS = 24
# Cost model, CPU seconds per unit, fitted to bench/search_scale.py at 1M and 10M hashes for
# the two plans that matter at t=8 (3 x 21 bits at radius 1, 2 x 32 bits at radius 2):
# within 10% of all four measured times (docs/benchmarks.md, "Search to 10M").
COST_VARIANT = 1.3e-8  # build, sort and scan one variant
COST_GROUPED = 7.7e-9  # a variant sharing its key with another: gathered into a group matrix
COST_CANDIDATE = 1.6e-9  # compare one pair of entries sharing a key, per hash word
COST_BRUTE = 4.0e-9  # one pair of one word in the blocked all-pairs comparison
COST_CHUNK = 2e-3  # a chunk's fixed work (its index, a Python loop per partition)
# Candidate pairs past which the compiled comparison (`kernel.py`, with numba) is used: loading
# it costs ~0.4 s (numba's import and the cached loop), so it loses at 300k hashes (0.6 s against
# numpy's 0.4 s at t=8, 3e7 candidates) and wins at 1M (1.1 s against 1.3 s, 3.3e8).
COMPILED_FROM = 1e8
# Without numba, searches past this many candidates (~5M hashes at t=8: a minute or more) say
# once that the `fast` extra would shorten them (10M: 38 s with numpy, 10 s with the loop).
HINT_FROM = 1e10


class Pairs(NamedTuple):
    """Pairs i < j (int64, sorted by i then j) and their Hamming distances."""

    i: np.ndarray
    j: np.ndarray
    distance: np.ndarray


@dataclass(frozen=True)
class Chunk:
    """Bits [start, start + width) of every hash; finds the pairs within 2 * radius on them."""

    start: int
    width: int
    radius: int


def pack_hashes(values: Sequence[int], bits: int = 64) -> np.ndarray:
    """Python ints (as `hashing.hash_file` returns them) to an (N, ceil(bits / 64)) uint64 array."""
    n_words = max(1, -(-bits // 64))
    out = np.zeros((len(values), n_words), dtype=np.uint64)
    for w in range(n_words):
        shift = 64 * w
        out[:, w] = [(v >> shift) & 0xFFFF_FFFF_FFFF_FFFF for v in values]
    return out


def as_words(hashes: np.ndarray | Sequence[int]) -> np.ndarray:
    """Any accepted hash input as a C-contiguous (N, words) uint64 array."""
    if not isinstance(hashes, np.ndarray):
        bits = max((int(v).bit_length() for v in hashes), default=64)
        return pack_hashes([int(v) for v in hashes], bits)
    if hashes.dtype.kind not in "iu" or hashes.dtype.itemsize != 8:
        raise ValueError(f"hashes must be 64-bit integers, got {hashes.dtype}")
    words = hashes.view(np.uint64)
    if words.ndim == 1:
        words = words[:, None]
    if words.ndim != 2:
        raise ValueError(f"hashes must have shape (N,) or (N, words), got {hashes.shape}")
    return np.ascontiguousarray(words)


def distances(words: np.ndarray, i: np.ndarray, j: np.ndarray) -> np.ndarray:
    """Hamming distance between rows i and j of an (N, words) array."""
    if words.shape[1] == 1:
        return popcount(words[i, 0] ^ words[j, 0])
    return popcount(words[i] ^ words[j]).sum(axis=1, dtype=np.uint16)


def _distance_matrix(rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    if rows.shape[1] == 1:  # the common 64-bit case, without the 3-D temporary
        return popcount(rows[:, :1] ^ cols[None, :, 0])
    return popcount(rows[:, None, :] ^ cols[None, :, :]).sum(axis=2, dtype=np.uint16)


def pairs_bruteforce(hashes: np.ndarray | Sequence[int], t: int) -> Pairs:
    """Reference answer: compare every pair, blockwise so memory stays ~16 M distances."""
    words = as_words(hashes)
    n = len(words)
    block = max(1, (1 << 24) // max(n, 1))
    found: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
    for a in range(0, n, block):
        rows = words[a : a + block]
        cols = words[a + 1 :]
        dist = _distance_matrix(rows, cols)
        r, c = np.nonzero(dist <= t)
        keep = c >= r  # column a + 1 + c is after row a + r
        r, c = r[keep], c[keep]
        found.append((r + a, c + a + 1, dist[r, c]))
    return _sorted_pairs(found)


def pairs_within(
    hashes: np.ndarray | Sequence[int],
    t: int,
    *,
    mirrored: np.ndarray | Sequence[int] | None = None,
    bits: int | None = None,
    workers: int | None = None,
    chunks: Sequence[Chunk] | None = None,
    compiled: bool | None = None,
) -> Pairs:
    """Every pair i < j within Hamming distance t; equals `pairs_bruteforce`, sub-quadratically.

    mirrored: hashes of the horizontally flipped images, same order; a pair then counts as near
    when any of the four original/mirrored combinations is, with the smallest distance.
    bits: hash length when it is not a multiple of 64 (e.g. 144 for hash_size 12); the
    default is the highest bit set in the data.
    workers: threads verifying candidates (numpy releases the GIL); default all cores.
    chunks: a fixed chunking instead of the cost model's choice (benchmarks).
    compiled: compare candidates with the numba loop (True), with numpy (False), or with the
    loop when numba is installed and the search is large enough to repay loading it (None).
    """
    words = as_words(hashes)
    if mirrored is None:
        return _search_collapsed(words, t, bits, workers, chunks, compiled)
    both = np.concatenate([words, as_words(mirrored)])
    found = _search_collapsed(both, t, bits, workers, chunks, compiled)
    n = len(words)
    i, j = found.i % n, found.j % n
    keep = i != j
    i, j, d = np.minimum(i, j)[keep], np.maximum(i, j)[keep], found.distance[keep]
    order = np.lexsort((d, j, i))
    i, j, d = i[order], j[order], d[order]
    first = np.ones(len(i), dtype=bool)
    first[1:] = (i[1:] != i[:-1]) | (j[1:] != j[:-1])
    return Pairs(i[first], j[first], d[first])


def collapse(words: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Distinct rows, and for each input row the index of its distinct row."""
    if words.shape[1] == 1:
        unique, inverse = np.unique(words[:, 0], return_inverse=True)
        return unique[:, None], inverse.ravel()
    unique, inverse = np.unique(words, axis=0, return_inverse=True)
    return unique, inverse.ravel()


def _search_collapsed(words: np.ndarray, t: int, bits: int | None, workers: int | None,
                      chunks: Sequence[Chunk] | None = None, compiled: bool | None = None) -> Pairs:
    unique, inverse = collapse(words)
    found = search_unique(unique, t, bits, workers, chunks, compiled)
    if len(unique) == len(words):
        order = np.argsort(inverse)  # unique row u is input row order[u]
        i, j = order[found.i], order[found.j]
        return _sorted_pairs([(np.minimum(i, j), np.maximum(i, j), found.distance)])
    return _expand(found, inverse, len(unique))


def _expand(found: Pairs, inverse: np.ndarray, n_unique: int) -> Pairs:
    """Pairs of distinct hashes -> pairs of input rows, plus the rows sharing one hash."""
    members = np.argsort(inverse, kind="stable")
    sizes = np.bincount(inverse, minlength=n_unique)
    starts = np.cumsum(sizes) - sizes
    shared = sizes > 1
    parts: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
    for batch in _group_batches(starts[shared], sizes[shared]):
        left, right = _batch_positions(*batch)
        a, b = members[left], members[right]
        parts.append((np.minimum(a, b), np.maximum(a, b), np.zeros(len(a), dtype=np.uint16)))
    su, sv = sizes[found.i], sizes[found.j]
    counts = su * sv
    offsets = np.repeat(np.cumsum(counts) - counts, counts)
    k = np.arange(counts.sum()) - offsets
    per_v = np.repeat(sv, counts)
    a = members[np.repeat(starts[found.i], counts) + k // per_v]
    b = members[np.repeat(starts[found.j], counts) + k % per_v]
    parts.append((np.minimum(a, b), np.maximum(a, b), np.repeat(found.distance, counts)))
    return _sorted_pairs(parts)


def search_unique(words: np.ndarray, t: int, bits: int | None, workers: int | None,
                  chunks: Sequence[Chunk] | None = None, compiled: bool | None = None) -> Pairs:
    """`pairs_within` for rows known to be distinct (as `collapse` returns them).

    chunks: a fixed chunking instead of the cost model's (benchmarks compare plans with it);
    it must satisfy the pigeonhole rule for t, or some pairs could be missed.
    compiled: as in `pairs_within`.
    """
    n = len(words)
    if t <= 0:
        return Pairs(*_empty())  # distinct hashes are at least 1 apart
    if bits is None:
        bits = 64 * (words.shape[1] - 1) + max(1, int(words[:, -1].max(initial=0)).bit_length())
    if chunks is not None:
        _check_chunks(chunks, t, 64 * words.shape[1])
    plan = tuple(chunks) if chunks is not None else _plan(n, bits, t, words.shape[1])
    if plan is None:
        return pairs_bruteforce(words, t)
    kernel = _comparer(plan, n, words.shape[1], compiled)
    with ThreadPoolExecutor(workers or os.cpu_count() or 1) as pool:
        pairs = _sorted_pairs([chunk_pairs(words, c.start, c.width, c.radius, t, pool, kernel)
                               for c in plan])
    code = pairs.i * n + pairs.j
    first = np.ones(len(code), dtype=bool)
    first[1:] = code[1:] != code[:-1]  # a pair near on several chunks is found by each
    return Pairs(pairs.i[first], pairs.j[first], pairs.distance[first])


def _comparer(plan: Sequence[Chunk], n: int, n_words: int, compiled: bool | None
              ) -> ModuleType | None:
    """The compiled comparison when asked for, or when numba is there and the plan's candidates
    are enough to repay loading it; None for numpy."""
    if compiled is False:
        return None
    candidates = sum(_counts(n, c.width, c.radius)[2] for c in plan) * n_words
    if compiled is None and candidates < COMPILED_FROM:
        return None
    kernel = compiled_kernel()
    if kernel is None and compiled:
        raise ImportError("the compiled search needs numba: pip install 'curate[fast]'")
    if kernel is None and candidates >= HINT_FROM:
        _hint_fast()
    return kernel


@functools.cache  # once a process: a dedupe run searches again for each candidate band
def _hint_fast() -> None:
    log.warning("a search this large compares its candidate pairs with numpy; "
                "pip install 'curate[fast]' compares them ~4x faster")


def _check_chunks(chunks: Sequence[Chunk], t: int, bits: int) -> None:
    """A given chunking finds every pair within t only if its chunks are disjoint and their
    units add up (the pigeonhole rule in the module docstring)."""
    ends = 0
    for c in sorted(chunks, key=lambda c: c.start):
        if c.start < ends or c.start + c.width > bits or c.width < 1 or c.radius < 0:
            raise ValueError(f"chunks {list(chunks)} overlap or leave the {bits} bits")
        ends = c.start + c.width
    if sum(2 * c.radius + 1 for c in chunks) < t + 1:
        raise ValueError(f"chunks {list(chunks)} do not cover t={t}: need sum(2 r + 1) >= {t + 1}")


def _plan(n: int, bits: int, t: int, n_words: int = 1) -> tuple[Chunk, ...] | None:
    """The cheapest chunking by the cost model, or None when brute force is cheaper."""
    best: tuple[Chunk, ...] | None = None
    best_cost = COST_BRUTE * n * n / 2 * n_words
    for m in range(1, min(t + 1, bits, MAX_CHUNKS) + 1):
        widths = [bits // m + (1 if k < bits % m else 0) for k in range(m)]
        starts = np.cumsum([0, *widths[:-1]]).tolist()
        for radii in itertools.combinations_with_replacement((2, 1, 0, -1), m):
            if sum(2 * r + 1 for r in radii if r >= 0) < t + 1:
                continue
            chunks = tuple(
                Chunk(s, _key_width(n, w, r), r)
                for s, w, r in zip(starts, widths, radii, strict=True)
                if r >= 0
            )
            cost = sum(_chunk_cost(n, c.width, c.radius, n_words) for c in chunks)
            if cost < best_cost:
                best_cost, best = cost, chunks
    return best


def _key_width(n: int, width: int, radius: int) -> int:
    """Bits of a chunk actually keyed on: key and hash number share one uint64.

    Keying on fewer bits than the chunk has only adds candidates (a pair within 2r on the
    chunk is within 2r on any part of it), and beyond ~40 bits there are almost none anyway.
    """
    return min(width, 64 - item_bits(n))


def _chunk_cost(n: int, width: int, radius: int, n_words: int = 1) -> float:
    """Modelled CPU seconds of one chunk for uniform hashes: its variants are spread over 2^width
    keys, `per_key` a key (Poisson), so a share 1 - e^-per_key of them are in groups of two or
    more, and the pairs sharing a key number variants * per_key / 2. Small groups cost more a
    pair than large ones (gathering the group is per variant), hence the grouped term."""
    variants, grouped, candidates = _counts(n, width, radius)
    if variants > MAX_VARIANTS or width < 1:
        return float("inf")
    return (COST_CHUNK + COST_VARIANT * variants + COST_GROUPED * grouped
            + COST_CANDIDATE * n_words * candidates)


def _counts(n: int, width: int, radius: int) -> tuple[float, float, float]:
    """A chunk's variants, those sharing their key, and candidate pairs, for uniform hashes."""
    variants = n * sum(comb(width, k) for k in range(radius + 1))
    per_key = variants / 2**max(width, 0)
    return variants, variants * -math.expm1(-per_key), variants * per_key / 2


def _group_batches(starts: np.ndarray, sizes: np.ndarray) -> list[tuple[np.ndarray, np.ndarray]]:
    """Split the pairs inside groups (sorted positions) into batches of about BATCH pairs.

    A batch is (positions, partners): each position pairs with that many positions after it.
    """
    if len(starts) == 0:
        return []
    group = np.repeat(np.arange(len(starts)), sizes)
    pos = np.arange(len(group)) - np.repeat(np.cumsum(sizes) - sizes, sizes) + starts[group]
    after = (starts + sizes)[group] - pos - 1
    total = np.cumsum(after)
    cuts = np.searchsorted(total, np.arange(BATCH, int(total[-1]), BATCH), side="right")
    bounds = itertools.pairwise([0, *cuts.tolist(), len(pos)])
    return [(pos[lo:hi], after[lo:hi]) for lo, hi in bounds]


def _batch_positions(pos: np.ndarray, partners: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    left = np.repeat(pos, partners)
    offsets = np.repeat(np.cumsum(partners) - partners, partners)
    return left, left + 1 + (np.arange(len(left)) - offsets)


def _sorted_pairs(parts: Sequence[tuple[np.ndarray, ...]]) -> Pairs:
    if not parts:
        return Pairs(*_empty())
    i, j, d = (np.concatenate(col) for col in zip(*parts, strict=True))
    order = np.lexsort((j, i))
    return Pairs(i[order].astype(np.int64), j[order].astype(np.int64), d[order].astype(np.uint16))


def _empty() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    return np.empty(0, np.int64), np.empty(0, np.int64), np.empty(0, np.uint16)
