"""`curate run` benchmark: the whole pipeline on N scraped images, then a re-run with nothing changed.

Side by side, in the same process, with what a user would otherwise do: re-type the single
commands (`curate import/dedupe/filter/tag/tags filter/captions trigger/layout/check` as library
calls), which redo each stage's work (each has its own caches, so this is the fair baseline:
import skips unchanged files, dedupe reuses hashes, tag skips tagged images).

    python bench/run_bench.py [--count 1000] [--size 512] [--repeat 2]

Stages: import, dedupe, filter, tag (the tiny fixture tagger, 448 px, CPU), tags-filter,
captions, layout, check. Prints a Markdown table; docs/benchmarks.md has the figures.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from curate.pipeline import run_pipeline
from curate.pipeline.stages import BY_NAME, Context
from fixtures.scrape import build_bulk
from fixtures.tiny_tagger import build_tiny_tagger

STAGES = ["import", "dedupe", "filter", "tag", "tags-filter", "captions", "layout", "check"]


def workspace(root: Path, scrape: Path, tagger: Path) -> Path:
    ws = root / "ws"
    ws.mkdir(parents=True)
    (ws / "curate.toml").write_text(
        f'[run]\nsources = ["{scrape}"]\ntrigger = "sks"\nclass_token = "woman"\n'
        f'stages = {json.dumps(STAGES)}\n'
        f'[tag]\nmodel = "{tagger}"\n[layout]\ntarget_steps = 1500\nlink = "hardlink"\n', encoding="utf-8")
    return ws


def by_hand(ws: Path) -> float:
    """Every stage again, unconditionally, as re-typing the commands does."""
    from curate.pipeline import run_config

    ctx = Context(ws, ws / "curate.toml", (), run_config(ws / "curate.toml", ()))
    started = time.perf_counter()
    for name in STAGES:
        stage = BY_NAME[name]
        stage.runner(ctx, stage.options(ctx))
    return time.perf_counter() - started


def one_round(root: Path, scrape: Path, tagger: Path) -> dict[str, float]:
    ws = workspace(root, scrape, tagger)
    started = time.perf_counter()
    first = run_pipeline(ws)
    first_s = time.perf_counter() - started
    assert all(o.status == "ran" for o in first.stages)
    started = time.perf_counter()
    again = run_pipeline(ws)
    again_s = time.perf_counter() - started
    ran = [o.name for o in again.stages if o.status == "ran"]
    assert ran == ["import", "check"], ran
    layout = next(o.result for o in first.stages if o.name == "layout") or {}
    kept = sum(s["images"] for s in layout.get("subsets", []))
    return {"first": first_s, "rerun": again_s, "by_hand": by_hand(ws), "kept": kept,
            **{f"stage:{o.name}": o.seconds for o in first.stages},
            **{f"rerun:{o.name}": o.seconds for o in again.stages}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=1000)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--repeat", type=int, default=2)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="curate-run-bench-") as tmp:
        base = Path(tmp)
        scrape = build_bulk(base / "scrape", args.count, size=args.size)
        tagger = build_tiny_tagger(base / "tagger")
        rounds = [one_round(base / f"r{i}", scrape, tagger) for i in range(args.repeat)]
    med = {k: statistics.median(r[k] for r in rounds) for k in rounds[0]}
    print(f"{args.count} images of {args.size} px, {os.cpu_count()} cores, {platform.processor() or 'cpu'}, "
          f"median of {args.repeat} rounds; {med['kept']:.0f} images passed dedupe and the quality "
          "filter and were tagged and laid out\n")
    print("| run | seconds | share of the first run |\n|---|---|---|")
    for key, label in (("first", "`curate run`, first"), ("rerun", "`curate run`, nothing changed"),
                       ("by_hand", "re-typing the 8 commands, nothing changed")):
        print(f"| {label} | {med[key]:.2f} | {100 * med[key] / med['first']:.1f}% |")
    print("\n| stage | first run s | re-run s |\n|---|---|---|")
    for name in STAGES:
        print(f"| {name} | {med[f'stage:{name}']:.2f} | {med[f'rerun:{name}']:.3f} |")


if __name__ == "__main__":
    main()
