"""Where perceptual hashes are kept between runs, so a re-run only hashes new files.

Hashes are keyed by the image's content sha256 and the hash space (`hashing.hash_key`: method,
size and decode mode), so hashes from a draft decode and a full decode are never mixed. A
workspace keeps them in its manifest (`hashes` table); a plain folder in the user's cache
folder (`dedupe-cache.sqlite`), which also remembers each file's sha256 by path, size and
mtime, so an unchanged file is not even read again.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import NamedTuple

import numpy as np

from curate.manifest.caches import FolderCacheDB, Hash, path_key

__all__ = ["FolderCache", "Hash", "Packed", "cache_dir", "path_key"]


class Packed(NamedTuple):
    """Many hashes at once, packed as `search.pack_hashes` packs them (a workspace's snapshot
    keeps them so: a million Python tuples would cost more than the arrays)."""

    words: np.ndarray  # (N, W) uint64
    mirrored: np.ndarray | None  # (N, W) uint64: the left-right mirrors' hashes, when asked for


def cache_dir() -> Path:
    """$CURATE_CACHE_DIR, else the platform's user cache folder (~/.cache/curate on Linux)."""
    env = os.environ.get("CURATE_CACHE_DIR")
    if env:
        return Path(env)
    from platformdirs import user_cache_dir

    return Path(user_cache_dir("curate", appauthor=False))


class FolderCache(FolderCacheDB):
    """The plain-folder cache (its SQL: curate.manifest.caches), in the user's cache folder."""

    def __init__(self, path: Path | None = None) -> None:
        super().__init__(path or cache_dir() / "dedupe-cache.sqlite")
