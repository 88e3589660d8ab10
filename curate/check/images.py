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
from dataclasses import dataclass, field, replace
from functools import partial
from pathlib import Path

from PIL import Image

from curate.stages.dedupe.cache import FolderCache, Hash, read_hashes
from curate.stages.dedupe.config import DedupeConfig
from curate.stages.dedupe.group import NEAR, SAME_FILE, Group, find_groups
from curate.stages.dedupe.hashing import decode_error, hash_key, pool_map
from curate.stages.dedupe.scan import Item, Probe, probe_file

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
    return DedupeConfig(threshold=near_threshold, verify=False, keep="first", workers=workers)


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
        known = cache.files(stamps)
        cached = read_hashes(cache.db, (v[1] for v in known.values()), key, config.flip_invariant)
        todo = [p for p, (stamp, _) in stamps.items()
                if p not in known or known[p][0] != stamp or known[p][1] not in cached]
        probe = partial(probe_file, method=config.hash, hash_size=config.hash_size, decode=config.decode,
                        flip=config.flip_invariant)
        probes = dict(zip(todo, pool_map(probe, todo, config.workers or None), strict=True))
        _collect(facts, stamps, known, cached, probes)
        cache.save([(p, stamps[p][0], pr.sha256, pr.width, pr.height, pr.format)
                    for p, pr in probes.items() if pr.hash is not None],
                   key, [(pr.sha256, *pr.hash) for pr in probes.values() if pr.hash is not None])
    finally:
        if own:
            cache.close()
    facts.hashed = len(probes)
    return facts


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
    other: Path  # the image it duplicates (earlier in path order)
    exact: bool
    relation: str
    distance: int


def duplicates(paths: Sequence[Path], facts: Facts, config: DedupeConfig) -> list[Duplicate]:
    """Exact and near duplicates among `paths` (those that were hashed), each against the first
    image of its group in path order."""
    present = [p for p in paths if p in facts.hashes]
    items = [replace(facts.items[p], order=i) for i, p in enumerate(present)]
    groups: list[Group] = find_groups(items, [facts.hashes[p] for p in present], config)
    found = []
    for group in groups:
        keeper = present[group.keeper]
        for member in group.duplicates:
            relation = "an identical copy" if member.relation == SAME_FILE else "a same-pixels copy"
            found.append(Duplicate(present[member.index], keeper, member.relation != NEAR, relation,
                                   member.distance))
    return found
