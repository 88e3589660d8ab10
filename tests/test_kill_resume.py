"""A run killed with SIGKILL at any point, then re-run, ends exactly where an uninterrupted
run ends: same images, origins, tags, captions and decisions, and no temp files."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from curate.atomic import TMP_PREFIX
from fixtures.scrape import build_bulk


def state(ws: Path) -> dict[str, object]:
    conn = sqlite3.connect(ws / ".curate" / "manifest.sqlite")
    q = {
        "images": "SELECT sha256, stored_path, width, height, mode, format, source_format, "
                  "file_bytes, changes FROM images",
        "origins": "SELECT source_path, source_root, source_kind, fingerprint, image_sha256, "
                   "status, sidecars, metadata FROM origins",
        "tags": "SELECT * FROM tags",
        "captions": "SELECT * FROM captions",
        "decisions": "SELECT image_sha256, subject, stage, verdict, reason FROM decisions",
    }
    out: dict[str, object] = {k: sorted(conn.execute(sql).fetchall(), key=repr) for k, sql in q.items()}
    conn.close()
    out["files"] = sorted(str(p.relative_to(ws)) for p in (ws / "images").rglob("*") if p.is_file())
    return out


def curate_import(src: list[Path], ws: Path) -> subprocess.Popen[bytes]:
    cmd = [sys.executable, "-m", "curate", "import", *map(str, src), "--into", str(ws), "-q"]
    return subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def stored_count(ws: Path) -> int:
    images = ws / "images"
    return sum(1 for _ in images.rglob("*")) if images.exists() else 0


@pytest.fixture(scope="module")
def sources(scrape: Path, tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    bulk = build_bulk(tmp_path_factory.mktemp("bulk") / "bulk", 240, size=256)
    return [bulk, scrape]


def test_sigkill_then_rerun_matches_clean_run(sources: list[Path], tmp_path: Path) -> None:
    clean = tmp_path / "clean"
    assert curate_import(sources, clean).wait(timeout=300) == 0
    killed = tmp_path / "killed"
    kills = 0
    for target in (5, 60, 150):
        proc = curate_import(sources, killed)
        deadline = time.monotonic() + 60
        while stored_count(killed) < target and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.005)
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
            kills += 1
            print(f"killed at {stored_count(killed)} stored files")
        proc.wait()
    assert kills >= 1, "the import finished before it could be killed; the test proved nothing"
    assert curate_import(sources, killed).wait(timeout=300) == 0
    assert state(killed) == state(clean)
    assert not list((killed / "images").rglob(f"{TMP_PREFIX}*"))
    # and one more run finds nothing to do
    assert curate_import(sources, killed).wait(timeout=300) == 0
    assert state(killed) == state(clean)
