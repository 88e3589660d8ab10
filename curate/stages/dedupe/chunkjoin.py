"""One chunk of the multi-index search: every pair within t whose chunk values are within 2r.

Each hash enters the chunk's index once per variant (its chunk value with <= r bits flipped);
two hashes meet under a common variant key exactly when their chunk values are within 2r.
Why it is done this way (figures: docs/benchmarks.md, "Search to 10M"):

* No Python object per hash or per pair. A variant is one uint64, `key << b | payload`, so one
  `np.sort` (a SIMD sort, ~5 ns an element here; `argsort` is 6x slower) groups equal keys.
  For one-word hashes the payload is the hash's other bits, so candidates are compared from
  the entries alone (a gather of hash rows costs ~20 ns an entry at 10M, four times the
  sort), and only the few that pass are looked up; longer hashes carry the row number.
* Memory stays bounded at any N: the key space is cut into partitions by its top bits and one
  partition is built at a time. The hashes sorted by chunk value give, for each flip mask, the
  contiguous run of hashes whose variant falls in the partition, so a partition is a few slices
  XORed with their mask, then sorted. Partitions run on all cores (numpy releases the GIL).
* Candidates are compared by `kernel.py` when numba is installed and the search is large (one
  compiled pass over each group, ~0.2 ns a pair), else in numpy without pair index arrays:
  groups of equal size form a matrix of hashes, and member c of every group is compared with
  member c + k (an XOR, a popcount and a compare over two slices, ~0.8 ns a pair).
* A pair that meets in several groups (its chunk values differ in more than r bits, so the
  difference splits several ways) is kept only in the canonical one, decided from the few
  pairs that pass the distance test rather than stored per entry.
"""

from __future__ import annotations

import functools
import importlib
import itertools
import logging
from concurrent.futures import ThreadPoolExecutor
from types import ModuleType
from typing import NamedTuple

import numpy as np

from curate.paths import first_line
from curate.stages.dedupe.lookup import SortedLookup, left, right, sorted_lookup

log = logging.getLogger(__name__)
# Entries per partition (~8 bytes each, a few temporaries): bounds the memory of one worker.
PARTITION = 1 << 20
_POPCOUNT8 = np.array([v.bit_count() for v in range(256)], dtype=np.uint8)


class ChunkIndex(NamedTuple):
    """A chunk's hashes as `value << payload_bits | payload`, sorted, and where each value
    prefix (the top `prefix_bits` of the chunk) starts in that array.

    The payload is the hash's other bits when hashes are one word (so candidates are compared
    without looking anything up), else the row number.
    """

    start: int
    width: int
    payload_bits: int
    rest: bool
    sorted_values: np.ndarray
    prefix_bits: int
    bounds: np.ndarray  # (2 ** prefix_bits + 1,) int64


class Rows(NamedTuple):
    """For one-word hashes: rows by (other bits, chunk value), and the row of a hash value."""

    by_rest: SortedLookup  # sorted `rest << width | value`
    values: SortedLookup  # the hash values, sorted
    order: np.ndarray | None  # row of each sorted value; None when the rows are sorted already


def popcount(x: np.ndarray) -> np.ndarray:
    """Set bits per element of an unsigned array (numpy < 2 has no `bitwise_count`)."""
    if hasattr(np, "bitwise_count"):
        return np.bitwise_count(x)
    per_byte = _POPCOUNT8[x[..., None].view(np.uint8)]
    return per_byte.sum(axis=-1, dtype=np.uint8)


def extract(words: np.ndarray, start: int, width: int) -> np.ndarray:
    """Bits [start, start + width) of every row, as uint64."""
    word, offset = divmod(start, 64)
    out = words[:, word] >> np.uint64(offset)
    if offset + width > 64:
        out |= words[:, word + 1] << np.uint64(64 - offset)
    return out & _mask(width)


def _mask(bits: int) -> np.uint64:
    return np.uint64((1 << bits) - 1)


def rest_bits(x: np.ndarray, start: int, width: int) -> np.ndarray:
    """The bits of one-word hashes outside [start, start + width), packed down."""
    out = x & _mask(start)
    if start + width < 64:
        out |= (x >> np.uint64(start + width)) << np.uint64(start)
    return out


def rebuild(value: np.ndarray, rest: np.ndarray, start: int, width: int) -> np.ndarray:
    """The one-word hashes with chunk `value` and other bits `rest` (inverse of the two above)."""
    out = (rest & _mask(start)) | (value << np.uint64(start))
    if start + width < 64:
        out |= (rest >> np.uint64(start)) << np.uint64(start + width)
    return out


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
    rest = words.shape[1] == 1
    pb = 64 - width if rest else item_bits(n)
    packed = extract(words, start, width) << np.uint64(pb)
    packed |= rest_bits(words[:, 0], start, width) if rest else np.arange(n, dtype=np.uint64)
    packed.sort()
    total = n * entries_per_value
    prefix = min(width, max(0, (total // PARTITION).bit_length()))
    top = packed >> np.uint64(pb + width - prefix)
    bounds = np.searchsorted(top, np.arange((1 << prefix) + 1, dtype=np.uint64)).astype(np.int64)
    return ChunkIndex(start, width, pb, rest, packed, prefix, bounds)


def row_lookup(words: np.ndarray, start: int, width: int) -> Rows:
    x = words[:, 0]
    by_rest = np.sort(rest_bits(x, start, width) << np.uint64(width) | extract(words, start, width))
    table = sorted_lookup(by_rest)
    if len(x) < 2 or bool((x[1:] > x[:-1]).all()):
        return Rows(table, sorted_lookup(np.ascontiguousarray(x)), None)
    order = np.argsort(x)
    return Rows(table, sorted_lookup(x[order]), order)


def chunk_pairs(words: np.ndarray, start: int, width: int, radius: int, t: int,
                pool: ThreadPoolExecutor, compiled: ModuleType | None = None
                ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pairs a < b within t (over all words) whose bits [start, start + width) are within 2r.

    compiled: `kernel` (as `compiled_kernel` returns it) compares the candidates in one
    compiled loop; None compares them with numpy. Same answer either way.
    """
    flips = flip_masks(width, radius)
    index = build_index(words, start, width, len(flips))
    rows = row_lookup(words, start, width) if index.rest else None
    jobs = pool.map(lambda q: _partition_pairs(words, index, rows, flips, radius, t, q, compiled),
                    range(1 << index.prefix_bits))
    found = [p for p in jobs if len(p[0])]
    if not found:
        return np.empty(0, np.int64), np.empty(0, np.int64), np.empty(0, np.uint16)
    return tuple(np.concatenate(col) for col in zip(*found, strict=True))  # type: ignore[return-value]


def _partition_entries(index: ChunkIndex, flips: np.ndarray, q: int) -> np.ndarray:
    """Every variant whose key has top bits q, as `key << payload_bits | payload`, sorted."""
    low = index.width - index.prefix_bits
    sources = (flips >> np.uint64(low)).astype(np.int64) ^ q
    lo, hi = index.bounds[sources], index.bounds[sources + 1]
    out = np.empty(int((hi - lo).sum()), dtype=np.uint64)
    shifted = flips << np.uint64(index.payload_bits)
    at = 0
    for k in np.flatnonzero(hi > lo).tolist():
        size = int(hi[k] - lo[k])
        np.bitwise_xor(index.sorted_values[lo[k]:hi[k]], shifted[k], out=out[at:at + size])
        at += size
    out.sort()
    return out


def _partition_pairs(words: np.ndarray, index: ChunkIndex, rows: Rows | None, flips: np.ndarray,
                     radius: int, t: int, q: int, compiled: ModuleType | None
                     ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    entries = _partition_entries(index, flips, q)
    many = None if index.rest else words
    if compiled is not None:
        p, r, d = _compiled_candidates(compiled, entries, index.payload_bits, many, t)
    else:
        p, r, d = _numpy_candidates(entries, index.payload_bits, many, t)
    if not len(p):
        return _none()
    first, mask = entries[p], _mask(index.payload_bits)
    keys, payload_a, payload_b = first >> np.uint64(index.payload_bits), first & mask, entries[r] & mask
    del entries
    if rows is not None:  # one word: the rests passed, now find the rows of the hits
        return _resolve(words, index, rows, keys, payload_a, payload_b, radius, t)
    a, b = payload_a.astype(np.int64), payload_b.astype(np.int64)
    if len(a) and radius:
        ok = _canonical(extract(words[a], index.start, index.width) ^ keys,
                        extract(words[b], index.start, index.width) ^ keys, radius)
        a, b, d = a[ok], b[ok], d[ok]
    return a, b, d


@functools.cache
def compiled_kernel() -> ModuleType | None:
    """The numba-compiled comparison (`kernel.py`), loaded and run once on a tiny input; None
    when numba is not installed or cannot compile here (the numpy path gives the same pairs)."""
    try:
        kernel = importlib.import_module("curate.stages.dedupe.kernel")
        kernel.warm_up()
    except ImportError:
        return None
    except Exception as exc:  # numba's own errors: LLVM, a broken cache, a platform
        log.warning("the compiled search could not load (%s); comparing with numpy instead",
                    first_line(exc))
        return None
    return kernel


def _compiled_candidates(compiled: ModuleType, entries: np.ndarray, payload_bits: int,
                         words: np.ndarray | None, t: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Positions p < r of sorted entries with equal keys within t, and their distances."""
    size = 4096 + (len(entries) >> 8)  # hits are ~1 in 10^4 candidates for random hashes
    while True:
        p, r = np.empty(size, np.int64), np.empty(size, np.int64)
        d = np.empty(size, np.uint16)
        if words is None:
            found = compiled.one_word_pairs(entries, payload_bits, t, p, r, d)
        else:
            found = compiled.row_pairs(entries, payload_bits, words, t, p, r, d)
        if found <= size:
            return p[:found], r[:found], d[:found]
        size = found  # near-identical hashes by the thousand: count known, run again


def _numpy_candidates(entries: np.ndarray, payload_bits: int, words: np.ndarray | None, t: int
                      ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """`_compiled_candidates` in numpy: only the entries of groups of two or more take part."""
    keys = entries >> np.uint64(payload_bits)
    pairs_at = np.flatnonzero(keys[1:] == keys[:-1])
    if not len(pairs_at):
        return _none()
    member = np.zeros(len(entries), dtype=bool)
    member[pairs_at] = True
    member[pairs_at + 1] = True
    taken = np.flatnonzero(member)
    payload = entries[taken] & _mask(payload_bits)
    rows = payload if words is None else words[payload.astype(np.int64)]
    p, r, d = _compare_groups(keys[taken], rows, t)
    return taken[p], taken[r], d


def _compare_groups(keys: np.ndarray, rows: np.ndarray, t: int
                    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Positions p < r of entries in one group (equal keys) whose rows are within t.

    The groups of each size s are gathered into an (s, groups) matrix of rows (member c of
    every group in one contiguous row), and row c meets row c + k for k = 1 .. s - 1: an XOR,
    a popcount and a compare per pair, with the inner loops running over the groups.
    """
    n = len(keys)
    first = np.empty(n, dtype=bool)
    first[0] = True
    np.not_equal(keys[1:], keys[:-1], out=first[1:])
    starts = np.flatnonzero(first)
    sizes = np.diff(np.append(starts, n))
    found: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
    for size in np.flatnonzero(np.bincount(sizes)).tolist():
        at = starts[sizes == size]
        where = at[None, :] + np.arange(size)[:, None]
        block = rows[where]
        for k in range(1, size):
            xor = block[k:] ^ block[:-k]
            dist = popcount(xor) if xor.ndim == 2 else popcount(xor).sum(axis=2, dtype=np.uint16)
            hit = np.flatnonzero(dist <= t)
            if len(hit):
                p = where.reshape(-1)[hit]
                found.append((p, p + k, dist.reshape(-1)[hit].astype(np.uint16)))
    if not found:
        return _none()
    return tuple(np.concatenate(col) for col in zip(*found, strict=True))  # type: ignore[return-value]


def _resolve(words: np.ndarray, index: ChunkIndex, rows: Rows, key: np.ndarray, rest_a: np.ndarray,
             rest_b: np.ndarray, radius: int, t: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Row pairs behind entry pairs (key, rest_a) ~ (key, rest_b) that passed on their rests.

    An entry stands for every hash with that rest whose chunk value is within r of the key:
    almost always one, but two hashes can share an entry, so each side is a list.
    """
    pa, ia, va = _rows_of(index, rows, key, rest_a, radius)
    pb, ib, vb = _rows_of(index, rows, key, rest_b, radius)
    per_b = np.bincount(pb, minlength=len(key))
    first_b = np.cumsum(per_b) - per_b
    times = per_b[pa]
    a_at = np.repeat(np.arange(len(pa)), times)
    b_at = np.repeat(first_b[pa], times) + np.arange(len(a_at)) - np.repeat(np.cumsum(times) - times, times)
    i, j, vi, vj, k = ia[a_at], ib[b_at], va[a_at], vb[b_at], key[pa[a_at]]
    swap = i > j
    i, j = np.where(swap, j, i), np.where(swap, i, j)
    vi, vj = np.where(swap, vj, vi), np.where(swap, vi, vj)
    d = popcount(words[i, 0] ^ words[j, 0])
    ok = (i != j) & (d <= t)
    if radius:
        ok &= _canonical(vi ^ k, vj ^ k, radius)
    return i[ok], j[ok], d[ok].astype(np.uint16)


def _rows_of(index: ChunkIndex, rows: Rows, key: np.ndarray, rest: np.ndarray, radius: int
             ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(entry number, row, chunk value) of each row that the entries (key, rest) stand for."""
    w = np.uint64(index.width)
    lo = left(rows.by_rest, rest << w)
    hi = right(rows.by_rest, (rest << w) | _mask(index.width))
    count = hi - lo
    entry = np.repeat(np.arange(len(key)), count)
    at = np.repeat(lo, count) + np.arange(len(entry)) - np.repeat(np.cumsum(count) - count, count)
    value = rows.by_rest.values[at] & _mask(index.width)
    near = popcount(value ^ key[entry]) <= radius
    entry, value = entry[near], value[near]
    row = left(rows.values, rebuild(value, rest[entry], index.start, index.width))
    if rows.order is not None:
        row = rows.order[row]
    return entry, row.astype(np.int64), value


def _none() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    return np.empty(0, np.int64), np.empty(0, np.int64), np.empty(0, np.uint16)


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

