"""One chunk of the multi-index search: every pair within t whose chunk values are within 2r.

Each hash enters the chunk's index once per variant (its chunk value with <= r bits flipped);
two hashes meet under a common variant key exactly when their chunk values are within 2r.
Why it is done this way (figures: docs/benchmarks.md, "Search to 10M"):

* No Python object per hash or per pair. A variant is one uint64, `key << item_bits | item`, so
  one `np.sort` (a SIMD sort, ~5 ns an element here; `argsort` is 6x slower) groups equal keys
  and orders each group by item.
* Memory stays bounded at any N: the key space is cut into partitions by its top bits and one
  partition is built at a time. The hashes sorted by chunk value give, for each flip mask, the
  contiguous run of hashes whose variant falls in the partition, so a partition is a few slices
  XORed with their mask, then sorted. Partitions run on all cores (numpy releases the GIL).
* Candidates are compared without materialising pair index arrays: with the entries of each
  group in a row, entry p is compared with entry p + k for k = 1, 2, ... while both are in one
  group. Entries are ordered by how many group members follow them, so the entries still
  active at step k are a prefix: each step is one gather, an XOR, a popcount and a compare.
* A pair that meets in several groups (its chunk values differ in more than r bits, so the
  difference splits several ways) is kept only in the canonical one, decided from the few
  pairs that pass the distance test rather than stored per entry.
"""

from __future__ import annotations

import itertools
from concurrent.futures import ThreadPoolExecutor
from typing import NamedTuple

import numpy as np

# Entries per partition (~8 bytes each, a few temporaries): bounds the memory of one worker.
PARTITION = 1 << 22


class ChunkIndex(NamedTuple):
    """A chunk's hashes sorted by chunk value: `value << item_bits | item`, and where each
    value prefix (the top `prefix_bits` of the chunk) starts in that array."""

    start: int
    width: int
    item_bits: int
    sorted_values: np.ndarray
    prefix_bits: int
    bounds: np.ndarray  # (2 ** prefix_bits + 1,) int64


def popcount(x: np.ndarray) -> np.ndarray:
    return np.bitwise_count(x)


def extract(words: np.ndarray, start: int, width: int) -> np.ndarray:
    """Bits [start, start + width) of every row, as uint64."""
    word, offset = divmod(start, 64)
    out = words[:, word] >> np.uint64(offset)
    if offset + width > 64:
        out |= words[:, word + 1] << np.uint64(64 - offset)
    return out & np.uint64((1 << width) - 1) if width < 64 else out


def flip_masks(width: int, radius: int) -> np.ndarray:
    masks = [
        sum(1 << b for b in bits)
        for k in range(radius + 1)
        for bits in itertools.combinations(range(width), k)
    ]
    return np.array(masks, dtype=np.uint64)


def item_bits(n: int) -> int:
    return max(1, (n - 1).bit_length())


def build_index(words: np.ndarray, start: int, width: int, entries_per_value: int = 1) -> ChunkIndex:
    """The sorted chunk values of all rows; partitions sized for `entries_per_value` variants."""
    n = len(words)
    ib = item_bits(n)
    packed = extract(words, start, width) << np.uint64(ib)
    packed |= np.arange(n, dtype=np.uint64)
    packed.sort()
    total = n * entries_per_value
    prefix = min(width, max(0, (total // PARTITION).bit_length()))
    top = packed >> np.uint64(ib + width - prefix)
    bounds = np.searchsorted(top, np.arange((1 << prefix) + 1, dtype=np.uint64)).astype(np.int64)
    return ChunkIndex(start, width, ib, packed, prefix, bounds)


def chunk_pairs(words: np.ndarray, start: int, width: int, radius: int, t: int,
                pool: ThreadPoolExecutor) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pairs a < b within t (over all words) whose bits [start, start + width) are within 2r."""
    flips = flip_masks(width, radius)
    index = build_index(words, start, width, len(flips))
    jobs = pool.map(lambda q: _partition_pairs(words, index, flips, radius, t, q),
                    range(1 << index.prefix_bits))
    found = [p for p in jobs if len(p[0])]
    if not found:
        return np.empty(0, np.int64), np.empty(0, np.int64), np.empty(0, np.uint16)
    return tuple(np.concatenate(col) for col in zip(*found, strict=True))  # type: ignore[return-value]


def _partition_entries(index: ChunkIndex, flips: np.ndarray, q: int) -> np.ndarray:
    """Every variant whose key has top bits q, as `key << item_bits | item`, sorted."""
    low = index.width - index.prefix_bits
    sources = (flips >> np.uint64(low)).astype(np.int64) ^ q
    lo, hi = index.bounds[sources], index.bounds[sources + 1]
    out = np.empty(int((hi - lo).sum()), dtype=np.uint64)
    shifted = flips << np.uint64(index.item_bits)
    at = 0
    for k in np.flatnonzero(hi > lo).tolist():
        size = int(hi[k] - lo[k])
        np.bitwise_xor(index.sorted_values[lo[k]:hi[k]], shifted[k], out=out[at:at + size])
        at += size
    out.sort()
    return out


def _partition_pairs(words: np.ndarray, index: ChunkIndex, flips: np.ndarray, radius: int, t: int,
                     q: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    entries = _partition_entries(index, flips, q)
    ib = np.uint64(index.item_bits)
    keys = entries >> ib
    same = keys[1:] == keys[:-1]
    if not same.any():
        return np.empty(0, np.int64), np.empty(0, np.int64), np.empty(0, np.uint16)
    # only the entries of groups of two or more take part
    member = np.zeros(len(entries), dtype=bool)
    member[:-1] = same
    member[1:] |= same
    entries = entries[member]
    keys = keys[member]
    items = (entries & np.uint64((1 << int(ib)) - 1)).astype(np.int64)
    del entries, member, same
    a, b, d, k = _compare_groups(words, keys, items, t)
    if len(a) and radius:
        ok = _canonical(extract(words[a], index.start, index.width) ^ k,
                        extract(words[b], index.start, index.width) ^ k, radius)
        a, b, d = a[ok], b[ok], d[ok]
    return a, b, d


def _compare_groups(words: np.ndarray, keys: np.ndarray, items: np.ndarray, t: int
                    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Pairs of entries in one group (equal keys; items ascending) whose hashes are within t,
    with their group key. Entry p meets p + k; ordered by followers, the active p are a prefix."""
    n = len(keys)
    starts = np.flatnonzero(np.concatenate(([True], keys[1:] != keys[:-1])))
    sizes = np.diff(np.append(starts, n))
    pos = np.arange(n, dtype=np.int64)
    follow = np.repeat(starts + sizes, sizes) - pos - 1  # members after p in its group
    # a sort of (most followers first, then position): a uint64 sort instead of an argsort
    order = np.sort((follow.max() - follow).astype(np.uint64) << np.uint64(40) | pos.astype(np.uint64))
    order = (order & np.uint64((1 << 40) - 1)).astype(np.int64)
    active = np.bincount(follow, minlength=int(follow.max()) + 1)[::-1].cumsum()[::-1]
    rows = words[items]
    left = rows[order]
    found: list[tuple[np.ndarray, np.ndarray]] = []
    for k in range(1, len(active)):
        p = order[: active[k]]
        xor = left[: active[k]] ^ rows[p + k]
        dist = popcount(xor) if xor.shape[1] == 1 else popcount(xor).sum(axis=1, dtype=np.uint16)
        dist = dist.reshape(-1)
        hit = np.flatnonzero(dist <= t)
        if len(hit):
            found.append((p[hit], dist[hit].astype(np.uint16), np.full(len(hit), k)))
    if not found:
        e = np.empty(0, np.int64)
        return e, e, np.empty(0, np.uint16), np.empty(0, np.uint64)
    p = np.concatenate([f[0] for f in found])
    d = np.concatenate([f[1] for f in found])
    q = p + np.concatenate([f[2] for f in found])
    return items[p], items[q], d, keys[p]


def _canonical(fa: np.ndarray, fb: np.ndarray, radius: int) -> np.ndarray:
    """True for the one split of the chunk difference fa ^ fb that stands for the pair (a < b).

    Two hashes whose chunk values differ in the bits D meet under every split of D into flips
    with at most `radius` bits each. The canonical split gives a the lowest min(radius, |D|)
    bits of D and b the rest, so it is disjoint and a's bits are all lower.
    """
    both = fa | fb
    lowest_b = fb & (~fb + np.uint64(1))
    return (
        ((fa & fb) == 0)
        & (popcount(fa) == np.minimum(radius, popcount(both)))
        & ((fb == 0) | (fa < lowest_b))
    )

