"""Image facts for `curate check`: size, format and perceptual hash of the images sd-scripts
will read, with `curate dedupe`'s plain-folder cache, so a re-check reads no unchanged image.

`scan_folder` walks a whole tree and does not follow links out of it; a dataset names its
images itself (and `curate layout --link symlink` points them into the workspace), so this
scans an explicit list with the same pieces: `probe_file` (sha256, header, hash in one read),
`FolderCache` (facts by path + size + mtime, hashes by content and hash space) and `pool_map`.
The hash space is dedupe's default (phash, 64 bits, draft decode), so the two commands share
their cache entries.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import numpy as np
from PIL import Image

from curate.manifest.caches import DigestStore
from curate.stages.dedupe.cache import FolderCache, Hash, cache_dir
from curate.stages.dedupe.config import DedupeConfig
from curate.stages.dedupe.hashing import decode_error, hash_key, pool_map
from curate.stages.dedupe.relation import pixel_digest
from curate.stages.dedupe.scan import Item, Probe, probe_file
from curate.stages.dedupe.search import pairs_within

ALPHA_MODES = frozenset({"RGBA", "LA", "PA", "RGBa", "La"})


@dataclass
class Facts:
    """What was learnt about each image path (absolute), and the items that can be compared."""

    items: dict[Path, Item] = field(default_factory=dict)
    hashes: dict[Path, Hash] = field(default_factory=dict)
    errors: dict[Path, str] = field(default_factory=dict)
    hashed: int = 0  # computed this run; the rest came from the cache


def dedupe_config(near_threshold: int, workers: int) -> DedupeConfig:
    # verify (feature matching) finds crops, at a cost a pre-commit hook should not pay
    return DedupeConfig(threshold=near_threshold, verify=False, workers=workers)


def scan_paths(paths: Sequence[Path], config: DedupeConfig, cache: FolderCache | None = None) -> Facts:
    """Size, format, sha256 and hash of each path, from the cache where the file is unchanged."""
    facts = Facts()
    stamps: dict[str, tuple[str, os.stat_result]] = {}
    for path in paths:
        try:
            st = os.stat(path)
        except OSError as exc:
            facts.errors[path] = f"cannot read ({exc.strerror})"
            continue
        stamps[str(path)] = (f"{st.st_size}:{st.st_mtime_ns}", st)
    own = cache is None
    cache = cache or FolderCache()
    try:
        key = hash_key(config.hash, config.hash_size, config.decode)
        # the cache is SQLite text: a non-UTF-8 file name is probed every time, never stored
        storable = {p: v for p, v in stamps.items() if _utf8(p)}
        known = cache.files(storable)
        cached = cache.hashes((v[1] for v in known.values()), key, config.flip_invariant)
        todo = [p for p, (stamp, _) in stamps.items()
                if p not in known or known[p][0] != stamp or known[p][1] not in cached]
        probe = partial(probe_file, method=config.hash, hash_size=config.hash_size, decode=config.decode,
                        flip=config.flip_invariant)
        probes = dict(zip(todo, pool_map(probe, todo, config.workers or None, config.hash), strict=True))
        _collect(facts, stamps, known, cached, probes)
        cache.save([(p, stamps[p][0], pr.sha256, pr.width, pr.height, pr.format)
                    for p, pr in probes.items() if pr.hash is not None and p in storable],
                   key, [(pr.sha256, *pr.hash) for pr in probes.values() if pr.hash is not None])
    finally:
        if own:
            cache.close()
    facts.hashed = len(probes)
    return facts


def _utf8(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _collect(facts: Facts, stamps: dict[str, tuple[str, os.stat_result]], known: dict, cached: dict,
             probes: dict[str, Probe]) -> None:
    for order, (name, (_stamp, st)) in enumerate(stamps.items()):
        path = Path(name)
        if name in probes:
            probe = probes[name]
            if probe.error is not None or probe.hash is None:
                facts.errors[path] = probe.error or "no hash"
                continue
            sha, width, height, fmt, value = (probe.sha256, probe.width, probe.height, probe.format,
                                              probe.hash)
        else:
            sha, width, height, fmt = known[name][1:]
            value = cached[sha]
        facts.items[path] = Item(name, path, sha, width, height, fmt, st.st_size, st.st_mtime, order)
        facts.hashes[path] = value


def read_headers(paths: Sequence[Path]) -> Facts:
    """Size and format only (no hashing): what the size rule needs when duplicates are off."""
    facts = Facts()
    for order, path in enumerate(paths):
        try:
            with Image.open(path) as image:
                width, height, fmt = *image.size, image.format or "?"
            st = os.stat(path)
        except Exception as exc:  # a file PIL cannot open is a finding, not a crash
            facts.errors[path] = f"not a readable image ({decode_error(exc)})"
            continue
        facts.items[path] = Item(str(path), path, "", width, height, fmt, st.st_size, st.st_mtime, order)
    return facts


def alpha_mode(path: Path, fmt: str) -> str | None:
    """The image's mode when it carries transparency (header only, nothing decoded)."""
    if fmt == "JPEG":  # JPEG has no alpha: skip the open for the common case
        return None
    try:
        with Image.open(path) as image:
            if image.mode in ALPHA_MODES:
                return image.mode
            if "transparency" in image.info:
                return f"{image.mode} with transparency"
    except Exception:  # unreadable files are reported by the scan
        return None
    return None


@dataclass(frozen=True)
class Duplicate:
    path: Path
    other: Path  # the earlier image it duplicates (path order)
    exact: bool
    relation: str
    distance: int


def duplicates(paths: Sequence[Path], facts: Facts, config: DedupeConfig) -> list[Duplicate]:
    """Each image (of those hashed) that repeats an earlier one in path order, against its
    nearest earlier image: a pair the user can judge.

    Not dedupe's groups: they are single-linkage, so the first image of a chain of look-alikes
    may be far from the last, and a linter must never show a pair beyond the threshold. The
    search is dedupe's (`pairs_within`, sub-quadratic); the first image of each set of
    repeats is never reported, every later one once.
    """
    present = [p for p in paths if p in facts.hashes]
    items = [facts.items[p] for p in present]
    found: list[Duplicate] = []
    first_of: dict[str, int] = {}
    nearest = _nearest_earlier(present, facts, config)
    digests = _DigestCache()
    try:
        for j, item in enumerate(items):
            if item.sha256 in first_of:
                first = present[first_of[item.sha256]]
                found.append(Duplicate(present[j], first, True, "an identical copy", 0))
                continue
            first_of[item.sha256] = j
            if j not in nearest:
                continue
            i, distance = nearest[j]
            same = distance == 0 and (item.width, item.height) == (items[i].width, items[i].height) and (
                digests.get(item) == digests.get(items[i]) is not None)
            found.append(Duplicate(present[j], present[i], same, "a same-pixels copy" if same else "near",
                                   distance))
    finally:
        digests.close()
    return found


def _nearest_earlier(present: list[Path], facts: Facts, config: DedupeConfig) -> dict[int, tuple[int, int]]:
    """image index -> (nearest earlier image within the threshold, distance); ties: earliest."""
    if len(present) < 2:
        return {}
    pairs = pairs_within([facts.hashes[p][0] for p in present], config.effective_threshold(),
                         bits=config.bits(), workers=config.workers or None)
    order = np.lexsort((pairs.i, pairs.distance, pairs.j))  # by j, then distance, then i
    out: dict[int, tuple[int, int]] = {}
    for i, j, d in zip(pairs.i[order].tolist(), pairs.j[order].tolist(), pairs.distance[order].tolist(),
                       strict=True):
        out.setdefault(j, (i, d))
    return out


class _DigestCache:
    """Pixel digests by content sha256, kept between runs (check-cache.sqlite beside dedupe's
    cache): telling a lossless re-encode from a look-alike decodes both images once, ever."""

    def __init__(self) -> None:
        self._store: DigestStore | None = None

    def get(self, item: Item) -> str | None:
        if self._store is None:
            self._store = DigestStore(cache_dir() / "check-cache.sqlite")
        known = self._store.get(item.sha256)
        if known is not None:
            return known or None
        digest = pixel_digest(item.path)
        self._store.put(item.sha256, digest)
        return digest

    def close(self) -> None:
        if self._store is not None:
            self._store.close()
