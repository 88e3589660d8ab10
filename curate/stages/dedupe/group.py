"""Duplicate groups from hashes: exact copies, same pixels, near duplicates; and who stays.

Images with equal hashes are collapsed first, so a thousand copies of one blank image cost one
search node. Pairs within the threshold join a group (union-find, single linkage). With
`verify`, pairs within a looser candidate threshold are also looked at by feature matching
(`verify.py`), which catches crops and overlays that move a perceptual hash too far.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from curate.stages.dedupe.cache import Hash, Packed
from curate.stages.dedupe.clusters import UnionFind, component_labels, groups_from_labels
from curate.stages.dedupe.config import DedupeConfig
from curate.stages.dedupe.hashing import hash_key
from curate.stages.dedupe.index import indexed_search
from curate.stages.dedupe.keep import choose
from curate.stages.dedupe.relation import Digests, relation
from curate.stages.dedupe.scan import Item, prefetch
from curate.stages.dedupe.search import Pairs, collapse, pack_hashes, popcount, search_unique

# Candidate pairs verified per round; between rounds, pairs already joined are dropped.
VERIFY_BATCH = 1024


@dataclass(frozen=True)
class Member:
    index: int
    relation: str  # relation.SAME_FILE, SAME_PIXELS or NEAR (to the kept image)
    distance: int  # Hamming distance of the hashes to the kept image's


@dataclass(frozen=True)
class Group:
    keeper: int
    why: str  # why the keeper was chosen
    duplicates: tuple[Member, ...]
    also_kept: tuple[int, ...] = ()  # further members the keep list names: never duplicates

    @property
    def members(self) -> list[int]:
        return [self.keeper, *self.also_kept, *(m.index for m in self.duplicates)]


Confirm = Callable[[Sequence[Item], list[tuple[int, int]]], list[tuple[int, int]]]


def find_groups(items: Sequence[Item], hashes: Sequence[Hash] | Packed, config: DedupeConfig,
                keep: set[int] | None = None, confirm: Confirm | None = None,
                unverified: list[int] | None = None, index: Path | None = None,
                save_index: bool = True, digests: Digests | None = None) -> list[Group]:
    """Duplicate groups (two or more images), each with the member to keep.

    `unverified` receives, when the verification cap stopped short, the number of candidate
    pairs of groups still apart left in the band it reached, and the distance it searched to.
    `index`: where the search index lives (`index.py`): the threshold search then looks only at
    hashes it has not seen, with the same result; it is updated unless `save_index` is False.
    """
    n = len(items)
    if n < 2:
        return []
    bits = config.bits()
    words = _packed(hashes, config)
    unique, inverse = collapse(words)
    t, workers = config.effective_threshold(), config.workers or None
    key = f"{hash_key(config.hash, config.hash_size, config.decode)}/{bits}"

    def search(threshold: int) -> Pairs:  # through the index where there is one (index.py)
        if index is None:
            return search_unique(unique, threshold, bits, workers)
        return indexed_search(index, key, unique, threshold, bits, workers, save_index)

    pairs = search(t)
    i, j = [pairs.i], [pairs.j]
    if config.flip_invariant:  # each image is the same picture as its own mirror
        i.append(inverse[:n])
        j.append(inverse[n:])
    labels = component_labels(len(unique), np.concatenate(i), np.concatenate(j))
    if config.verify and confirm is not None:
        labels = _confirmed(items, unique, inverse, labels, config, confirm,
                            unverified if unverified is not None else [], search)
    labels = labels[inverse[:n]]
    digests = digests if digests is not None else Digests()
    found = groups_from_labels(labels, 2)
    prefetch(items, itertools.chain.from_iterable(found))
    return _make_groups(found, items, words, n, config, keep or set(), digests)


def _packed(hashes: Sequence[Hash] | Packed, config: DedupeConfig) -> np.ndarray:
    """The hashes as (N, W) uint64 rows, then with `flip_invariant` the mirrored ones' N rows."""
    if isinstance(hashes, Packed):
        words = hashes.words
        if config.flip_invariant:
            if hashes.mirrored is None:
                raise ValueError("flip_invariant needs the mirrored hashes")
            words = np.concatenate([words, hashes.mirrored])
        return words
    bits = config.bits()
    words = pack_hashes([h[0] for h in hashes], bits)
    if config.flip_invariant:
        words = np.concatenate([words, pack_hashes([h[1] or 0 for h in hashes], bits)])
    return words


def _confirmed(
    items: Sequence[Item], unique: np.ndarray, inverse: np.ndarray, labels: np.ndarray,
    config: DedupeConfig, confirm: Confirm, unverified: list[int], search: LevelSearch,
) -> np.ndarray:
    """Component labels after joining the candidate pairs (beyond the threshold, within the
    candidate one) that `confirm` accepts.

    Candidates go closest first, in batches, and a pair whose two sides are already joined is
    not looked at: grouping is single linkage, so that changes nothing but the work. In a set
    of many copies of one picture this skips almost every pair. They are searched a distance
    band at a time and only as far as the verification budget reaches: the whole candidate
    threshold (18 of 64 bits) took 370 s at 300k hashes and grows ~N^1.8, while the
    closest `verify_max_pairs` pairs usually lie within a few bits of the threshold. The bands
    go through the index, which then keeps pairs to the band reached: a re-run reads them back.
    """
    from curate.stages.dedupe.verify import candidate_threshold

    loose, low = candidate_threshold(config.hash, config.hash_size), config.effective_threshold()
    uf = UnionFind(len(unique))
    uf.parent = labels.tolist()  # component labels are their smallest member: a valid forest
    rep = _representatives(unique, inverse, len(items))
    budget = config.verify_max_pairs
    pending: list[tuple[int, int]] = []
    # Each round verifies one pair per pair of groups still apart; a pair that fails leaves the
    # next pair of the same two groups for a later round (dropping it split a group: a second
    # run over the kept images then joined them and moved one more).
    while budget > 0:
        if not pending:
            if low >= loose:
                break
            low, pending = _next_band(search, uf, low, loose)
            continue
        batch, rest = _still_apart(uf, pending[:VERIFY_BATCH])
        if len(batch) > budget:
            rest = batch[budget:] + rest
            batch = batch[:budget]
        pending = rest + pending[VERIFY_BATCH:]
        budget -= len(batch)
        ok = set(confirm(items, [(rep[a], rep[b]) for a, b in batch]))
        for a, b in batch:
            if (rep[a], rep[b]) in ok:
                uf.union(a, b)
    left = len(_still_apart(uf, pending)[0]) if pending else 0
    if left or (budget <= 0 and low < loose):
        unverified += [left, low]
    return uf.labels()


# Bits a candidate band spans. The cost of a search climbs steeply with its threshold (300k
# random hashes, measured: 0.3 s to 8 bits, 6.5 s to 12, 370 s and 13.9M pairs to 18), so the
# bands stop at the first one that fills the verification budget.
CANDIDATE_STEP = 2
LevelSearch = Callable[[int], Pairs]


def _next_band(search: LevelSearch, uf: UnionFind, low: int, loose: int
               ) -> tuple[int, list[tuple[int, int]]]:
    """The candidate pairs at distances (low, high] not yet in one group, closest first."""
    high = min(loose, low + CANDIDATE_STEP)
    found = search(high)
    label = uf.labels()  # in numpy: in a set of many near copies most pairs are joined already
    band = np.flatnonzero((found.distance > low) & (label[found.i] != label[found.j]))
    band = band[np.argsort(found.distance[band], kind="stable")]
    return high, list(zip(found.i[band].tolist(), found.j[band].tolist(), strict=True))


def _representatives(unique: np.ndarray, inverse: np.ndarray, n: int) -> list[int]:
    """For each unique hash, an item that has it (mirrored hashes map to their item)."""
    rep = np.zeros(len(unique), dtype=np.int64)
    rep[inverse] = np.arange(len(inverse)) % n
    return rep.tolist()


def _still_apart(uf: UnionFind, pairs: list[tuple[int, int]]
                 ) -> tuple[list[tuple[int, int]], list[tuple[int, int]]]:
    """Pairs whose sides are in different groups: one per pair of groups, and the others of
    those groups (in order, for a later round); pairs already joined are dropped."""
    seen, out, later = set(), [], []
    for a, b in pairs:
        ra, rb = uf.find(a), uf.find(b)
        if ra == rb:
            continue
        key = (min(ra, rb), max(ra, rb))
        (later if key in seen else out).append((a, b))
        seen.add(key)
    return out, later


def _make_groups(found: list[list[int]], items: Sequence[Item], words: np.ndarray, n: int,
                 config: DedupeConfig, keep: set[int], digests: Digests) -> list[Group]:
    """Each group with its keeper, and each other member's relation and distance to it (the
    distances in one numpy pass: one per member cost a fifth of an unchanged re-run)."""
    chosen = [choose(members, items, config.keep, keep) for members in found]
    flat = np.fromiter(itertools.chain.from_iterable(found), dtype=np.int64)
    kept = np.repeat(np.array([k for k, _ in chosen], dtype=np.int64), [len(g) for g in found])
    distance = _distances(words, flat, kept, n, config.flip_invariant).tolist()
    groups, start = [], 0
    for members, (keeper, why) in zip(found, chosen, strict=True):
        also = tuple(m for m in members if m in keep and m != keeper)
        dups = []
        for m, d in zip(members, distance[start:start + len(members)], strict=True):
            if m != keeper and m not in also:
                dups.append(Member(m, relation(items[m], items[keeper], d, digests), d))
        groups.append(Group(keeper, why, tuple(dups), also))
        start += len(members)
    return groups


def _distances(words: np.ndarray, a: np.ndarray, b: np.ndarray, n: int, flip: bool) -> np.ndarray:
    """Hamming distances of rows a to rows b; with `flip`, the least over either side mirrored
    (rows n.. hold the mirrored hashes)."""
    def between(x: np.ndarray, y: np.ndarray) -> np.ndarray:
        return popcount(words[x] ^ words[y]).sum(axis=1, dtype=np.int64)

    out = between(a, b)
    if flip:
        out = np.minimum(out, np.minimum(between(a + n, b), between(a, b + n)))
    return out
