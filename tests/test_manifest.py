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


def test_v12_drops_decisions_superseded_by_a_later_finished_run(tmp_path: Path) -> None:
    """Before 12 every run of a replacing stage added its decisions and only the latest finished
    run's counted; now a decision counts when its run has finished, so the rest must go."""
    path = tmp_path / "m.sqlite"
    m = Manifest(path)
    with m.transaction() as db:
        for run, (command, finished) in enumerate([("dedupe", "t"), ("dedupe", "t"), ("dedupe", None),
                                                   ("import", "t"), ("crop", "t")], 1):
            db.execute("INSERT INTO runs (id, command, params, started_at, finished_at) "
                       "VALUES (?, ?, '{}', 't', ?)", (run, command, finished))
        db.executemany("INSERT INTO decisions (image_sha256, subject, stage, verdict, reason, run_id, "
                       "created_at) VALUES (?, ?, ?, ?, 'r', ?, 't')",
                       [("a", "a.png", "dedupe", "kept", 1), ("b", "b.png", "dedupe", "duplicate", 1),
                        ("a", "a.png", "dedupe", "kept", 2), ("c", "c.png", "dedupe", "duplicate", 3),
                        ("a", "a.png", "import", "imported", 4), ("b", "b.png", "import", "imported", 4),
                        ("a", "a.png", "crop", "cropped", 5)])
        db.execute("PRAGMA user_version = 11")
    m.close()
    m = Manifest(path)
    left = {(r["stage"], r["subject"], r["run_id"]) for r in m.rows("SELECT * FROM decisions")}
    assert left == {("dedupe", "a.png", 2), ("dedupe", "c.png", 3), ("import", "a.png", 4),
                    ("import", "b.png", 4), ("crop", "a.png", 5)}  # the stopped run 3 stays
    assert [(r["stage"], r["subject"]) for r in m.decisions()] == [
        ("dedupe", "a.png"), ("import", "a.png"), ("import", "b.png"), ("crop", "a.png")]
    m.close()


def test_a_finished_replacing_run_keeps_only_its_own_decisions(tmp_path: Path) -> None:
    from curate.manifest.images import NewDecision

    m = Manifest(tmp_path / "m.sqlite")
    same, other = NewDecision("x", "x.png", "cropped", "r"), NewDecision("y", "y.png", "small", "r")
    first = m.commit_run("crop", {"size": 1}, {}, [], [same, other], replacing=True)
    stopped, _ = m.open_run("crop", {"size": 2})  # streams, then is stopped
    m.commit_part(stopped, "crop", [], [NewDecision("y", "y.png", "cropped", "r")])
    assert {r["subject"]: r["run_id"] for r in m.decisions(stage="crop")} == {"x.png": first, "y.png": first}
    last = m.commit_run("crop", {"size": 3}, {}, [], [same, NewDecision("y", "y.png", "cropped", "r")],
                        replacing=True)
    rows = {(r["subject"], r["verdict"], r["run_id"]) for r in m.rows("SELECT * FROM decisions")}
    # x's decision is the same: its row stays; y's changed; the stopped run's row counts never
    assert rows == {("x.png", "cropped", first), ("y.png", "cropped", last)}
    assert len(m.decisions(stage="crop")) == 2
    m.close()


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


def test_lock_sweeps_what_a_killed_writer_left(tmp_path: Path) -> None:
    """A process killed while it holds the workspace leaves temp files in images/ and beside the
    manifest (a killed dedupe-index write) and its busy mark; the next lock sweeps them. A holder
    that lets go, even on an error, leaves no mark, so later runs list no stored image."""
    import subprocess
    import sys

    from curate.workspace import WRITING

    root = tmp_path / "ws"
    Workspace.open(root, create=True).close()
    killed = subprocess.run([sys.executable, "-c", f"""
import os, signal, tempfile
from curate.atomic import TMP_PREFIX
from curate.workspace import Workspace
ws = Workspace.open({str(root)!r})
with ws.lock():
    (ws.images_dir / "ab").mkdir(parents=True)
    for folder in (ws.images_dir / "ab", ws.state_dir):
        os.write(tempfile.mkstemp(prefix=TMP_PREFIX, dir=folder)[0], b"half")
    os.kill(os.getpid(), signal.SIGKILL)
"""])
    assert killed.returncode == -9
    left = [p for p in root.rglob(".curate-tmp-*")]
    assert {p.parent.name for p in left} == {"ab", ".curate"} and (root / ".curate" / WRITING).exists()
    with Workspace.open(root) as ws:
        with ws.lock():
            assert not list(root.rglob(".curate-tmp-*"))
        assert not (ws.state_dir / WRITING).exists()
        with pytest.raises(RuntimeError), ws.lock():
            raise RuntimeError
        assert not (ws.state_dir / WRITING).exists()


def test_queries_over_long_lists_run_in_chunks(tmp_path: Path) -> None:
    """SQLite binds at most 32,766 parameters by default (999 before 3.32; this Python's build
    allows 250,000, so the test sets the old limit): a re-run's dropped derived files of 3,000
    images are deleted all the same, and the lookups by list return every row."""
    from curate.manifest.chunked import execute_in
    from curate.manifest.derived import drop_earlier_runs

    m = Manifest(tmp_path / "m.sqlite")
    m.db.setlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER, 999)
    n = 3_000
    shas = [f"{i:064x}" for i in range(n)]
    old = m.start_run("bg", {})
    with m.transaction() as db:
        db.executemany("INSERT INTO images VALUES (?, ?, 8, 8, 'RGB', 'PNG', 'PNG', 1, '[]', '')",
                       [(s, f"images/{s}.png") for s in shas])
        db.executemany("INSERT INTO derived (image_sha256, kind, parent_sha256, sha256, stored_path, "
                       "width, height, mode, format, info, run_id) VALUES (?, 'cutout', ?, ?, ?, 8, 8, "
                       "'RGBA', 'PNG', '{}', ?)", [(s, s, s[::-1], f"derived/{s}.png", old) for s in shas])
    assert len(execute_in(m.db, "SELECT sha256 FROM images WHERE sha256 IN ({marks})", shas)) == n
    assert [r.sha256 for r in m.image_rows_at(list(range(n, 0, -1)))] == shas  # import order
    new = m.start_run("bg", {})
    with m.transaction() as db:
        drop_earlier_runs(db, "bg", new)
    assert m.count("derived") == 0
    m.close()
