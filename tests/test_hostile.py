"""Every command through the hostile corpus (fixtures/hostile.py), as a user's shell runs it.

Each command runs as `python -m curate ...` in its own process under a time guard, so a hang
fails the test instead of stalling the suite. After each one: no traceback, no "internal
error", no raw terminal escape printed from user data, every error a single line; nothing
from outside/ (the stand-in for /etc/passwd) in any file curate wrote; the raw inputs and
outside/ byte-for-byte as they were; nothing written outside the test's root.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from fixtures.hostile import BAD_NAME, SECRET, build_hostile, build_raw

GUARD_S = 180  # a hang is minutes-to-forever; the slowest command here takes seconds


def snapshot(root: Path) -> dict[str, str]:
    """Every entry below root: links by target, special files by kind, files by content.

    Never opens anything but regular files (opening a FIFO would hang the test itself).
    """
    state = {}
    for dirpath, dirs, files in os.walk(root):
        for name in dirs + files:
            path = os.path.join(dirpath, name)
            st = os.lstat(path)
            if stat.S_ISLNK(st.st_mode):
                state[path] = "link:" + os.readlink(path)
            elif stat.S_ISREG(st.st_mode):
                with open(path, "rb") as fh:
                    state[path] = hashlib.sha256(fh.read()).hexdigest()
            else:
                state[path] = f"mode:{stat.S_IFMT(st.st_mode)}"
    return state


def leaked(root: Path) -> list[str]:
    """Files below root (regular ones, links not followed) that hold the secret marker."""
    hits = []
    for dirpath, _dirs, files in os.walk(root):
        for name in files:
            path = os.path.join(dirpath, name)
            if stat.S_ISREG(os.lstat(path).st_mode):
                with open(path, "rb") as fh:
                    if SECRET.encode() in fh.read():
                        hits.append(path)
    return hits


class Runner:
    def __init__(self, root: Path, corpus: Path) -> None:
        self.root = root
        self.corpus = corpus
        self.env = {**os.environ, "HF_HUB_OFFLINE": "1", "XDG_CACHE_HOME": str(root / "cache"),
                    "U2NET_HOME": str(root / "u2net"), "PYTHONPATH": str(Path.cwd()),
                    "COLUMNS": "200", "NO_COLOR": "1"}
        self.before = {p: snapshot(p) for p in self.fixed()}

    def fixed(self) -> list[Path]:
        return [self.corpus / "raw", self.corpus / "outside", self.corpus / "dataset"]

    def __call__(self, *args: str | Path, ok: tuple[int, ...] = (0,)) -> subprocess.CompletedProcess[str]:
        cmd = [sys.executable, "-m", "curate", *map(str, args)]
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, errors="surrogateescape",
                                  timeout=GUARD_S, env=self.env, cwd=self.root, stdin=subprocess.DEVNULL)
        except subprocess.TimeoutExpired:
            pytest.fail(f"hung: `curate {' '.join(map(str, args))}` ran past {GUARD_S} s")
        said = proc.stdout + proc.stderr
        shown = f"`curate {' '.join(map(str, args))}` (exit {proc.returncode}):\n{said[-3000:]}"
        assert "Traceback" not in said, shown
        assert "internal error" not in said, shown
        assert "\x1b" not in said, "a terminal escape from user data was printed: " + shown
        assert proc.returncode in ok, shown
        errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
        if proc.returncode == 2:
            assert len(errors) == 1, shown
        self.guard()
        return proc

    def guard(self) -> None:
        for path in self.fixed():
            assert snapshot(path) == self.before[path], f"{path} changed"
        assert not leaked(self.root / "work"), "outside/ text reached curate's outputs"
        escaped = [p for p in self.root.parent.rglob("escaped")]
        assert not escaped, f"written outside --out: {escaped}"
        assert not (self.corpus / "outside" / "PICKLE_RAN").exists(), "a pickle ran code"


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Runner:
    root = tmp_path_factory.mktemp("hostile")
    corpus = build_hostile(root / "corpus")
    (root / "work").mkdir()
    return Runner(root, corpus)


def test_import_skips_each_planted_file_with_its_reason(run: Runner) -> None:
    proc = run("import", run.corpus / "raw", "--into", "work/ws", "-v")
    said = proc.stdout + proc.stderr
    for name in ("pipe.jpg", "sock.png", "bomb.png", "truncated.jpg", "empty.jpg", "notimage.png",
                 "outside.jpg", "leak.txt", "leak2.jpg.json", "nested.jpg.json", "big.txt",
                 "coffee.txt"):
        lines = [line for line in said.splitlines() if name in line]
        assert lines, f"{name} not reported:\n{said[-3000:]}"
    # the images beside the bad sidecars come in, and so do the undecodable and escape-laden
    # names: 12 images; the 7 files that are not images (or not inside raw/) are skipped
    status = json.loads(run("status", "work/ws", "--json").stdout)
    assert status["images"] == 12, status
    again = json.loads(run("import", run.corpus / "raw", "--into", "work/ws", "--json").stdout)
    assert again["nothing_new"] and again["counts"]["unchanged"] == 19, again


def test_folder_commands_walk_past_pipes_and_odd_names(run: Runner) -> None:
    raw = run.corpus / "raw"
    run("dedupe", raw)
    run("dedupe", raw, "--json")
    run("check", raw, ok=(2,))  # not a Kohya dataset: said in one line
    run("check", run.corpus / "dataset", ok=(0, 1))
    run("check", run.corpus / "dataset", "--format", "github", ok=(0, 1))
    run("buckets", run.corpus / "dataset")
    run("filter", raw)
    run("crop", raw, "--dry-run")
    run("bg", raw, "--method", "grabcut", "--out", "work/cut")


def test_dedupe_move_to_on_a_copy_moves_each_duplicate_once(run: Runner) -> None:
    copy = run.root / "work" / "copy"
    build_raw(copy, run.corpus / "outside")
    shutil.copyfile(copy / "raw" / "chelsea.jpg", copy / "raw" / "chelsea-again.jpg")
    first = run("dedupe", copy / "raw", "--move-to", "work/dups", "--json")
    assert "chelsea" in first.stdout
    second = run("dedupe", copy / "raw", "--move-to", "work/dups", "--json")
    assert '"moved": 0' in second.stdout or '"moved": []' in second.stdout, second.stdout


def test_workspace_stages_decide_each_bad_image(run: Runner) -> None:
    ws = "work/ws"
    run("dedupe", ws)
    run("filter", ws)
    run("bg", ws, "--method", "grabcut")
    run("crop", ws)
    run("captions", "trigger", ws, "sks")
    run("layout", ws, "--out", "work/ds")
    run("check", "work/ds", ok=(0, 1))
    run("buckets", "work/ds")
    run("report", ws, "--out", "work/report")
    status = run("status", ws, "--skipped")
    assert BAD_NAME not in status.stdout  # shown escaped, never as a surrogate


def test_bad_options_and_configs_are_one_line_refusals(run: Runner) -> None:
    ws = "work/ws"
    configs = run.corpus / "configs"
    for config in ("bogus", "hash_huge", "hash_zero", "max_file", "not_toml", "not_utf8"):
        proc = run("run", ws, "--config", configs / f"{config}.toml", ok=(2,))
        assert "error:" in proc.stderr
    for setting in ("dedupe.hash_size=100000", "dedupe.hash_size=0", "import.max_file_mb=-1",
                    "nosuchsection.k=1", "dedupe.nosuchkey=1"):
        proc = run("run", ws, "--set", setting, ok=(2,))
        assert "import:" not in proc.stdout  # refused before any stage ran
    run("dedupe", ws, "--set", "dedupe.hash_size=100000", ok=(2,))


def test_concept_names_never_lead_outside_out(run: Runner) -> None:
    concepts = run.corpus / "concepts"
    for name in ("escape", "types", "nul"):
        proc = run("layout", "work/ws", "--out", "work/out/ds", "--concepts", concepts / f"{name}.toml",
                   ok=(2,))
        assert f"{name}.toml" in proc.stderr
    assert not (run.root / "work" / "out" / "ds").exists()


@pytest.fixture(scope="module")
def models(run: Runner, tiny_sd: Path) -> Path:
    from fixtures.hostile import build_models

    return build_models(run.corpus, tiny_sd)


@pytest.mark.parametrize("broken", ["index_list", "sched_bytes", "unet_types", "te_pickle",
                                    "malicious.ckpt"])
def test_broken_base_models_are_refused_in_one_line(run: Runner, models: Path, broken: str) -> None:
    proc = run("train", run.corpus / "dataset" / "img", "--model", models / broken,
               "--out", "work/train-" + broken, "--max-train-steps", "1", ok=(2,))
    assert broken in proc.stderr
    out = run("lora", "extract", "--base", models / broken, "--tuned", models / broken,
              "--dim", "2", "--out", "work/x.safetensors", ok=(2,))
    assert broken in out.stderr


def test_model_files_from_users(run: Runner, models: Path) -> None:
    info = run("lora", "info", models / "ansi.safetensors")
    assert "RED" in info.stdout
    run("lora", "info", models / "ansi.safetensors", "--json")
    run("tag", "work/ws", "--model", models / "tagger", ok=(2,))
    run("bg", "work/ws", "--model-path", models / "garbage.onnx", ok=(2,))


def test_training_on_the_hostile_dataset_skips_what_it_cannot_read(run: Runner, tiny_sd: Path) -> None:
    proc = run("train", run.corpus / "dataset" / "img", "--model", tiny_sd, "--out", "work/lora",
               "--max-train-steps", "1", "--set", "resolution=128")
    said = proc.stdout + proc.stderr
    for name in ("bomb.png", "pipe.png"):
        assert name in said, said[-3000:]
    assert (run.root / "work" / "lora" / "last.safetensors").exists()


def test_lists_and_captions_found_in_a_folder_are_never_waited_on_or_followed_out(run: Runner) -> None:
    """keep.txt, crops.csv and captions that curate finds (not files the user named): a FIFO is
    refused without a wait, a caption linked out of the folder is not read."""
    from fixtures.hostile import link, make_fifo, small
    from fixtures.scrape import jpeg, write

    folder = run.root / "work" / "lists"
    for name in ("astronaut", "chelsea"):
        write(folder / f"{name}.jpg", jpeg(small(name)))
    link(folder / "astronaut.txt", run.corpus / "outside" / "secret.txt")
    make_fifo(folder / "chelsea.txt")
    make_fifo(folder / "keep.txt")
    make_fifo(folder / "crops.csv")
    for args in (("dedupe", folder), ("crop", folder, "--dry-run")):
        proc = run(*args, ok=(0, 2))  # a FIFO list is passed over, or refused in one line
        assert proc.returncode == 0 or "named pipe" in proc.stderr, proc.stderr
    (folder / "keep.txt").unlink()
    (folder / "crops.csv").unlink()
    run("dedupe", folder)
    run("crop", folder, "--dry-run")
    for args in (("captions", "trigger", folder, "sks"), ("tags", "filter", folder)):
        said = run(*args, "--dry-run").stdout
        assert SECRET not in said
        assert "astronaut.txt" in said and "chelsea.txt" in said, said  # each named with its reason


def test_the_whole_pipeline_over_the_hostile_scrape(
    run: Runner, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """`curate init` + `curate run` of every curation stage (incl. bg, crop and a real tagger) over
    the raw corpus: one run, each planted file decided with its reason, then the report."""
    from fixtures.tiny_tagger import build_tiny_tagger

    tagger = build_tiny_tagger(tmp_path_factory.mktemp("tagger") / "wd-tiny")
    run("init", "work/pipe")
    (run.root / "work" / "pipe" / "curate.toml").write_text(
        '[run]\nstages = ["import", "dedupe", "filter", "bg", "crop", "tag", "tags-filter", "captions", '
        '"layout", "check"]\n'
        f'sources = ["{run.corpus / "raw"}"]\ntrigger = "sks"\ndataset = "dataset"\n'
        f'[bg]\nmethod = "grabcut"\n[crop]\nsize = 256\n[tag]\nmodel = "{tagger}"\n', encoding="utf-8")
    proc = run("run", "work/pipe", ok=(0, 1))
    assert "import: 12 new" in proc.stdout and "curate status" in proc.stdout, proc.stdout
    dataset = run.root / "work" / "pipe" / "dataset"
    captions = sorted(dataset.rglob("*.txt"))
    assert captions and all(p.read_text(encoding="utf-8").startswith("sks") for p in captions)
    again = run("run", "work/pipe", ok=(0, 1))  # unchanged: nothing redone, nothing new said
    assert "import: 0 new" in again.stdout, again.stdout
    run("report", "work/pipe")
    run("tag", "work/pipe", "--model", tagger, "--threshold", "0.5")
    run("captions", "stats", "work/pipe")


def test_model_tools_refuse_broken_bases_in_one_line(run: Runner, models: Path) -> None:
    ansi = models / "ansi.safetensors"
    for broken in ("te_pickle", "index_list", "malicious.ckpt"):
        proc = run("lora", "merge", "--base", models / broken, f"{ansi}:0.5", "--out", "work/merged", ok=(2,))
        assert broken in proc.stderr
    run("lora", "export", ansi, "--model", models / "te_pickle", "--out", "work/e.safetensors", ok=(2,))
    run("lora", "resize", ansi, "--dim", "1", "--out", "work/r.safetensors", ok=(0, 2))
    assert not (run.root / "work" / "merged").exists()
