"""Hostile folders for the walkers of user files: FIFOs, sockets, symlinked or huge or deeply
nested sidecars, undecodable names, one source named two ways (issue 14)."""

from __future__ import annotations

import json
import os
import socket
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
import skimage.data
from PIL import Image

from curate.pipeline.state import view_digest
from curate.stages.ingest import ImportConfig, import_sources
from curate.workspace import Workspace

ROOT = Path(__file__).resolve().parent.parent
PHOTOS = ("astronaut", "coffee", "chelsea", "rocket", "camera", "cat")
# A guard against hanging, not a timing: the fixed code takes seconds, the old one blocked
# forever (a FIFO) or ran for minutes (quadratic tags).
GUARD_S = 120


def photo(path: Path | bytes, index: int = 0) -> None:
    array = getattr(skimage.data, PHOTOS[index % len(PHOTOS)])()
    Image.fromarray(array).convert("RGB").resize((64, 64)).save(path, format="JPEG")


def curate(*args: str | Path, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    """The CLI in a subprocess, killed after GUARD_S: a hang fails the test instead of the run."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1"}
    try:
        return subprocess.run([sys.executable, "-m", "curate", *map(str, args)], cwd=cwd, env=env,
                              capture_output=True, text=True, timeout=GUARD_S)
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"curate {' '.join(map(str, args))} still running after {GUARD_S} s: {exc}")


def rows(ws: Path, sql: str, *args: object) -> list[tuple]:
    with sqlite3.connect(ws / ".curate" / "manifest.sqlite") as db:
        return db.execute(sql, args).fetchall()


@pytest.fixture
def specials(tmp_path: Path) -> Path:
    """a.jpg with a FIFO as its tag file, a FIFO and a socket named as images, a link to the FIFO."""
    src = tmp_path / "src"
    src.mkdir()
    photo(src / "a.jpg", 0)
    photo(src / "b.jpg", 1)
    os.mkfifo(src / "pipe.jpg")
    os.mkfifo(src / "a.txt")
    os.symlink("pipe.jpg", src / "link.jpg")
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(str(src / "sock.png"))
    yield src
    sock.close()


def test_fifo_and_socket_skipped_without_opening(specials: Path, tmp_path: Path) -> None:
    done = curate("import", specials, "--into", tmp_path / "ws", "--json")
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["counts"]["imported"] == 2
    skipped = {Path(s["file"]).name: s["reason"] for s in result["skipped"]}
    assert set(skipped) == {"pipe.jpg", "link.jpg", "sock.png"}
    assert "named pipe (FIFO)" in skipped["pipe.jpg"] and "named pipe" in skipped["link.jpg"]
    assert "socket" in skipped["sock.png"]
    warnings = {Path(w["file"]).name: w["reason"] for w in result["warnings"]}
    assert "named pipe (FIFO)" in warnings["a.txt"]


def test_fifo_in_dedupe_folder_and_run(specials: Path, tmp_path: Path) -> None:
    done = curate("dedupe", specials, "--json")
    assert done.returncode == 0, done.stderr
    skipped = {Path(s["file"]).name for s in json.loads(done.stdout)["skipped"]}
    assert {"pipe.jpg", "sock.png", "link.jpg"} <= skipped
    ws = tmp_path / "ws"
    done = curate("run", ws, "--set", f'run.sources=["{specials}"]', "--set", 'run.stages=["import"]')
    assert done.returncode == 0, done.stderr
    assert "2 new" in done.stdout


def test_run_change_detection_takes_undecodable_names(tmp_path: Path) -> None:
    """`curate run` keys stages on the dataset folder's names: bytes that are not UTF-8 too."""
    with Workspace.open(tmp_path / "ws", create=True) as ws:
        dataset = ws.root / "dataset"
        dataset.mkdir()
        photo(os.path.join(os.fsencode(dataset), b"bad\xffname.jpg"))
        files = {"folder:dataset": dataset}
        first = view_digest(ws, ["folder:dataset"], files)
        os.rename(os.path.join(os.fsencode(dataset), b"bad\xffname.jpg"),
                  os.path.join(os.fsencode(dataset), b"bad\xfename.jpg"))
        assert view_digest(ws, ["folder:dataset"], files) != first


def test_sidecar_symlinks_obey_the_source_rule(tmp_path: Path) -> None:
    src, outside = tmp_path / "src", tmp_path / "outside"
    src.mkdir()
    outside.mkdir()
    (outside / "passwd").write_text("root:x:0:0:root:/root:/bin/bash\nsecret_line\n")
    (outside / "meta.json").write_text(json.dumps({"tags": ["leaked_tag"]}))
    (src / "inside.txt").write_text("kept_tag\nother_tag\n")
    for i, name in enumerate(("p", "q", "r", "s")):
        photo(src / f"{name}.jpg", i)
    os.symlink(outside / "passwd", src / "p.txt")
    os.symlink(outside / "meta.json", src / "q.jpg.json")
    os.symlink(tmp_path / "missing.txt", src / "r.txt")
    os.symlink("inside.txt", src / "s.txt")  # inside the source: read
    result = import_sources(tmp_path / "ws", [src], ImportConfig(workers=1))
    assert result.counts["imported"] == 4 and not result.skipped, result.skipped
    tags = {t for (t,) in rows(tmp_path / "ws", "SELECT tag FROM tags")}
    assert tags == {"kept tag", "other tag"}
    warnings = {Path(f).name: r for f, r in result.warnings}
    assert "outside the source folder: not followed" in warnings["p.txt"]
    assert "outside the source folder: not followed" in warnings["q.jpg.json"]
    assert "broken symlink" in warnings["r.txt"]
    assert set(warnings) == {"p.txt", "q.jpg.json", "r.txt"}


def test_single_image_source_refuses_its_symlinked_sidecar(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    photo(src / "p.jpg")
    (tmp_path / "secret").write_text("secret_line\n")
    os.symlink(tmp_path / "secret", src / "p.txt")
    result = import_sources(tmp_path / "ws", [src / "p.jpg"], ImportConfig(workers=1))
    assert result.counts["imported"] == 1
    assert rows(tmp_path / "ws", "SELECT tag FROM tags") == []
    assert [Path(f).name for f, _ in result.warnings] == ["p.txt"]


def test_any_sidecar_parse_failure_is_that_sidecars_reason(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    photo(src / "d.jpg", 0)
    (src / "d.json").write_text("[" * 5000 + "]" * 5000)  # RecursionError in json.loads
    (src / "d.jpg.txt").write_text("good_tag\n")
    photo(src / "e.jpg", 1)
    (src / "e.txt").write_bytes(b"\xff\xfe" + "odd".encode("utf-16-le") + b"x")  # odd UTF-16
    result = import_sources(tmp_path / "ws", [src], ImportConfig(workers=1))
    assert result.counts["imported"] == 2 and not result.skipped
    warnings = {Path(f).name: r for f, r in result.warnings}
    assert "RecursionError" in warnings["d.json"] and "\n" not in warnings["d.json"]
    assert "UnicodeDecodeError" in warnings["e.txt"]
    assert {t for (t,) in rows(tmp_path / "ws", "SELECT tag FROM tags")} == {"good tag"}


def test_sidecar_over_the_limit_is_not_read(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    photo(src / "a.jpg")
    (src / "a.txt").write_text("\n".join(f"tag{i:07d}" for i in range(120_000)))  # 1.3 MB
    result = import_sources(tmp_path / "ws", [src], ImportConfig(workers=1))
    assert result.counts["imported"] == 1
    [(subject, reason)] = result.warnings
    assert subject.endswith("a.txt") and "1024 KiB limit" in reason and "max_sidecar_kb" in reason
    assert rows(tmp_path / "ws", "SELECT COUNT(*) FROM tags") == [(0,)]
    # raised, it is read; the 120,000 tags are checked for duplicates in linear time
    (src / "a.txt").write_text("\n".join(f"tag{i:07d}" for i in range(120_000)) + "\ntag0000000\n")
    result = import_sources(tmp_path / "ws", [src], ImportConfig(workers=1, max_sidecar_kb=4096))
    assert not result.warnings
    assert rows(tmp_path / "ws", "SELECT COUNT(*) FROM tags") == [(120_000,)]


def test_many_tags_import_in_linear_time(tmp_path: Path) -> None:
    """200,000 tags in one sidecar: the old list check did 2e10 comparisons (minutes)."""
    src = tmp_path / "src"
    src.mkdir()
    photo(src / "a.jpg")
    (src / "a.txt").write_text("\n".join(f"t{i}" for i in range(200_000)))
    done = curate("import", src, "--into", tmp_path / "ws", "--max-sidecar-kb", "4096", "-q")
    assert done.returncode == 0, done.stderr
    assert rows(tmp_path / "ws", "SELECT COUNT(*) FROM tags") == [(200_000,)]


def undecodable(folder: Path, name: bytes) -> Path:
    return folder / os.fsdecode(name)  # Python holds the bytes as surrogate escapes


@pytest.fixture
def bad_names(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """a.jpg, a copy under a name that is not UTF-8 (with its tags), one with an escape code."""
    monkeypatch.setenv("CURATE_CACHE_DIR", str(tmp_path / "cache"))
    src = tmp_path / "src"
    src.mkdir()
    photo(src / "a.jpg", 0)
    photo(src / "c.jpg", 1)
    photo(undecodable(src, b"d\xfe.jpg"), 2)
    data = (src / "a.jpg").read_bytes()
    undecodable(src, b"bad\xffname.jpg").write_bytes(data)
    undecodable(src, b"bad\xffname.txt").write_text("tag1, tag2")
    undecodable(src, b"zz\x1b[31mred.jpg").write_bytes(data)
    return src


def test_dedupe_folder_with_undecodable_names(bad_names: Path, tmp_path: Path) -> None:
    done = curate("dedupe", bad_names, "--keep", "first")
    assert done.returncode == 0, done.stderr
    done = curate("dedupe", bad_names, "--json", "--report", tmp_path / "dedupe.html")
    assert done.returncode == 0, done.stderr
    [group] = json.loads(done.stdout)["groups"]
    assert {d["file"] for d in group["duplicates"]} == {"bad\udcffname.jpg", "zz\x1b[31mred.jpg"}
    page = (tmp_path / "dedupe.html").read_text(encoding="utf-8")
    assert "bad\\xffname.jpg" in page and "\x1b" not in page
    before = sorted(os.listdir(os.fsencode(bad_names)))
    done = curate("dedupe", bad_names, "--move-to", tmp_path / "moved")
    assert done.returncode == 0, done.stderr
    assert sorted(os.listdir(os.fsencode(bad_names))) == [b"a.jpg", b"c.jpg", b"d\xfe.jpg"]
    done = curate("dedupe", "--undo", tmp_path / "moved" / "dedupe.json")
    assert done.returncode == 0, done.stderr
    assert sorted(os.listdir(os.fsencode(bad_names))) == before


def test_import_and_run_with_undecodable_names(bad_names: Path, tmp_path: Path) -> None:
    done = curate("import", bad_names, "--into", tmp_path / "ws", "--json")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["counts"]["imported"] == 3
    assert {"tag1", "tag2"} <= {t for (t,) in rows(tmp_path / "ws", "SELECT tag FROM tags")}
    paths = {p for (p,) in rows(tmp_path / "ws", "SELECT source_path FROM origins")}
    assert str(bad_names / "bad\\xffname.jpg") in paths
    run = tmp_path / "run"
    done = curate("run", run, "--set", f'run.sources=["{bad_names}"]',
                  "--set", 'run.stages=["import", "dedupe", "layout", "check"]')
    assert done.returncode == 0, done.stdout + done.stderr
    assert len(list((run / "dataset").rglob("*.jpg"))) == 3


@pytest.fixture
def raw(tmp_path: Path) -> Path:
    src = tmp_path / "raw"
    src.mkdir()
    for i in range(3):
        photo(src / f"{i}.jpg", i)
    os.symlink(tmp_path / "missing.jpg", src / "gone.jpg")  # one skipped file
    return src


def test_one_source_one_identity(raw: Path, tmp_path: Path) -> None:
    """`../raw` from curate run and `./raw` from the cwd are one source, counted once."""
    ws = tmp_path / "ws"
    done = curate("run", ws, "--set", 'run.sources=["../raw"]', "--set", 'run.stages=["import"]')
    assert done.returncode == 0, done.stderr
    done = curate("import", "./raw", "--into", "ws", "--json", cwd=tmp_path)
    result = json.loads(done.stdout)
    assert result["nothing_new"] and result["counts"]["unchanged"] == 4, result
    assert rows(ws, "SELECT COUNT(*) FROM origins") == [(4,)]
    assert rows(ws, "SELECT COUNT(*) FROM decisions WHERE verdict = 'skipped'") == [(1,)]


def test_workspace_recorded_under_old_forms_is_migrated(raw: Path, tmp_path: Path) -> None:
    """Older imports recorded sources as typed: `raw/...` (from the cwd) and `ws/../raw/...`."""
    ws = tmp_path / "ws"
    import_sources(ws, [raw], ImportConfig(workers=1))
    with sqlite3.connect(ws / ".curate" / "manifest.sqlite") as db:
        for (path,) in db.execute("SELECT source_path FROM origins").fetchall():
            db.execute("UPDATE origins SET source_path = ?, source_root = 'raw' WHERE source_path = ?",
                       ("raw" + path[len(str(raw)):], path))
            db.execute("UPDATE decisions SET subject = ? WHERE subject = ?",
                       ("raw" + path[len(str(raw)):], path))
            twice = f"{ws}/../raw{path[len(str(raw)):]}"  # the same files, recorded by curate run
            db.execute("INSERT INTO origins (source_path, source_root, source_kind, fingerprint, "
                       "image_sha256, status, sidecars, metadata, imported_at) SELECT ?, ?, "
                       "source_kind, fingerprint, image_sha256, 'merged', sidecars, metadata, "
                       "imported_at FROM origins WHERE source_path = ?",
                       (twice, f"{ws}/../raw", "raw" + path[len(str(raw)):]))
            db.execute("INSERT INTO decisions (image_sha256, subject, stage, verdict, reason, "
                       "run_id, created_at) SELECT image_sha256, ?, stage, verdict, reason, run_id, "
                       "created_at FROM decisions WHERE subject = ?", (twice, "raw" + path[len(str(raw)):]))
    assert rows(ws, "SELECT COUNT(*) FROM origins") == [(8,)]
    done = curate("import", "raw", "--into", "ws", "--json", cwd=tmp_path)
    assert json.loads(done.stdout)["nothing_new"], done.stdout
    assert rows(ws, "SELECT COUNT(*) FROM origins WHERE source_path LIKE ?", f"{raw}/%") == [(4,)]
    assert rows(ws, "SELECT COUNT(*) FROM origins") == [(4,)]
    assert rows(ws, "SELECT COUNT(*) FROM decisions WHERE verdict = 'skipped'") == [(1,)]


def test_run_reuses_the_recorded_sources_and_says_what_it_imported(raw: Path, tmp_path: Path) -> None:
    ws = tmp_path / "ws"
    done = curate("import", "./raw", "--into", "ws", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    photo(raw / "3.jpg", 3)
    done = curate("run", "ws", "--set", 'run.stages=["import"]', cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert f"importing again from the 1 source(s) this workspace recorded ({raw})" in done.stdout
    assert "import: 1 new, 4 unchanged, 0 skipped" in done.stdout
    os.symlink(tmp_path / "elsewhere.jpg", raw / "gone2.jpg")  # a new file, skipped
    done = curate("run", "ws", "--set", 'run.stages=["import"]', cwd=tmp_path)
    assert "import: 0 new, 5 unchanged, 1 skipped; see `curate status ws --skipped`" in done.stdout
    assert rows(ws, "SELECT COUNT(*) FROM origins") == [(6,)]
