"""`np.searchsorted` on a large sorted uint64 array, in a couple of memory reads a query.

A binary search over 10M values (80 MB, past the processor's caches) is ~23 dependent reads,
most of them misses: ~3 us a query. The search looks rows up this way for every candidate that
passes its first test, and those grow with N^2, so at 10M hashes the lookups alone took a third
of the time (profiled: `searchsorted` 0.23 s of 0.59 s for 1/256 of a chunk). A table of where
each top-bits bucket starts (~8 values a bucket) turns a query into a table read and a short
scan of neighbouring values, done for all queries at once, one scan step per numpy call.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

AVERAGE_BUCKET = 8  # values per bucket: the scan's length against the table's size


class SortedLookup(NamedTuple):
    values: np.ndarray  # uint64, ascending
    shift: np.uint64  # a value's bucket is value >> shift
    bounds: np.ndarray  # int64, where each bucket starts (one extra at the end)


def sorted_lookup(values: np.ndarray) -> SortedLookup:
    """The bucket table of ascending `values` (buckets by top bits, ~8 values each)."""
    bits = max(1, (len(values) // AVERAGE_BUCKET).bit_length())
    shift = np.uint64(64 - bits)
    bounds = np.searchsorted(values >> shift, np.arange((1 << bits) + 1, dtype=np.uint64))
    return SortedLookup(values, shift, bounds.astype(np.int64))


def left(table: SortedLookup, queries: np.ndarray) -> np.ndarray:
    """`np.searchsorted(table.values, queries)` (side="left")."""
    return _search(table, queries, right=False)


def right(table: SortedLookup, queries: np.ndarray) -> np.ndarray:
    """`np.searchsorted(table.values, queries, side="right")`."""
    return _search(table, queries, right=True)


def _search(table: SortedLookup, queries: np.ndarray, *, right: bool) -> np.ndarray:
    """Every value of earlier buckets is below a query and of later ones above it, so the
    answer is the bucket's start plus the bucket's values before the query."""
    queries = np.asarray(queries, dtype=np.uint64)
    bucket = (queries >> table.shift).astype(np.int64)
    start, end = table.bounds[bucket], table.bounds[bucket + 1]
    out = start.copy()
    last = len(table.values) - 1
    live = np.flatnonzero(end > start)  # queries whose answer may lie past their bucket's start
    for step in range(int((end - start).max(initial=0))):
        pos = start[live] + step
        seen = table.values[np.minimum(pos, last)]
        before = (pos < end[live]) & ((seen <= queries[live]) if right else (seen < queries[live]))
        out[live[before]] += 1
        live = live[before]  # sorted: once a value is not before the query, none after it is
        if not len(live):
            break
    return out
