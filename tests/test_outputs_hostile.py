"""Outputs under hostile conditions, through the CLI: a read-only or full output folder, a manifest
locked by another process, one image a library cannot process, concurrent `dedupe --move-to`.

Read-only and full folders are tmpfs mounts inside a user+mount namespace (tests run as root,
and root ignores permission bits); without namespaces those tests skip.
"""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import skimage.data
from PIL import Image

from curate.workspace import Workspace

ENV = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
# Mount a tmpfs of SIZE at DIR (its files copied in), read-only when asked, then run the command.
NS_SCRIPT = """
dir=$1; size=$2; mode=$3; shift 3
tmp=$(mktemp -d); cp -a "$dir"/. "$tmp"/
mount -t tmpfs -o size=$size tmpfs "$dir" && cp -a "$tmp"/. "$dir"/ && rm -rf "$tmp" || exit 99
if [ "$mode" = ro ]; then mount -o remount,ro "$dir" || exit 99; fi
exec "$@"
"""


def curate(*args: str, prefix: tuple[str, ...] = ()) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*prefix, sys.executable, "-m", "curate", *args], capture_output=True,
                          text=True, env=ENV)


def in_tmpfs(folder: Path, size: str, mode: str, *args: str) -> subprocess.CompletedProcess[str]:
    """`curate ARGS` with `folder` a tmpfs of `size` (mode ro or rw) in a private namespace."""
    probe = subprocess.run(["unshare", "--user", "--map-root-user", "--mount", "sh", "-c",
                            "mount -t tmpfs tmpfs /mnt"], capture_output=True)
    if probe.returncode != 0:
        pytest.skip("user+mount namespaces are unavailable: cannot make a read-only or full folder")
    folder.mkdir(parents=True, exist_ok=True)
    out = curate(*args, prefix=("unshare", "--user", "--map-root-user", "--mount", "sh", "-c",
                                NS_SCRIPT, "ns", str(folder), size, mode))
    assert out.returncode != 99, out.stderr
    return out


def one_line_error(out: subprocess.CompletedProcess[str], *words: str) -> str:
    lines = out.stderr.strip().splitlines()
    assert out.returncode == 2, out.stderr
    assert len(lines) == 1 and lines[0].startswith("error: "), out.stderr
    assert "Traceback" not in out.stderr and "internal error" not in out.stderr
    for word in words:
        assert word in lines[0], lines[0]
    return lines[0]


def photo(name: str) -> Image.Image:
    array = getattr(skimage.data, name)()
    return Image.fromarray(np.dstack([array] * 3) if array.ndim == 2 else array)


@pytest.fixture()
def workspace(tmp_path: Path) -> Path:
    """A workspace of four photos; `chelsea` is a cat filling the frame."""
    raw = tmp_path / "raw"
    raw.mkdir()
    for name in ("astronaut", "chelsea", "coffee", "rocket"):
        photo(name).save(raw / f"{name}.png")
    ws = tmp_path / "ws"
    out = curate("import", str(raw), "--into", str(ws), "-q")
    assert out.returncode == 0, out.stderr
    return ws


def stored(ws: Path, name: str) -> Path:
    with Workspace.open(ws) as w:
        return next(r.path for r in w.records() if r.origins[0].source_path.endswith(name))


# -- item 11: read-only, full, locked --------------------------------------------------------
@pytest.mark.parametrize("command", ["layout", "report", "dedupe-report", "move-to"])
def test_read_only_output_folder_is_one_line(workspace: Path, tmp_path: Path, command: str) -> None:
    out_dir = tmp_path / "out"
    args = {"layout": ("layout", str(workspace), "--out", str(out_dir / "ds")),
            "report": ("report", str(workspace), "--out", str(out_dir / "rep")),
            "dedupe-report": ("dedupe", str(tmp_path / "raw"), "--report", str(out_dir / "d.html")),
            "move-to": ("dedupe", str(tmp_path / "raw"), "--move-to", str(out_dir / "mv"))}[command]
    if command == "move-to":  # a duplicate to move
        photo("astronaut").save(tmp_path / "raw" / "astronaut-copy.png")
    line = one_line_error(in_tmpfs(out_dir, "4m", "ro", *args), str(out_dir), "Read-only file system")
    assert "writable" in line or "choose another" in line


def test_full_disk_is_one_line(workspace: Path, tmp_path: Path) -> None:
    out_dir = tmp_path / "out"
    one_line_error(in_tmpfs(out_dir, "100k", "rw", "layout", str(workspace), "--out", str(out_dir / "ds")),
                   str(out_dir), "No space left on device", "free")
    one_line_error(in_tmpfs(out_dir, "8k", "rw", "report", str(workspace), "--out", str(out_dir / "rep")),
                   str(out_dir), "No space left on device", "free")
    small = tmp_path / "small"
    line = one_line_error(in_tmpfs(small, "300k", "rw", "import", str(tmp_path / "raw"), "--into",
                                   str(small / "ws")), str(small), "free")
    assert "full" in line or "No space left" in line


def test_locked_manifest_is_waited_for_then_one_line(workspace: Path) -> None:
    manifest = workspace / ".curate" / "manifest.sqlite"
    holder = ("import sqlite3, sys, time\n"
              "db = sqlite3.connect(sys.argv[1], isolation_level=None)\n"
              "db.execute('BEGIN EXCLUSIVE'); print('held', flush=True)\n"
              "sys.stdin.readline()\n")
    proc = subprocess.Popen([sys.executable, "-c", holder, str(manifest)], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "held"
        line = one_line_error(curate("dedupe", str(workspace)), str(manifest), "locked", "wait")
        assert "another curate" in line
    finally:
        proc.communicate("\n", timeout=30)
    # a lock released within the busy timeout is simply waited for
    db = sqlite3.connect(manifest, isolation_level=None)
    db.execute("BEGIN EXCLUSIVE")
    run = subprocess.Popen([sys.executable, "-m", "curate", "dedupe", str(workspace), "-q"],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV)
    try:
        time.sleep(1.0)  # let it start and meet the lock (it passes either way: no timed assert)
    finally:
        db.execute("COMMIT")
        db.close()
    _, err = run.communicate(timeout=120)
    assert run.returncode == 0, err


# -- item 13: one image a library cannot process ----------------------------------------------
def test_grabcut_subject_filling_the_frame_still_gets_a_cut_out(workspace: Path) -> None:
    """margin 0 and a cat filling the frame: GrabCut's box covered the image and OpenCV raised
    `!bgdSamples.empty()`, ending the run; now every photo is cut."""
    out = curate("bg", str(workspace), "--method", "grabcut", "--set", "bg.margin=0", "--json")
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout)
    assert result["counts"]["cut"] == result["counts"]["images"] == 4 and not result["skipped"]


def _failed(ws: Path, stage: str) -> list[tuple[str, str]]:
    with Workspace.open(ws) as w:
        return [(d["subject"], d["reason"]) for d in w.manifest.decisions(stage, "failed")]


@pytest.mark.parametrize("stage", ["crop", "filter", "bg", "dedupe"])
def test_a_broken_stored_image_is_a_failed_decision(workspace: Path, stage: str) -> None:
    broken = stored(workspace, "coffee.png")
    broken.write_bytes(broken.read_bytes()[:4000])  # truncated after import
    args = {"crop": ("crop",), "filter": ("filter",), "bg": ("bg", "--method", "grabcut"),
            "dedupe": ("dedupe",)}[stage]
    out = curate(*args[:1], str(workspace), *args[1:], "--json")
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout)
    assert [s["file"] for s in result["skipped"]] == [str(Path(workspace).parent / "raw" / "coffee.png")]
    assert "truncated" in result["skipped"][0]["reason"]
    if stage != "dedupe":
        name = {"filter": "quality"}.get(stage, stage)
        assert [s for s, _ in _failed(workspace, name)] == [result["skipped"][0]["file"]]


def test_a_measure_that_raises_is_a_failed_decision(tmp_path: Path) -> None:
    """A 1x1 image decodes, but the colour measure's eigen-decomposition fails on it."""
    raw = tmp_path / "raw"
    raw.mkdir()
    photo("astronaut").save(raw / "a.png")
    Image.new("RGB", (1, 1), (9, 9, 9)).save(raw / "dot.png")
    out = curate("filter", str(raw), "--json")
    assert out.returncode == 0, out.stderr
    skipped = json.loads(out.stdout)["skipped"]
    assert [s["file"] for s in skipped] == ["dot.png"]
    assert skipped[0]["reason"].startswith("cannot measure it (LinAlgError: ")


def test_a_damaged_onnx_model_is_one_line(tmp_path: Path) -> None:
    raw = tmp_path / "raw"
    raw.mkdir()
    photo("astronaut").save(raw / "a.png")
    model = tmp_path / "u2net.onnx"
    model.write_bytes(bytes(range(256)) * 8)
    pytest.importorskip("rembg")
    one_line_error(curate("bg", str(raw), "--model-path", str(model)), str(model), "InvalidProtobuf")


# -- item 15: --move-to twice, and two at once ------------------------------------------------
def _dupes(tmp_path: Path) -> Path:
    from fixtures.dupes import build_dupe_set

    return build_dupe_set(tmp_path / "fixture")


def test_move_to_twice_and_concurrently(tmp_path: Path) -> None:
    folder = _dupes(tmp_path)
    dest = tmp_path / "moved"
    runs = [subprocess.Popen([sys.executable, "-m", "curate", "dedupe", str(folder), "--move-to", str(dest),
                              "--json"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV)
            for _ in range(2)]
    results = []
    for run in runs:
        out, err = run.communicate(timeout=600)
        assert run.returncode == 0, err
        results.append(json.loads(out))
    duplicates = max(r["counts"]["duplicates"] for r in results)
    moved = [m["from"] for r in results for m in r["moved"]]
    assert duplicates > 0 and sum(r["counts"]["moved"] for r in results) == len(moved)
    assert len(set(moved)) == len(moved) and not any(r["skipped"] for r in results)
    record = json.loads((dest / "dedupe.json").read_text())
    assert sorted(m["source"] for m in record["moves"]) == sorted(moved)
    again = json.loads(curate("dedupe", str(folder), "--move-to", str(dest), "--json").stdout)
    assert again["counts"]["moved"] == 0 and again["counts"]["duplicates"] == 0


TRAIN = ("--max-train-steps", "1", "--set", "resolution=128", "--set", "min_bucket_reso=64")


@pytest.mark.parametrize(("size", "mode", "cause"), [("1m", "ro", "read-only"), ("100k", "rw", "full")])
def test_train_into_a_read_only_or_full_folder_is_one_line(
    tiny_sd: Path, photos_dataset: Path, tmp_path: Path, size: str, mode: str, cause: str
) -> None:
    out = tmp_path / "out"
    proc = in_tmpfs(out, size, mode, "train", str(photos_dataset), "--model", str(tiny_sd),
                    "--out", str(out / "lora"), *TRAIN)
    assert cause in one_line_error(proc, str(out / "lora"))


def test_lora_resize_into_a_read_only_folder_is_one_line(
    tiny_sd: Path, photos_dataset: Path, tmp_path: Path
) -> None:
    trained = curate("train", str(photos_dataset), "--model", str(tiny_sd), "--out",
                     str(tmp_path / "lora"), *TRAIN)
    assert trained.returncode == 0, trained.stderr
    out = tmp_path / "ro"
    proc = in_tmpfs(out, "1m", "ro", "lora", "resize", str(tmp_path / "lora" / "last.safetensors"),
                    "--dim", "2", "--out", str(out / "small.safetensors"))
    one_line_error(proc, str(out / "small.safetensors"), "read-only")


def test_written_files_get_the_umask_permissions_not_0600(tmp_path: Path) -> None:
    from curate.atomic import FILE_MODE, atomic_write_text

    atomic_write_text(tmp_path / "caption.txt", "sks")
    assert (tmp_path / "caption.txt").stat().st_mode & 0o777 == FILE_MODE
    assert FILE_MODE & 0o044  # with any usual umask (022, 002) others can read what curate wrote
