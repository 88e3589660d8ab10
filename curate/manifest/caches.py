"""The SQLite caches outside a workspace: perceptual hashes and file facts of plain folders
(`dedupe-cache.sqlite`, for `curate dedupe` and `curate check`), pixel digests
(`check-cache.sqlite`) and model captions (`caption-cache.sqlite`, for `curate caption`). Only
a cache: a damaged one is rebuilt rather than blocking the user.
The hash helpers are shared with the manifest's own `hashes` table.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
from collections.abc import Iterable
from pathlib import Path

from curate.manifest.chunked import execute_in

# Perceptual hashes for `curate dedupe`; plain-folder runs keep the same table in their cache.
HASHES_TABLE = """
CREATE TABLE IF NOT EXISTS hashes (
    image_sha256 TEXT NOT NULL,
    hash_key     TEXT NOT NULL,  -- e.g. phash-8-draft: only equal keys compare
    value        TEXT NOT NULL,  -- hex, as imagehash prints it
    mirrored     TEXT,           -- hash of the left-right mirror image, when it was asked for
    PRIMARY KEY (image_sha256, hash_key)
);
"""
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
# Pixel digests by content: `curate check`'s cache, and a workspace manifest's (migration 11).
DIGESTS_TABLE = "CREATE TABLE IF NOT EXISTS pixel_digests (sha256 TEXT PRIMARY KEY, digest TEXT);"
# What a caption model answered, by everything that decides the answer: a workspace keeps it in
# its manifest (migration 9), a plain folder in `caption-cache.sqlite` of the user cache folder.
CAPTION_CACHE_TABLE = """
CREATE TABLE IF NOT EXISTS caption_cache (
    key        TEXT PRIMARY KEY,  -- sha256 of image content, model, revision, prompt, settings
    text       TEXT NOT NULL,     -- the caption as received (one line); checks judge it each run
    source     TEXT NOT NULL,     -- vlm:<model>:<prompt label>
    created_at TEXT NOT NULL
);
"""

# Feature-matching scores of dedupe's candidate pairs (workspace manifest, migration 10), by the
# two images' content and the verification settings: an incremental run verifies new pairs only.
PAIR_SCORES_TABLE = """
CREATE TABLE IF NOT EXISTS pair_scores (
    a     TEXT NOT NULL,  -- sha256 of the first image's content
    b     TEXT NOT NULL,  -- of the second (order matters: only the second is tried mirrored)
    key   TEXT NOT NULL,  -- the verification settings
    score REAL NOT NULL,
    PRIMARY KEY (a, b, key)
);
"""

Hash = tuple[int, int | None]  # value, mirrored


# Wanted hashes are looked up one by one while they are fewer than the stored ones over this
# (measured at 100,000 stored: 10,000 lookups cost 0.45 s, a pass over the table 0.46 s).
LOOKUP_RATIO = 10


def read_hashes(db: sqlite3.Connection, shas: Iterable[str], key: str,
                need_mirrored: bool) -> dict[str, Hash]:
    """The cached hashes of these images in this hash space (those that are cached)."""
    wanted = set(shas)
    out: dict[str, Hash] = {}
    rows: Iterable[tuple[str, str, str | None]]
    stored = db.execute("SELECT MAX(rowid) FROM hashes").fetchone()[0] or 0  # about the row count
    if len(wanted) * LOOKUP_RATIO <= stored:  # a few (a re-run's new images): looked up by key
        rows = execute_in(db, "SELECT image_sha256, value, mirrored FROM hashes WHERE hash_key = ? AND "
                         "image_sha256 IN ({marks})", list(wanted), (key,))
    else:  # many: one pass over the table is faster than as many lookups
        rows = db.execute("SELECT image_sha256, value, mirrored FROM hashes WHERE hash_key = ?", (key,))
    for sha, value, mirrored in rows:
        if sha in wanted and (mirrored is not None or not need_mirrored):
            out[sha] = (int(value, 16), int(mirrored, 16) if mirrored is not None else None)
    return out


def write_hashes(db: sqlite3.Connection, key: str, rows: Iterable[tuple[str, int, int | None]]) -> None:
    db.executemany(
        "INSERT OR REPLACE INTO hashes (image_sha256, hash_key, value, mirrored) VALUES (?, ?, ?, ?)",
        [(sha, key, f"{v:x}", None if m is None else f"{m:x}") for sha, v, m in rows],
    )


def path_key(path: str) -> str:
    """An absolute path as SQLite text. Linux names are bytes: one that is not UTF-8 (Python
    holds it with surrogate escapes, which SQLite refuses) is keyed by its bytes in hex, under
    a prefix no absolute path has, so two names never share a key."""
    try:
        path.encode("utf-8")
        return path
    except UnicodeEncodeError:
        return "bytes:" + os.fsencode(path).hex()


def _open_cache(path: Path, schema: str) -> sqlite3.Connection:
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        db = sqlite3.connect(path, isolation_level=None, timeout=30)
        db.execute("PRAGMA journal_mode=WAL")
        # a cache is rebuilt from its files: a commit need not wait for the disk (WAL + NORMAL
        # survives a killed process, may lose the last commits on power loss). `curate caption`
        # commits each answer, and a full sync cost ~5 ms of every tiny-model caption (13%)
        db.execute("PRAGMA synchronous=NORMAL")
        db.executescript(schema)
        return db
    except sqlite3.DatabaseError:
        with contextlib.suppress(NameError):
            db.close()
        for suffix in ("", "-wal", "-shm"):
            Path(f"{path}{suffix}").unlink(missing_ok=True)
        db = sqlite3.connect(path, isolation_level=None, timeout=30)
        db.execute("PRAGMA synchronous=NORMAL")
        db.executescript(schema)
        return db


class FolderCacheDB:
    """File stamps -> sha256 and image facts, and hashes, for plain folders."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.db = _open_cache(path, HASHES_TABLE + FILES_TABLE)

    def close(self) -> None:
        self.db.close()

    def files(self, paths: Iterable[str]) -> dict[str, tuple[str, str, int, int, str]]:
        """path -> (stamp, sha256, width, height, format) for the known ones."""
        wanted = {path_key(p): p for p in paths}
        rows = self.db.execute("SELECT path, stamp, sha256, width, height, format FROM files")
        return {wanted[r[0]]: tuple(r[1:]) for r in rows if r[0] in wanted}  # type: ignore[misc]

    def hashes(self, shas: Iterable[str], key: str, need_mirrored: bool) -> dict[str, Hash]:
        return read_hashes(self.db, shas, key, need_mirrored)

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


def read_captions(db: sqlite3.Connection, keys: Iterable[str]) -> dict[str, str]:
    """key -> cached caption text, for the keys that are cached."""
    wanted = list(dict.fromkeys(keys))
    return dict(execute_in(db, "SELECT key, text FROM caption_cache WHERE key IN ({marks})", wanted))


def write_captions(db: sqlite3.Connection, rows: Iterable[tuple[str, str, str, str]]) -> None:
    """(key, text, source, created_at) rows."""
    db.executemany("INSERT OR REPLACE INTO caption_cache (key, text, source, created_at) VALUES (?, ?, ?, ?)",
                   list(rows))


class CaptionCacheDB:
    """Captions a model answered for plain-folder images, by cache key (see CAPTION_CACHE_TABLE)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.db = _open_cache(path, CAPTION_CACHE_TABLE)

    def get(self, keys: Iterable[str]) -> dict[str, str]:
        return read_captions(self.db, keys)

    def put(self, rows: Iterable[tuple[str, str, str, str]]) -> None:
        self.db.execute("BEGIN IMMEDIATE")
        try:
            write_captions(self.db, rows)
        except BaseException:
            self.db.execute("ROLLBACK")
            raise
        self.db.execute("COMMIT")

    def close(self) -> None:
        self.db.close()


class DigestStore:
    """Pixel digests by content sha256 ("" = the image could not be decoded)."""

    def __init__(self, path: Path) -> None:
        self.db = _open_cache(path, DIGESTS_TABLE)

    def get(self, sha256: str) -> str | None:
        """The stored digest, "" for a known undecodable image, None when not stored."""
        row = self.db.execute("SELECT digest FROM pixel_digests WHERE sha256 = ?", (sha256,)).fetchone()
        return None if row is None else str(row[0] or "")

    def put(self, sha256: str, digest: str | None) -> None:
        self.db.execute("INSERT OR REPLACE INTO pixel_digests VALUES (?, ?)", (sha256, digest or ""))

    def close(self) -> None:
        self.db.close()
