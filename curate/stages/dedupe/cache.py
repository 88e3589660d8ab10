"""Where perceptual hashes are kept between runs, so a re-run only hashes new files.

Hashes are keyed by the image's content sha256 and the hash space (`hashing.hash_key`: method,
size and decode mode), so hashes from a draft decode and a full decode are never mixed. A
workspace keeps them in its manifest (`hashes` table); a plain folder in the user's cache
folder (`dedupe-cache.sqlite`), which also remembers each file's sha256 by path, size and
mtime, so an unchanged file is not even read again.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
from collections.abc import Iterable
from pathlib import Path

from curate.manifest import HASHES_TABLE

FILES_TABLE = """
CREATE TABLE IF NOT EXISTS files (
    path    TEXT PRIMARY KEY,    -- absolute
    stamp   TEXT NOT NULL,       -- size:mtime_ns
    sha256  TEXT NOT NULL,
    width   INTEGER NOT NULL,
    height  INTEGER NOT NULL,
    format  TEXT NOT NULL
);
"""

Hash = tuple[int, int | None]  # value, mirrored


def read_hashes(
    db: sqlite3.Connection, shas: Iterable[str], key: str, need_mirrored: bool
) -> dict[str, Hash]:
    """The cached hashes of these images in this hash space (those that are cached)."""
    wanted = set(shas)
    out: dict[str, Hash] = {}
    for sha, value, mirrored in db.execute(
        "SELECT image_sha256, value, mirrored FROM hashes WHERE hash_key = ?", (key,)
    ):
        if sha in wanted and (mirrored is not None or not need_mirrored):
            out[sha] = (int(value, 16), int(mirrored, 16) if mirrored is not None else None)
    return out


def write_hashes(db: sqlite3.Connection, key: str, rows: Iterable[tuple[str, int, int | None]]) -> None:
    db.executemany(
        "INSERT OR REPLACE INTO hashes (image_sha256, hash_key, value, mirrored) VALUES (?, ?, ?, ?)",
        [(sha, key, f"{v:x}", None if m is None else f"{m:x}") for sha, v, m in rows],
    )


def cache_dir() -> Path:
    """$CURATE_CACHE_DIR, else the platform's user cache folder (~/.cache/curate on Linux)."""
    env = os.environ.get("CURATE_CACHE_DIR")
    if env:
        return Path(env)
    from platformdirs import user_cache_dir

    return Path(user_cache_dir("curate", appauthor=False))


def path_key(path: str) -> str:
    """An absolute path as SQLite text. Linux names are bytes: one that is not UTF-8 (Python
    holds it with surrogate escapes, which SQLite refuses) is keyed by its bytes in hex, under
    a prefix no absolute path has, so two names never share a key."""
    try:
        path.encode("utf-8")
        return path
    except UnicodeEncodeError:
        return "bytes:" + os.fsencode(path).hex()


class FolderCache:
    """The plain-folder cache: file stamps -> sha256 and image facts, and hashes."""

    def __init__(self, path: Path | None = None) -> None:
        self.path = path or cache_dir() / "dedupe-cache.sqlite"
        self.db = self._open()

    def _open(self) -> sqlite3.Connection:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            db = sqlite3.connect(self.path, isolation_level=None, timeout=30)
            db.execute("PRAGMA journal_mode=WAL")
            db.executescript(HASHES_TABLE + FILES_TABLE)
            return db
        except sqlite3.DatabaseError:
            # Only a cache: a damaged one is rebuilt rather than blocking the user.
            with contextlib.suppress(NameError):
                db.close()
            for suffix in ("", "-wal", "-shm"):
                Path(f"{self.path}{suffix}").unlink(missing_ok=True)
            db = sqlite3.connect(self.path, isolation_level=None, timeout=30)
            db.executescript(HASHES_TABLE + FILES_TABLE)
            return db

    def close(self) -> None:
        self.db.close()

    def files(self, paths: Iterable[str]) -> dict[str, tuple[str, str, int, int, str]]:
        """path -> (stamp, sha256, width, height, format) for the known ones."""
        wanted = {path_key(p): p for p in paths}
        rows = self.db.execute("SELECT path, stamp, sha256, width, height, format FROM files")
        return {wanted[r[0]]: tuple(r[1:]) for r in rows if r[0] in wanted}  # type: ignore[misc]

    def save(self, files: list[tuple[str, str, str, int, int, str]], key: str,
             hashes: list[tuple[str, int, int | None]]) -> None:
        files = [(path_key(path), *rest) for path, *rest in files]  # type: ignore[misc]
        self.db.execute("BEGIN IMMEDIATE")
        try:
            self.db.executemany("INSERT OR REPLACE INTO files VALUES (?, ?, ?, ?, ?, ?)", files)
            write_hashes(self.db, key, hashes)
        except BaseException:
            self.db.execute("ROLLBACK")
            raise
        self.db.execute("COMMIT")
