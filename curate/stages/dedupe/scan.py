"""What dedupe compares: the images of a plain folder or of a workspace, with their hashes.

A plain folder is walked like `curate import` walks it (same symlink rules, same idea of what
is an image). Each file is read once per change: its sha256, size and format are cached by
path + size + mtime, and its perceptual hash by content sha256 + hash space. A workspace
already knows each image's sha256 and size; only missing hashes are computed, from the
normalised copies in `images/`, and only the images imported since the last run are read from
the manifest (the rest, with their hashes, come from its snapshot: snapshot.py).
"""

from __future__ import annotations

import hashlib
import io
import os
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple

import numpy as np
from PIL import Image

from curate.executor import LOCAL, Executor
from curate.folder import walk_images
from curate.stages.dedupe.cache import FolderCache, Hash, Packed
from curate.stages.dedupe.config import DedupeConfig
from curate.stages.dedupe.hashing import decode_error, hash_file, hash_key, hash_opened, preload_modules
from curate.stages.dedupe.search import pack_hashes
from curate.stages.dedupe.snapshot import SNAPSHOT_NAME, Snapshot
from curate.stages.ingest.sources import display, read_capped
from curate.workspace import Workspace

if TYPE_CHECKING:
    from curate.manifest import Manifest
    from curate.manifest.images import ImageRow

ProgressFn = Callable[[int, int], None]
MAX_FILE_BYTES = 256 << 20
COMMIT_EVERY_S = 0.5  # new workspace hashes are committed this often: a killed run keeps them
# WorkspaceItems looks rows up one by one up to this many or a quarter of the images, whichever
# is more; past that it reads whole tables (a lookup cost about two rows of a whole-table read,
# 8-10 us against 4-5 us, at 100,000 images)
MANY_ROWS = 4096


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
    quarter of an unchanged re-run at 100,000 images. Rows a run did not read (see snapshot.py)
    are read from the manifest when asked for; `prefetch` reads many at once."""

    def __init__(self, root: str, manifest: Manifest, rowids: np.ndarray, rows: dict[int, ImageRow],
                 aliases: dict[str, list[str]] | None = None) -> None:
        self.root, self.manifest, self.rowids, self.rows = root, manifest, rowids, rows
        self.aliases = aliases  # None: read per image as it is made
        self.made: dict[int, Item] = {}

    def __len__(self) -> int:
        return len(self.rowids)

    def __getitem__(self, k):  # type: ignore[no-untyped-def, override]
        # a made item first, with no other test: a run asks for each grouped image several
        # times (350,000 calls at 100,000 images with 70,000 duplicates)
        try:
            return self.made[k]
        except (KeyError, TypeError):  # not made yet, or a slice (unhashable before 3.12)
            pass
        if isinstance(k, slice):
            return [self[i] for i in range(*k.indices(len(self)))]
        k = range(len(self.rowids))[k]  # an IndexError past the end ends iteration
        if k not in self.made:
            self.prefetch([k])
        return self.made[k]

    def prefetch(self, indices: Iterable[int]) -> None:
        """Make the items at these indices, reading the rows and origins they need at once."""
        todo = [k for k in dict.fromkeys(indices) if k not in self.made]
        if not todo:
            return
        rowids = [int(self.rowids[k]) for k in todo]
        unread = [r for r in rowids if r not in self.rows]
        many = len(todo) > max(MANY_ROWS, len(self) // 4)
        found = self.manifest.image_rows() if many and unread else self.manifest.image_rows_at(unread)
        self.rows.update((r.rowid, r) for r in found)
        if self.aliases is None and many:
            self.aliases = self.manifest.origin_aliases()
        aliases = self.aliases
        if aliases is None:
            aliases = self.manifest.origin_aliases([self.rows[r].sha256 for r in rowids])
        for k, rowid in zip(todo, rowids, strict=True):
            r = self.rows[rowid]
            names = aliases.get(r.sha256, ())
            self.made[k] = Item(names[0] if names else r.stored_path, self.root + r.stored_path,
                                r.sha256, r.width, r.height, r.format, r.file_bytes,
                                float(rowid), rowid, (r.sha256, r.stored_path, *names))


def prefetch(items: Sequence[Item], indices: Iterable[int]) -> None:
    """Make these items at once where they are read from the manifest on demand (a workspace)."""
    if isinstance(items, WorkspaceItems):
        items.prefetch(indices)


@dataclass
class Scan:
    items: Sequence[Item] = field(default_factory=list)
    hashes: list[Hash] | Packed = field(default_factory=list)
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
    come (in short transactions: a killed run keeps them, and the next one hashes the rest).
    The images the last run saw come from its snapshot (snapshot.py): only later rows are read."""
    m, flip = ws.manifest, config.flip_invariant
    key = hash_key(config.hash, config.hash_size, config.decode)
    width = max(1, -(-config.bits() // 64))
    path = ws.state_dir / SNAPSHOT_NAME
    known = Snapshot.load(path, key, flip, m)
    if known is None:  # (its key holds the hash size, so its words are `width` wide)
        known = Snapshot(key, flip, 0, 0, {}, *_no_rows(width, flip), np.empty(0, np.int64))
    rows = m.image_rows_at(known.failed.tolist()) + m.image_rows(after=known.last_rowid)
    cached = m.hashes((r.sha256 for r in rows), key, flip)
    scan = Scan(hashed=sum(r.sha256 not in cached for r in rows))
    _hash_missing(ws, config, key, [r for r in rows if r.sha256 not in cached], cached, scan,
                  save, on_progress, executor)
    now = _taken(known, rows, cached, config.bits(), flip)
    if save and (rows or not path.is_file()):
        now.sample(m)
        now.save(path)
    scan.hashes = Packed(now.words, now.mirrored if flip else None)
    # stored paths are relative and plain: joined by +
    scan.items = WorkspaceItems(os.path.join(str(ws.root), ""), m, now.rowids, {r.rowid: r for r in rows})
    return scan


def _no_rows(width: int, flip: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    words = np.empty((0, width), np.uint64)
    return np.empty(0, np.int64), words, words


def _hash_missing(ws: Workspace, config: DedupeConfig, key: str, missing: list[ImageRow],
                  cached: dict[str, Hash], scan: Scan, save: bool, on_progress: ProgressFn | None,
                  executor: Executor) -> None:
    """Hash the images with no stored hash into `cached`, storing them as they come."""
    m = ws.manifest
    one = partial(hash_file, method=config.hash, hash_size=config.hash_size, decode=config.decode,
                  flip_invariant=config.flip_invariant)
    paths = [str(ws.root / r.stored_path) for r in missing]
    computed = executor.map(one, paths, workers=config.workers or None, preload=preload_modules(config.hash))
    fresh: list[tuple[str, int, int | None]] = []
    failed: list[tuple[ImageRow, str]] = []
    last = time.monotonic()
    for done, (row, fh) in enumerate(zip(missing, computed, strict=True), 1):
        if fh.value is None:
            failed.append((row, fh.error or "no hash"))
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
    names = m.origin_aliases([row.sha256 for row, _ in failed]) if failed else {}
    scan.skipped += [(names.get(row.sha256, [row.stored_path])[0], why) for row, why in failed]


def _taken(known: Snapshot, rows: list[ImageRow], cached: dict[str, Hash], bits: int,
           flip: bool) -> Snapshot:
    """The snapshot with this run's rows added: the hashed ones in import order among the
    known ones, the others as failed."""
    got = [r for r in rows if r.sha256 in cached]
    rowids = np.concatenate([known.rowids, np.array([r.rowid for r in got], dtype=np.int64)])
    words = np.concatenate([known.words, pack_hashes([cached[r.sha256][0] for r in got], bits)])
    mirrored = known.mirrored
    if flip:
        mirrored = np.concatenate([mirrored, pack_hashes([cached[r.sha256][1] or 0 for r in got], bits)])
    order = np.argsort(rowids, kind="stable")  # rows hashed now that failed before go among the rest
    failed = np.array([r.rowid for r in rows if r.sha256 not in cached], dtype=np.int64)
    last = max(known.last_rowid, rows[-1].rowid if rows else 0)
    return Snapshot(known.key, flip, last, known.count + sum(r.rowid > known.last_rowid for r in rows),
                    known.probes, rowids[order], words[order], mirrored[order] if flip else mirrored, failed)
