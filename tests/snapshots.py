"""A workspace as comparable data: every manifest table and the bytes of every stored file; and
the folder the remote-source tests serve (over HTTP, from an S3 bucket) and compare with disk."""

from __future__ import annotations

import hashlib
import sqlite3
from pathlib import Path
from typing import Any

# columns that say when or in which run, not what: they differ between any two runs
WHEN = {"id", "imported_at", "created_at", "run_id"}


def snapshot(ws: Path, *, ignore: frozenset[str] = frozenset(), names: dict[str, str] | None = None
             ) -> dict[str, Any]:
    """Every manifest table but `runs`, without its when/which-run columns (and `ignore`), and
    the bytes of every stored or derived file. `names` rewrites text in the rows (a source read
    as a URL compared with the same files read from disk)."""
    db = sqlite3.connect(ws / ".curate" / "manifest.sqlite")
    tables = [t for (t,) in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'") if t != "runs"]
    state: dict[str, Any] = {}
    for table in tables:
        columns = [c[1] for c in db.execute(f"PRAGMA table_info({table})") if c[1] not in WHEN | ignore]
        rows = db.execute(f"SELECT {', '.join(columns)} FROM {table}")
        state[table] = sorted(_rename(repr(row), names or {}) for row in rows)
    db.close()
    state["files"] = {p.relative_to(ws).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
                      for p in sorted((ws / "images").rglob("*")) if p.is_file()}
    return state


def _rename(text: str, names: dict[str, str]) -> str:
    for old, new in names.items():
        text = text.replace(old, new)
    return text


def same_as_disk(ws_url: Path, ws_disk: Path, url: str, folder: Path) -> None:
    """The two workspaces hold the same images, tags, captions and decisions; origins differ
    only in the name of their source and its change stamp."""
    names = {url: str(folder), "'url'": "'folder'"}
    assert snapshot(ws_url, ignore=frozenset({"fingerprint"}), names=names) == \
        snapshot(ws_disk, ignore=frozenset({"fingerprint"}))


def remote_site(root: Path) -> Path:
    """A folder to serve as a remote source: every scraper layout (sidecars, metadata folders,
    img2dataset files and webdataset shards with their parquet tables), a Kohya dataset, a
    gallery-dl zip and broken files, under root/scrapers; no links or FIFOs (a server has none)."""
    from fixtures.scrape import build_bad, build_kohya, build_zip
    from fixtures.scrapers import build_scrapers

    scrapers = build_scrapers(root)
    build_kohya(scrapers)
    build_zip(scrapers)
    build_bad(scrapers)
    return scrapers.parent
