"""`curate dedupe` on a workspace, then again after 1% more images: the whole stage, measured.

    python bench/dedupe_incremental.py --count 30000 --new 300 [--kind varied] [--images DIR]
    python bench/dedupe_incremental.py --count 1000000 --new 10000 --size 128 --kind varied --jobs 2

Generates `count` photos with gallery-dl sidecars (`--kind bulk`: crops of scikit-image's
samples, most of them near copies of each other; `varied`: mosaics of crops with 5% planted
copies, closer to a real scrape) and `new` more (another seed), imports the first set, times
`dedupe` (the full run: every image hashed, the whole search, the index written), imports the
new set and times `dedupe` again (the incremental run: only new images read and hashed, searched
against the index). Then the index and the snapshot of the images (snapshot.py) are deleted and
`dedupe` re-run (every row read, hashes cached, full search) as the reference: its groups must
equal the incremental run's. Each run is timed in a fresh process,
as a user's `curate dedupe` runs. Prints a markdown table.
"""

from __future__ import annotations

import argparse
import multiprocessing
import shutil
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import NamedTuple

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # fixtures/ (and curate/ uninstalled)

from curate.stages.dedupe.config import DedupeConfig
from curate.stages.dedupe.index import INDEX_NAME
from curate.stages.dedupe.run import DedupeResult, dedupe
from curate.stages.dedupe.snapshot import SNAPSHOT_NAME
from curate.stages.ingest import ImportConfig, import_sources
from fixtures.scrape import build_bulk, build_varied


class Run(NamedTuple):
    seconds: float
    images: int
    hashed: int
    groups: set[tuple[str, frozenset[str]]]  # (kept sha256, duplicates' sha256)


def groups(result: DedupeResult) -> set[tuple[str, frozenset[str]]]:
    return {(result.items[g.keeper].sha256, frozenset(result.items[m.index].sha256 for m in g.duplicates))
            for g in result.groups}


def _run(ws: Path) -> Run:
    start = time.perf_counter()
    result = dedupe(ws, DedupeConfig())
    return Run(time.perf_counter() - start, len(result.items), result.hashed, groups(result))


def timed(ws: Path) -> Run:
    """One `dedupe` in a fresh process, as `curate dedupe` runs (imports not timed): in this one
    the previous runs' objects would slow the garbage collector (3.7 s against 2.9 s at 100k)."""
    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
        return pool.submit(_run, ws).result()


def photos(folder: Path, count: int, size: int, seed: int, kind: str, jobs: int = 1) -> Path:
    """The generated set in `folder`, made there first if it is not (whole, or not at all).
    With jobs > 1 it is made as that many parts (subfolders, seeds 1000 + seed * 100 + part) at once."""
    if not folder.is_dir():
        start = time.perf_counter()
        part = folder.with_name(folder.name + ".part")
        shutil.rmtree(part, ignore_errors=True)
        build = build_varied if kind == "varied" else build_bulk
        if jobs == 1:
            build(part, count, size, seed=seed)
        else:
            sizes = [count // jobs + (k < count % jobs) for k in range(jobs)]
            with ProcessPoolExecutor(jobs) as pool:
                list(pool.map(build, [part / f"part-{k}" for k in range(jobs)], sizes, [size] * jobs,
                              [1000 + seed * 100 + k for k in range(jobs)]))
        part.rename(folder)
        print(f"generated {folder.name} in {time.perf_counter() - start:.0f} s", file=sys.stderr, flush=True)
    return folder


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=30_000)
    parser.add_argument("--new", type=int, default=300)
    parser.add_argument("--size", type=int, default=256, help="side of the generated images")
    parser.add_argument("--kind", choices=("bulk", "varied"), default="bulk", help=(
        "bulk: crops of 11 photos (60-75%% of them near copies, the worst case for a run's "
        "decisions); varied: mosaics of crops, 5%% planted copies (closer to a real scrape)"))
    parser.add_argument("--images", type=Path, help="keep the generated photos here and reuse them "
                        "(100,000 take ~7 min to make); default: a temporary folder")
    parser.add_argument("--jobs", type=int, default=1, help="make the first set as this many parts "
                        "at once (other images than with 1: each part has its own seed)")
    parser.add_argument("--workspace", type=Path, help="make the workspace here and keep it (it must "
                        "not exist), to look at or profile afterwards; default: a temporary folder")
    args = parser.parse_args()
    if args.workspace is not None and args.workspace.exists():
        parser.error(f"--workspace {args.workspace} exists: give a new folder")
    with tempfile.TemporaryDirectory(prefix="dedupe-incremental-") as tmp:
        root = Path(tmp)
        images = args.images or root
        name = "" if args.kind == "bulk" else f"{args.kind}-"
        parts = f"-j{args.jobs}" if args.jobs > 1 else ""
        raw = photos(images / f"{name}raw-{args.count}-{args.size}{parts}", args.count, args.size, 0,
                     args.kind, args.jobs)
        new = photos(images / f"{name}new-{args.new}-{args.size}", args.new, args.size, 1, args.kind)
        ws = args.workspace or root / "ws"
        start = time.perf_counter()
        import_sources(ws, [raw], ImportConfig())
        print(f"imported in {time.perf_counter() - start:.0f} s", file=sys.stderr, flush=True)
        first = timed(ws)
        import_sources(ws, [new], ImportConfig())
        second = timed(ws)
        (ws / ".curate" / INDEX_NAME).unlink()
        (ws / ".curate" / SNAPSHOT_NAME).unlink()
        reference = timed(ws)
    assert second.groups == reference.groups, "the incremental run's groups differ from a full search"
    rows = [
        ("full run: hash every image, whole search, write the index", first),
        ("incremental run: hash the new images, search them against the index", second),
        ("reference: index and snapshot deleted, hashes cached, whole search", reference),
    ]
    print(f"### dedupe on a workspace: {args.count:,} images, then {args.new:,} more "
          f"({args.size}x{args.size} JPEGs, {args.kind})\n")
    print("| run | images | hashed | groups | time | of the full run |")
    print("|---|---|---|---|---|---|")
    for name, run in rows:
        print(f"| {name} | {run.images:,} | {run.hashed:,} | {len(run.groups):,} | "
              f"{run.seconds:.2f} s | {100 * run.seconds / first.seconds:.1f}% |")


if __name__ == "__main__":
    main()
