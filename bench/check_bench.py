"""Benchmark `curate check` on a 1,000-image Kohya dataset: cold and warm hash cache.

    python bench/check_bench.py --count 1000 [--repeat 3] [--doc FILE]

The dataset: `fixtures.scrape.build_bulk` JPEGs (512x512) in `img/10_sks/` with `.txt`
captions (trigger first, the sidecar's tags after it) and a dataset.toml, as `curate layout`
writes. Timed: `check()` with an empty cache (every image hashed), `check()` again (warm:
nothing decoded), the pre-commit case (two staged files, warm), and the whole command in a
fresh interpreter as pre-commit starts it. Prints a Markdown table; with --doc also writes it.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # fixtures/ is not installed

from curate.check import CheckConfig, check
from fixtures.scrape import build_bulk

ROOT = Path(__file__).resolve().parents[1]
TARGET_WARM_S = 2.0


def build_dataset(root: Path, count: int) -> Path:
    bulk = build_bulk(root / "bulk", count)
    folder = root / "dataset/img/10_sks"
    folder.mkdir(parents=True)
    for image in sorted(bulk.glob("*.jpg")):
        tags = json.loads(image.with_name(image.name + ".json").read_text())["tag_string_general"].split()
        shutil.move(str(image), folder / image.name)
        (folder / f"{image.stem}.txt").write_text(", ".join(["sks", *dict.fromkeys(tags)]) + "\n")
    (root / "dataset/dataset.toml").write_text(
        "[general]\ncaption_extension = \".txt\"\n[[datasets]]\nresolution = 512\n"
        "[[datasets.subsets]]\nimage_dir = \"img/10_sks\"\nnum_repeats = 10\nclass_tokens = \"sks\"\n")
    shutil.rmtree(bulk)
    return root / "dataset"


def timed(fn: Callable[[], Any], repeat: int) -> tuple[float, Any]:
    runs, result = [], None
    for _ in range(repeat):
        start = time.perf_counter()
        result = fn()
        runs.append(time.perf_counter() - start)
    return statistics.median(runs), result


def run(dataset: Path, cache: Path, repeat: int) -> list[tuple[str, float, str]]:
    config = CheckConfig()
    rows = []

    def cold() -> Any:
        shutil.rmtree(cache, ignore_errors=True)
        return check([dataset], config)

    seconds, result = timed(cold, repeat)
    assert result.images > 0 and result.hashed == result.images, "cold run must hash every image"
    rows.append(("check(), cold cache (hash every image)", seconds, _summary(result)))
    seconds, result = timed(lambda: check([dataset], config), repeat)
    assert result.hashed == 0, "warm run must hash nothing"
    assert {f.rule for f in result.findings} <= {"duplicate-near"}, "the bench dataset is otherwise clean"
    rows.append(("check(), warm cache", seconds, _summary(result)))
    staged = sorted((dataset / "img/10_sks").iterdir())[:2]
    seconds, result = timed(lambda: check([], config, staged), repeat)
    rows.append(("check(), warm, 2 staged files (pre-commit)", seconds, _summary(result)))
    command = [sys.executable, "-m", "curate", "check", str(dataset), "-q"]
    seconds, _ = timed(lambda: subprocess.run(command, check=False, capture_output=True, cwd=ROOT), repeat)
    rows.append(("`python -m curate check DATASET` (new process, warm)", seconds, "with interpreter start"))
    return rows


def _summary(result: Any) -> str:
    return f"{result.images} images, {result.errors} errors, {result.warnings} warnings"


def report(rows: list[tuple[str, float, str]], count: int, repeat: int) -> str:
    warm = rows[1][1]
    lines = [
        "## curate check (`bench/check_bench.py`)", "",
        "```sh", f".venv/bin/python bench/check_bench.py --count {count} --repeat {repeat}", "```", "",
        f"{count} gallery-dl-style 512x512 JPEGs (`fixtures.scrape.build_bulk`) laid out as "
        "`img/10_sks/` with `.txt` captions and a dataset.toml; median of "
        f"{repeat} runs; {os.cpu_count()} cores, Python {platform.python_version()}, "
        f"load average {os.getloadavg()[0]:.1f} at the end (a shared machine: cold times vary "
        "with it), CURATE_CACHE_DIR in a temporary folder.", "",
        "| run | time | result |", "|---|---|---|",
        *[f"| {name} | {seconds:.2f} s | {what} |" for name, seconds, what in rows], "",
        f"- Warm check: **{warm:.2f} s** for {count} images (target: under {TARGET_WARM_S:.0f} s). "
        "Nothing is decoded: each image's size, format and phash come from the dedupe cache by path, "
        "size and mtime; the caption files are read and the duplicate search runs on 1,000 hashes.",
        "- Cold: every image is read once (sha256, header, draft-decoded phash) on all cores, "
        "the same work and cache entries as `curate dedupe` on the folder.",
        "- The warnings are all duplicate-near: build_bulk draws its images as random crops of 11 "
        "photos, so some are near copies of each other (phash within 2 bits).", "",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=1000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--doc", type=Path, help="also write the Markdown section to this file")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="check-bench-") as tmp:
        root = Path(tmp)
        os.environ["CURATE_CACHE_DIR"] = str(root / "cache")  # never the user's own cache
        dataset = build_dataset(root, args.count)
        text = report(run(dataset, root / "cache", args.repeat), args.count, args.repeat)
    print(text)
    if args.doc:
        args.doc.write_text("# Benchmarks: curate check\n\n" + text, encoding="utf-8")


if __name__ == "__main__":
    main()
