"""What a workspace's last dedupe run hashed, kept so that the next run reads only new images.

Reading every image's manifest row, origins and hash from SQLite cost ~4.5 us an image on every
run (4.5 s of a 13 s re-run at 1M images, most of it, while the new images' part was the
rest). The manifest only ever adds image rows (an import inserts them or leaves them as they
are; none is changed or removed, and row ids grow in import order), and a hash is a function
of the image and the hash space, so the images up to some row and their hashes never change. The snapshot
(`.curate/dedupe-images.npz`, beside the manifest and the search index) holds them as arrays:
the row ids of the hashed images up to `last_rowid`, their packed hashes (and the mirrored
ones with `flip_invariant`), and the rows that could not be hashed (tried again each run).

It is trusted only while the manifest still has `count` images up to `last_rowid` and the rows
it sampled (PROBES of them, spread over 1..last_rowid) are still the same images; otherwise
(another workspace's manifest, an older copy restored, other hash settings, a file that cannot
be read) the run reads every row as before and writes a new one. It is written atomically and
never unpickled.
"""

from __future__ import annotations

import io
import json
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from curate.atomic import atomic_write_bytes

if TYPE_CHECKING:
    from curate.manifest import Manifest

SNAPSHOT_NAME = "dedupe-images.npz"
VERSION = 1
PROBES = 16  # rows whose images are compared with the manifest's before the snapshot is used


@dataclass
class Snapshot:
    key: str  # hash space (hashing.hash_key)
    flip: bool  # holds the mirrored hashes
    last_rowid: int  # the images up to this row are all here (hashed, or in `failed`)
    count: int  # how many images there are up to last_rowid
    probes: dict[int, str]  # row id -> its image's sha256, for PROBES rows up to last_rowid
    rowids: np.ndarray  # (N,) int64, ascending: the hashed images
    words: np.ndarray  # (N, W) uint64: their hashes, packed (search.pack_hashes)
    mirrored: np.ndarray  # (N, W) uint64 with flip, else (0, W)
    failed: np.ndarray  # (F,) int64: rows that could not be hashed

    @classmethod
    def load(cls, path: Path, key: str, flip: bool, manifest: Manifest) -> Snapshot | None:
        """The snapshot at path if it is for this hash space and still describes the manifest."""
        try:
            with np.load(path, allow_pickle=False) as z:
                meta = json.loads(str(z["meta"]))
                if meta.get("version") != VERSION or meta.get("key") != key or (flip and not meta["flip"]):
                    return None
                probes = {int(k): str(v) for k, v in meta["probes"].items()}
                found = cls(key, bool(meta["flip"]), int(meta["last_rowid"]), int(meta["count"]), probes,
                            z["rowids"], z["words"], z["mirrored"], z["failed"])
        except (OSError, ValueError, KeyError, TypeError, AttributeError, EOFError, zipfile.BadZipFile):
            return None  # missing, partial or from another version: every row is read instead
        if not found._consistent():
            return None
        if (manifest.image_count(found.last_rowid) != found.count
                or found.probes != _shas(manifest, list(found.probes))):
            return None  # another manifest than the one it was made from
        if not flip and found.flip:  # mirrored hashes not asked for: not kept either
            found.flip, found.mirrored = False, found.mirrored[:0]
        return found

    def _consistent(self) -> bool:
        """The arrays have the shapes and types a run writes (a file from elsewhere may not)."""
        n = len(self.rowids)
        return (self.rowids.dtype == np.int64 and self.rowids.ndim == 1 and self.failed.dtype == np.int64
                and self.failed.ndim == 1 and self.words.dtype == np.uint64 and self.words.ndim == 2
                and self.words.shape[0] == n and self.mirrored.dtype == np.uint64
                and self.mirrored.shape == (n if self.flip else 0, self.words.shape[1]))

    def sample(self, manifest: Manifest) -> None:
        """Note the images at PROBES rows up to last_rowid (the last one among them)."""
        rows = np.unique(np.linspace(1, self.last_rowid, PROBES).round().astype(np.int64))
        self.probes = _shas(manifest, rows.tolist() if self.last_rowid else [])

    def save(self, path: Path) -> None:
        meta = {"version": VERSION, "key": self.key, "flip": self.flip, "last_rowid": self.last_rowid,
                "count": self.count, "probes": self.probes}
        buffer = io.BytesIO()
        np.savez(buffer, meta=np.array(json.dumps(meta)), rowids=self.rowids, words=self.words,
                 mirrored=self.mirrored, failed=self.failed)
        atomic_write_bytes(path, buffer.getvalue(), durable=False)  # a cache: rebuilt when lost


def _shas(manifest: Manifest, rowids: list[int]) -> dict[int, str]:
    return {r.rowid: r.sha256 for r in manifest.image_rows_at(rowids)}
