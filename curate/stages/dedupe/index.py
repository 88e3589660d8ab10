"""The dedupe search kept between runs, so a re-run searches only the hashes it has not seen.

The index (`.curate/dedupe-index.npz`, beside the manifest) holds every distinct hash searched
so far, in the order first seen, every pair of them within its threshold, and for each chunk
of a fixed layout the hashes sorted by chunk value. A run then needs:

* new x old: each new hash probes the sorted chunks with its chunk values, <= a_i bits flipped,
  where sum(a_i + 1) >= t + 1: a pair within t is within a_i on some chunk (pigeonhole), and
  there the flipped value equals the old hash's exactly. Old hashes are never flipped, so each
  pair is met once per chunk that finds it, and the work is the new hashes' probes only.
* new x new: the ordinary search (`search.search_unique`) over the new hashes.
* old x old: the stored pairs.

The result is the same pairs `search_unique` returns for the current hashes (tests compare the
two). The index is rebuilt when the hash settings change, when the threshold rises above the
one it was built for, when it holds more than twice the hashes in use, and when reading it
fails; it is written atomically (one file, `curate.atomic`), and never unpickled.
"""

from __future__ import annotations

import io
import json
import os
import zipfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from math import comb
from pathlib import Path
from typing import NamedTuple

import numpy as np

from curate.atomic import atomic_write_bytes
from curate.stages.dedupe.chunkjoin import extract, flip_masks, item_bits, popcount
from curate.stages.dedupe.search import Pairs, search_unique

INDEX_NAME = "dedupe-index.npz"
VERSION = 1
# Widest chunk: each chunk's offsets table has 2^width entries at load.
MAX_WIDTH = 22
# Probes (a table lookup and a compare) one new hash may cost before a full search is cheaper.
COST_PROBE = 3e-8
# Probes made at once: their arrays (~20 bytes a probe) stay in the processor's cache.
PROBES = 1 << 16
COST_FULL = 2e-6  # seconds per hash of a full search at t <= 8 near 1M (bench/search_scale.py)


@dataclass
class SearchIndex:
    key: str  # hash settings the hashes come from
    t: int  # threshold of the stored pairs
    words: np.ndarray  # (M, words) uint64, distinct
    pairs: Pairs  # row pairs i < j within t
    layout: tuple[tuple[int, int], ...]  # (start, width) of each probed chunk
    sorted_chunks: list[np.ndarray]  # per chunk: sorted `value << item_bits(M) | row`

    @classmethod
    def build(cls, key: str, t: int, words: np.ndarray, pairs: Pairs) -> SearchIndex:
        bits = 64 * words.shape[1]
        m = -(-bits // MAX_WIDTH)
        widths = [bits // m + (1 if k < bits % m else 0) for k in range(m)]
        starts = np.cumsum([0, *widths[:-1]]).tolist()
        layout = tuple(zip(starts, widths, strict=True))
        return cls(key, t, words, pairs, layout, [_sorted_chunk(words, s, w) for s, w in layout])

    def save(self, path: Path) -> None:
        arrays = {"words": self.words, "i": self.pairs.i, "j": self.pairs.j, "d": self.pairs.distance,
                  "meta": np.array(json.dumps({"version": VERSION, "key": self.key, "t": self.t,
                                               "layout": self.layout}))}
        arrays |= {f"chunk{k}": c for k, c in enumerate(self.sorted_chunks)}
        buffer = io.BytesIO()
        np.savez(buffer, **arrays)
        atomic_write_bytes(path, buffer.getvalue(), durable=False)

    @classmethod
    def load(cls, path: Path, key: str, t: int) -> SearchIndex | None:
        """The index at path if it was built for these hash settings and a threshold >= t."""
        try:
            with np.load(path, allow_pickle=False) as z:
                meta = json.loads(str(z["meta"]))
                if meta.get("version") != VERSION or meta.get("key") != key or meta.get("t", -1) < t:
                    return None
                layout = tuple((int(s), int(w)) for s, w in meta["layout"])
                chunks = [z[f"chunk{k}"] for k in range(len(layout))]
                return cls(key, int(meta["t"]), z["words"], Pairs(z["i"], z["j"], z["d"]), layout, chunks)
        except (OSError, ValueError, KeyError, TypeError, EOFError, zipfile.BadZipFile):
            return None  # missing, partial or from another version: rebuilt by the caller

    def query_cost(self, n_new: int, t: int) -> float:
        probes = sum(comb(w, k) for (_, w), a in zip(self.layout, _flips(self.layout, t), strict=True)
                     for k in range(a + 1))
        per_probe = len(self.words) / 2 ** min(w for _, w in self.layout)
        return n_new * probes * COST_PROBE * (1 + per_probe)

    def query(self, new: np.ndarray, t: int, workers: int | None = None) -> Pairs:
        """Pairs (new row, index row) within t: i indexes `new`, j the index's words."""
        jobs = [(c, a) for c, a in enumerate(_flips(self.layout, t)) if a >= 0]
        with ThreadPoolExecutor(workers or os.cpu_count() or 1) as pool:
            found = [p for part in pool.map(lambda job: self._query_chunk(new, t, *job), jobs) for p in part]
        i, j, d = (np.concatenate(col) for col in zip(*found, strict=True)) if found else _empty()
        code = np.unique(i * len(self.words) + j, return_index=True)[1]  # met on several chunks
        return Pairs(i[code], j[code], d[code])

    def _query_chunk(self, new: np.ndarray, t: int, k: int, a: int) -> list[tuple[np.ndarray, ...]]:
        (start, width), chunk = self.layout[k], self.sorted_chunks[k]
        ib = np.uint64(item_bits(len(self.words)))
        counts = np.bincount((chunk >> ib).astype(np.intp), minlength=1 << width)
        ends = np.cumsum(counts, dtype=np.int32)  # where each value's rows end
        small = counts.astype(np.uint8) if counts.max(initial=0) < 256 else counts.astype(np.int32)
        table = Table(small, ends, (chunk & np.uint64((1 << int(ib)) - 1)).astype(np.int64))
        step = max(64, PROBES // len(flip_masks(width, a)))  # a block of new hashes at a time
        return [_probe(new, lo, min(len(new), lo + step), start, width, a, table, self.words, t)
                for lo in range(0, len(new), step)]

    def add(self, new: np.ndarray, pairs: Pairs) -> None:
        """Append new distinct hashes and pairs (already in index row numbers)."""
        self.words = np.concatenate([self.words, new])
        self.pairs = _sorted(Pairs(*(np.concatenate(c) for c in zip(self.pairs, pairs, strict=True))))
        if item_bits(len(self.words)) != item_bits(len(self.words) - len(new)):
            self.sorted_chunks = [_sorted_chunk(self.words, s, w) for s, w in self.layout]
            return
        base = len(self.words) - len(new)  # same packing: merge the new entries in
        for k, (start, width) in enumerate(self.layout):
            packed = extract(new, start, width) << np.uint64(item_bits(len(self.words)))
            packed |= np.arange(base, len(self.words), dtype=np.uint64)
            packed.sort()
            chunk = self.sorted_chunks[k]
            self.sorted_chunks[k] = np.insert(chunk, np.searchsorted(chunk, packed), packed)


def _flips(layout: tuple[tuple[int, int], ...], t: int) -> list[int]:
    """Bits a_i flipped per chunk with sum(a_i + 1) >= t + 1 (-1: chunk not probed)."""
    m, units = len(layout), t + 1
    return [units // m - 1 + (1 if k < units % m else 0) for k in range(m)]


def _sorted_chunk(words: np.ndarray, start: int, width: int) -> np.ndarray:
    packed = extract(words, start, width) << np.uint64(item_bits(len(words)))
    packed |= np.arange(len(words), dtype=np.uint64)
    packed.sort()
    return packed


class Table(NamedTuple):
    """A chunk's old rows by value: how many have each value (uint8 where it fits: a table that
    stays in cache, so the many probes that find nothing cost one cached read), where each
    value's rows end, and the rows."""

    counts: np.ndarray  # (2^width,) uint8 or int32
    ends: np.ndarray  # (2^width,) int32: where the rows of each value end
    rows: np.ndarray  # int64, the rows sorted by value


def _probe(new: np.ndarray, lo: int, hi: int, start: int, width: int, a: int, table: Table,
           words: np.ndarray, t: int) -> tuple[np.ndarray, ...]:
    """Pairs (new row, old row, distance) within t among the old rows whose chunk value is a new
    hash's with <= a bits flipped."""
    block = new[lo:hi]
    flips = flip_masks(width, a)
    # flip-major over the block sorted by value: each flip's keys then run almost in order
    # through the table, instead of jumping at random
    values = extract(block, start, width).astype(np.intp)  # intp: indexes without a conversion
    order = np.argsort(values)
    keys = (flips.astype(np.intp)[:, None] ^ values[order][None, :]).ravel()
    count = table.counts[keys]
    hit = np.flatnonzero(count)  # most probes find nothing: only the others read the ends
    count = count[hit].astype(np.int32)
    first = table.ends[keys[hit]] - count
    i, j = order[hit % len(block)], table.rows[first]
    for more in range(1, int(count.max(initial=1))):  # a value held by several old rows
        again = np.flatnonzero(count > more)
        i = np.concatenate([i, order[hit[again] % len(block)]])
        j = np.concatenate([j, table.rows[first[again] + more]])
    if words.shape[1] == 1:  # 1-D gathers are several times faster than row gathers
        d = popcount(block[:, 0][i] ^ words[:, 0][j]).astype(np.uint16)
    else:
        d = popcount(block[i] ^ words[j]).sum(axis=1, dtype=np.uint16)
    near = d <= t
    return i[near] + lo, j[near], d[near]


def _sorted(p: Pairs) -> Pairs:
    order = np.lexsort((p.j, p.i))
    i, j, d = p.i[order], p.j[order], p.distance[order]
    return Pairs(i.astype(np.int64), j.astype(np.int64), d.astype(np.uint16))


def _empty() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    return np.empty(0, np.int64), np.empty(0, np.int64), np.empty(0, np.uint16)


def _row_ids(words: np.ndarray) -> np.ndarray:
    """One comparable value per row: the word itself, or a void view (equal rows, equal values)."""
    if words.shape[1] == 1:
        return words[:, 0]
    return np.ascontiguousarray(words).view(np.dtype((np.void, 8 * words.shape[1]))).ravel()


def indexed_search(path: Path, key: str, unique: np.ndarray, t: int, bits: int | None,
                   workers: int | None, save: bool = True) -> Pairs:
    """`search_unique(unique, t)`, answered from the index at path where it can be (see module doc);
    the index is brought up to date with `unique` and saved unless `save` is False."""
    index = SearchIndex.load(path, key, t)
    stale = index is not None and (index.words.shape[1] != unique.shape[1]
                                   or len(index.words) > 2 * len(unique) + 1024)
    if index is None or stale:  # stale: another hash length, or mostly hashes no longer in use
        index = None
    if index is None:
        found = search_unique(unique, t, bits, workers)
        if save:
            SearchIndex.build(key, t, unique, found).save(path)
        return found
    to_index = _find(_row_ids(index.words), _row_ids(unique))  # unique row -> index row, or -1
    present = to_index >= 0
    new_rows = np.flatnonzero(~present)
    if len(new_rows):
        new = unique[new_rows]
        if index.query_cost(len(new), index.t) > COST_FULL * len(unique):
            found = search_unique(unique, t, bits, workers)  # so many new hashes: search them all
            if save:
                SearchIndex.build(key, t, unique, found).save(path)
            return found
        old = index.query(new, index.t, workers)
        among = search_unique(new, index.t, bits, workers)
        base = len(index.words)
        added = Pairs(np.concatenate([old.j, among.i + base]), np.concatenate([old.i + base, among.j + base]),
                      np.concatenate([old.distance, among.distance]))
        index.add(new, added)
        to_index[new_rows] = base + np.arange(len(new_rows))
        if save:
            index.save(path)
    return _current(index, to_index, t)


def _find(ids: np.ndarray, wanted: np.ndarray) -> np.ndarray:
    """For each wanted value, its position in ids (distinct values), or -1."""
    out = np.full(len(wanted), -1, dtype=np.int64)
    if not len(ids) or not len(wanted):
        return out
    ordered = wanted.dtype.kind == "u" and bool((wanted[1:] > wanted[:-1]).all())
    order = None if ordered else np.argsort(wanted)  # a void view (several words) has no `>`
    ranked = wanted if order is None else wanted[order]
    at = np.minimum(np.searchsorted(ranked, ids), len(ranked) - 1)
    hit = ranked[at] == ids
    out[at[hit] if order is None else order[at[hit]]] = np.flatnonzero(hit)
    return out


def _current(index: SearchIndex, to_index: np.ndarray, t: int) -> Pairs:
    """The index's pairs within t between hashes in use, in the caller's row numbers."""
    back = np.full(len(index.words), -1, dtype=np.int64)
    back[to_index] = np.arange(len(to_index))
    p = index.pairs
    i, j = back[p.i], back[p.j]
    keep = (i >= 0) & (j >= 0) & (p.distance <= t)
    i, j, d = i[keep], j[keep], p.distance[keep]
    return _sorted(Pairs(np.minimum(i, j), np.maximum(i, j), d))
