"""The candidate comparison of a chunk partition, compiled by numba (`pip install curate[fast]`).

Past a few million hashes the search's time is comparing the entries that share a key: at 10M
hashes and t=8, 3 x 1.2e10 pairs. numpy needs four passes over memory per pair (XOR, popcount,
compare, nonzero; ~0.8 ns a pair here, whatever the width), so its cost grows with those
candidates, N^1.48 from 1M to 10M. One compiled loop keeps four entries of a group in registers
and tests each further entry against all four (~0.2 ns a pair): 10.3 s at 10M against 38.4 s,
N^0.98 from 1M (docs/benchmarks.md, "Search to 10M"). Without numba the search runs the numpy
path in `chunkjoin.py`, with the same answer.

The loop is compiled on first use and cached beside this file (or in numba's user cache when
the package folder is read-only), so later processes load it in a fraction of a second.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.extending import intrinsic

# Rows of a group held in registers while the rest of the group streams past them.
BLOCK = 4


def _jit(fn: Callable[..., int]) -> Callable[..., int]:
    """numba's njit, releasing the GIL (the search runs partitions on threads), cached on disk;
    compiled again in each process where no cache folder is writable (numba then refuses to
    cache: a read-only install and no writable home), rather than not at all."""
    try:
        return njit(nogil=True, cache=True)(fn)
    except RuntimeError:
        return njit(nogil=True)(fn)


@intrinsic
def _popcount(typingctx, x):  # numba's intrinsic signature: the typing context, the arg types
    """One hardware popcount of a uint64 (LLVM's ctpop; numba has no popcount of its own)."""
    sig = types.uint64(types.uint64)

    def codegen(context, builder, signature, args):
        fn = builder.module.declare_intrinsic("llvm.ctpop", [ir.IntType(64)])
        return builder.call(fn, args)

    return sig, codegen


@njit(inline="always")  # numba's own inlining: a call passing arrays counts references
def _group_end(entries: np.ndarray, i: int, sh: np.uint64) -> int:
    """One past the last entry with entry i's key (entries are sorted)."""
    key = entries[i] >> sh
    j = i + 1
    while j < len(entries) and (entries[j] >> sh) == key:
        j += 1
    return j


@_jit
def one_word_pairs(entries: np.ndarray, shift: int, t: int, p: np.ndarray, r: np.ndarray,
                   d: np.ndarray) -> int:
    """Positions a < b of sorted entries `key << shift | rest` with equal keys and rests within t.

    Writes the first len(p) hits to p, r (positions) and d (distance) and returns how many
    there are; when that is more than len(p) the caller calls again with larger arrays. Equal
    keys XOR to zero, so the popcount of two entries' XOR is their rests' distance.
    """
    n = len(entries)
    cap = len(p)
    tt = np.uint64(t)
    sh = np.uint64(shift)
    m = 0
    i = 0
    while i < n:
        j = _group_end(entries, i, sh)
        a = i
        while a < j - 1:
            # four rows in registers against the rest of the group; hits are rare, so only
            # then are the four rows' pairs with the rest found one by one (the loops below
            # are written out: a jitted call passing arrays costs numba reference counting)
            block = min(BLOCK, j - a)
            hits = 0
            if block == BLOCK:
                x0, x1, x2, x3 = entries[a], entries[a + 1], entries[a + 2], entries[a + 3]
                for b in range(a + BLOCK, j):
                    e = entries[b]
                    hits += ((_popcount(x0 ^ e) <= tt) | (_popcount(x1 ^ e) <= tt)
                             | (_popcount(x2 ^ e) <= tt) | (_popcount(x3 ^ e) <= tt))
            for u in range(a, a + block):
                x = entries[u]
                for b in range(u + 1, j if hits or block < BLOCK else a + BLOCK):
                    c = _popcount(x ^ entries[b])
                    if c <= tt:
                        if m < cap:
                            p[m] = u
                            r[m] = b
                            d[m] = c
                        m += 1
            a += block
        i = j
    return m


@_jit
def row_pairs(entries: np.ndarray, shift: int, words: np.ndarray, t: int, p: np.ndarray,
              r: np.ndarray, d: np.ndarray) -> int:
    """As `one_word_pairs` for hashes of several words: an entry's low bits are its row of
    `words`, and the distance sums over the row's words."""
    n = len(entries)
    sh = np.uint64(shift)
    low = (np.uint64(1) << sh) - np.uint64(1)
    tt = np.uint64(t)
    m = 0
    i = 0
    while i < n:
        j = _group_end(entries, i, sh)
        for a in range(i, j - 1):
            ra = entries[a] & low
            for b in range(a + 1, j):
                rb = entries[b] & low
                c = np.uint64(0)
                for w in range(words.shape[1]):
                    c += _popcount(words[ra, w] ^ words[rb, w])
                if c <= tt:
                    if m < len(p):
                        p[m] = a
                        r[m] = b
                        d[m] = c
                    m += 1
        i = j
    return m


def warm_up() -> None:
    """Compile both loops (or load them from the cache) on a few entries: a numba that cannot
    compile here fails now, where the search can still choose numpy, not inside a worker."""
    entries = np.arange(8, dtype=np.uint64)
    p, r, d = np.empty(64, np.int64), np.empty(64, np.int64), np.empty(64, np.uint16)
    one_word_pairs(entries, 2, 8, p, r, d)
    row_pairs(entries, 2, np.zeros((8, 2), np.uint64), 8, p, r, d)
