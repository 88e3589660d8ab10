"""What dedupe compares: the images of a plain folder or of a workspace, with their hashes.

A plain folder is walked like `curate import` walks it (same symlink rules, same idea of what
is an image). Each file is read once per change: its sha256, size and format are cached by
path + size + mtime, and its perceptual hash by content sha256 + hash space. A workspace
already knows each image's sha256 and size; only missing hashes are computed, from the
normalised copies in `images/`.
"""

from __future__ import annotations

import hashlib
import io
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple

from PIL import Image

from curate.executor import LOCAL, Executor
from curate.folder import walk_images
from curate.stages.dedupe.cache import FolderCache, Hash
from curate.stages.dedupe.config import DedupeConfig
from curate.stages.dedupe.hashing import decode_error, hash_file, hash_key, hash_opened, preload_modules
from curate.stages.ingest.sources import display, read_capped
from curate.workspace import Workspace

if TYPE_CHECKING:
    from curate.manifest.images import ImageRow

ProgressFn = Callable[[int, int], None]
MAX_FILE_BYTES = 256 << 20
COMMIT_EVERY_S = 0.5  # new workspace hashes are committed this often: a killed run keeps them


class Item(NamedTuple):
    """One image as dedupe sees it (a tuple: one is made per image on every run, and a frozen
    dataclass cost five times as much)."""

    shown: str  # how the user knows it: path relative to the folder, or first source path
    path: str  # the file that is hashed and shown in the report (a str: a Path each for 1M
    # images cost ~8 us apiece on every run, a fifth of an unchanged workspace re-run)
    sha256: str
    width: int
    height: int
    format: str
    file_bytes: int
    mtime: float
    order: int  # position in walk / import order: "first" keeps the lowest
    aliases: tuple[str, ...] = ()  # other names a keep.txt line may use

    @property
    def pixels(self) -> int:
        return self.width * self.height


class WorkspaceItems(Sequence[Item]):
    """A workspace's hashed images as Items, each made when first asked for: a run looks at the
    images in groups (and at all only for a keep list), and making every one up front was a
    quarter of an unchanged re-run at 100,000 images."""

    def __init__(self, root: str, rows: list[ImageRow], hashed: list[int],
                 aliases: dict[str, list[str]]) -> None:
        self.root, self.rows, self.hashed, self.aliases = root, rows, hashed, aliases
        self.made: dict[int, Item] = {}

    def __len__(self) -> int:
        return len(self.hashed)

    def __getitem__(self, k):  # type: ignore[no-untyped-def, override]
        # a made item first, with no other test: a run asks for each grouped image several
        # times (350,000 calls at 100,000 images with 70,000 duplicates)
        try:
            return self.made[k]
        except (KeyError, TypeError):  # not made yet, or a slice (unhashable before 3.12)
            pass
        if isinstance(k, slice):
            return [self[i] for i in range(*k.indices(len(self)))]
        k = range(len(self.hashed))[k]  # an IndexError past the end ends iteration
        item = self.made.get(k)
        if item is None:
            order = self.hashed[k]
            r = self.rows[order]
            names = self.aliases.get(r.sha256, ())
            item = self.made[k] = Item(names[0] if names else r.stored_path, self.root + r.stored_path,
                                       r.sha256, r.width, r.height, r.format, r.file_bytes,
                                       float(order), order, (r.sha256, r.stored_path, *names))
        return item


@dataclass
class Scan:
    items: Sequence[Item] = field(default_factory=list)
    hashes: list[Hash] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)
    ignored: list[tuple[str, str]] = field(default_factory=list)
    hashed: int = 0  # computed in this run (the rest came from the cache)


@dataclass(frozen=True)
class Probe:
    sha256: str = ""
    width: int = 0
    height: int = 0
    format: str = ""
    hash: Hash | None = None
    error: str | None = None


def probe_file(path: str, method: str, hash_size: int, decode: str, flip: bool) -> Probe:
    """Read a file once: its sha256, header facts and perceptual hash (or why it failed)."""
    try:
        data = read_capped(path, MAX_FILE_BYTES)
    except OSError as exc:
        return Probe(error=f"cannot read ({exc.strerror}): check the file and its permissions")
    if not data:
        return Probe(error="empty file (0 bytes): re-download it or delete it")
    if len(data) > MAX_FILE_BYTES:
        return Probe(error=f"larger than {MAX_FILE_BYTES >> 20} MiB: not compared")
    try:
        with Image.open(io.BytesIO(data)) as image:
            width, height, fmt = *image.size, image.format or "?"
            found = hash_opened(image, method, hash_size, decode, flip)
    except Exception as exc:  # a decoder failure is a property of the file
        return Probe(error=f"not a readable image ({decode_error(exc)}): re-download it or delete it")
    sha = hashlib.sha256(data).hexdigest()
    return Probe(sha, width, height, fmt, (found.value or 0, found.mirrored))


def scan_folder(root: Path, config: DedupeConfig, exclude: Sequence[Path] = (),
                cache: FolderCache | None = None, on_progress: ProgressFn | None = None,
                executor: Executor = LOCAL) -> Scan:
    """Every image under root (recursively), hashed, with cached facts reused."""
    listing = walk_images(root, exclude)
    scan = Scan(skipped=listing.skipped, ignored=listing.ignored)
    found = listing.relpaths
    cache = cache or FolderCache()
    key = hash_key(config.hash, config.hash_size, config.decode)
    # one string join per file: tens of thousands of pathlib joins cost a tenth of a second
    paths = {rel: os.path.join(root, rel) for rel in found}
    stats = _stat_all(paths, scan)
    known = cache.files(paths[rel] for rel in stats)
    cached = cache.hashes((v[1] for v in known.values()), key, config.flip_invariant)
    todo = [rel for rel, (stamp, _) in stats.items()
            if known.get(paths[rel], ("",))[0] != stamp or known[paths[rel]][1] not in cached]
    probes = dict(zip(todo, _probe_all([paths[r] for r in todo], config, on_progress, executor),
                      strict=True))
    new_files, new_hashes = [], []
    for order, (rel, (stamp, st)) in enumerate(stats.items()):
        absolute = paths[rel]
        if rel in probes:
            p = probes[rel]
            if p.error is not None or p.hash is None:
                scan.skipped.append((display(Path(absolute)), p.error or "no hash"))
                continue
            facts, value = (p.sha256, p.width, p.height, p.format), p.hash
            new_files.append((absolute, stamp, *facts))
            new_hashes.append((p.sha256, *value))
        else:
            facts, value = known[absolute][1:], cached[known[absolute][1]]
        sha, width, height, fmt = facts
        scan.items.append(Item(rel, absolute, sha, width, height, fmt, st.st_size, st.st_mtime,
                               order, (absolute, display(absolute))))
        scan.hashes.append(value)
    scan.hashed = len(probes)
    cache.save(new_files, key, new_hashes)
    return scan


def _stat_all(paths: dict[str, str], scan: Scan) -> dict[str, tuple[str, os.stat_result]]:
    out = {}
    for rel, path in paths.items():
        try:
            st = os.stat(path)
        except OSError as exc:
            scan.skipped.append((display(Path(path)), f"cannot read ({exc.strerror})"))
            continue
        out[rel] = (f"{st.st_size}:{st.st_mtime_ns}", st)
    return out


def _probe_all(paths: list[str], config: DedupeConfig, on_progress: ProgressFn | None,
               executor: Executor) -> list[Probe]:
    one = partial(probe_file, method=config.hash, hash_size=config.hash_size, decode=config.decode,
                  flip=config.flip_invariant)
    found = executor.map(one, paths, workers=config.workers or None, preload=preload_modules(config.hash))
    return _collect(found, len(paths), on_progress)


def _collect(results, total: int, on_progress: ProgressFn | None) -> list:  # type: ignore[no-untyped-def]
    out = []
    for done, value in enumerate(results, 1):
        out.append(value)
        if on_progress is not None and (done % 64 == 0 or done == total):
            on_progress(done, total)
    return out


def scan_workspace(ws: Workspace, config: DedupeConfig, *, save: bool = True,
                   on_progress: ProgressFn | None = None, executor: Executor = LOCAL) -> Scan:
    """Every image of the workspace with its hash; new hashes are stored in the manifest as they
    come (in short transactions: a killed run keeps them, and the next one hashes the rest)."""
    m = ws.manifest
    aliases = m.origin_aliases()
    rows = m.image_rows()
    key = hash_key(config.hash, config.hash_size, config.decode)
    cached = m.hashes((r.sha256 for r in rows), key, config.flip_invariant)
    missing = [r for r in rows if r.sha256 not in cached]
    one = partial(hash_file, method=config.hash, hash_size=config.hash_size, decode=config.decode,
                  flip_invariant=config.flip_invariant)
    paths = [str(ws.root / r.stored_path) for r in missing]
    computed = executor.map(one, paths, workers=config.workers or None, preload=preload_modules(config.hash))
    scan = Scan(hashed=len(missing))
    fresh: list[tuple[str, int, int | None]] = []
    last = time.monotonic()
    for done, (row, fh) in enumerate(zip(missing, computed, strict=True), 1):
        if fh.value is None:
            scan.skipped.append((aliases.get(row.sha256, [row.stored_path])[0], fh.error or "no hash"))
        else:
            cached[row.sha256] = (fh.value, fh.mirrored)
            fresh.append((row.sha256, fh.value, fh.mirrored))
        if save and fresh and time.monotonic() - last > COMMIT_EVERY_S:
            m.save_hashes(key, fresh)
            fresh, last = [], time.monotonic()
        if on_progress is not None and (done % 64 == 0 or done == len(missing)):
            on_progress(done, len(missing))
    if save and fresh:
        m.save_hashes(key, fresh)
    hashed = [order for order, r in enumerate(rows) if r.sha256 in cached]
    scan.hashes = [cached[rows[order].sha256] for order in hashed]
    # stored paths are relative and plain: joined by +
    scan.items = WorkspaceItems(os.path.join(str(ws.root), ""), rows, hashed, aliases)
    return scan

