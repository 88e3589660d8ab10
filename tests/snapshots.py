"""A workspace as comparable data: every manifest table and the bytes of every stored file."""

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
