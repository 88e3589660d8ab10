from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from curate.errors import CurateError
from curate.manifest import SCHEMA_VERSION, Manifest
from curate.workspace import Workspace


def test_new_manifest_is_at_current_version(tmp_path: Path) -> None:
    m = Manifest(tmp_path / "m.sqlite")
    assert m.db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    assert {r[0] for r in m.db.execute("SELECT name FROM sqlite_master WHERE type='table'")} >= {
        "images", "origins", "tags", "captions", "decisions", "runs"}
    m.close()
    Manifest(tmp_path / "m.sqlite").close()  # re-opening migrates nothing and keeps data


def test_newer_manifest_refused(tmp_path: Path) -> None:
    path = tmp_path / "m.sqlite"
    conn = sqlite3.connect(path)
    conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    conn.close()
    with pytest.raises(CurateError, match="newer than this curate understands"):
        Manifest(path)


def test_failed_transaction_leaves_nothing(tmp_path: Path) -> None:
    m = Manifest(tmp_path / "m.sqlite")
    with pytest.raises(RuntimeError), m.transaction() as db:
        db.execute("INSERT INTO runs (command, params, started_at) VALUES ('x', '{}', 'now')")
        raise RuntimeError
    assert m.count("runs") == 0


def test_workspace_lock_is_exclusive(tmp_path: Path) -> None:
    from curate.errors import WorkspaceBusy
    busy = pytest.raises(WorkspaceBusy, match="in use by another curate process")
    with Workspace.open(tmp_path / "ws", create=True) as a, Workspace.open(tmp_path / "ws") as b, \
            a.lock(), busy, b.lock():
        pass


def test_lock_sweeps_temp_files(tmp_path: Path) -> None:
    with Workspace.open(tmp_path / "ws", create=True) as ws:
        leftover = ws.images_dir / "ab" / ".curate-tmp-123"
        leftover.parent.mkdir(parents=True)
        leftover.write_bytes(b"half")
        index = ws.state_dir / ".curate-tmp-dedupe-index"  # a killed index write, beside the manifest
        index.write_bytes(b"half")
        with ws.lock():
            assert not leftover.exists() and not index.exists()
            assert (ws.state_dir / "lock").exists()
