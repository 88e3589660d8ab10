"""`curate dedupe` on a workspace, then again after 1% more images: the whole stage, measured.

    python bench/dedupe_incremental.py --count 30000 --new 300 [--images DIR]

Generates `count` distinct photos (crops of scikit-image's samples, gallery-dl sidecars) and
`new` more (another seed: some are near copies of the first ones), imports the first set,
times `dedupe` (the full run: every image hashed, the whole search, the index written), imports
the new set and times `dedupe` again (the incremental run: only new images hashed, searched
against the index). Then the index is deleted and `dedupe` re-run (hashes cached, full search)
as the reference: its groups must equal the incremental run's. Prints a markdown table.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # fixtures/ (and curate/ uninstalled)

from curate.stages.dedupe.config import DedupeConfig
from curate.stages.dedupe.index import INDEX_NAME
from curate.stages.dedupe.run import DedupeResult, dedupe
from curate.stages.ingest import ImportConfig, import_sources
from fixtures.scrape import build_bulk, build_varied


def groups(result: DedupeResult) -> set[tuple[str, frozenset[str]]]:
    return {(result.items[g.keeper].sha256, frozenset(result.items[m.index].sha256 for m in g.duplicates))
            for g in result.groups}


def timed(ws: Path) -> tuple[float, DedupeResult]:
    start = time.perf_counter()
    result = dedupe(ws, DedupeConfig())
    return time.perf_counter() - start, result


def photos(folder: Path, count: int, size: int, seed: int, kind: str) -> Path:
    """The generated set in `folder`, made there first if it is not (whole, or not at all)."""
    if not folder.is_dir():
        start = time.perf_counter()
        part = folder.with_name(folder.name + ".part")
        shutil.rmtree(part, ignore_errors=True)
        (build_varied if kind == "varied" else build_bulk)(part, count, size, seed=seed)
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
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="dedupe-incremental-") as tmp:
        root = Path(tmp)
        images = args.images or root
        name = "" if args.kind == "bulk" else f"{args.kind}-"
        raw = photos(images / f"{name}raw-{args.count}-{args.size}", args.count, args.size, 0, args.kind)
        new = photos(images / f"{name}new-{args.new}-{args.size}", args.new, args.size, 1, args.kind)
        ws = root / "ws"
        start = time.perf_counter()
        import_sources(ws, [raw], ImportConfig())
        print(f"imported in {time.perf_counter() - start:.0f} s", file=sys.stderr, flush=True)
        full, first = timed(ws)
        import_sources(ws, [new], ImportConfig())
        incremental, second = timed(ws)
        (ws / ".curate" / INDEX_NAME).unlink()
        reference_time, reference = timed(ws)
    assert groups(second) == groups(reference), "the incremental run's groups differ from a full search"
    rows = [
        ("full run: hash every image, whole search, write the index", first, full),
        ("incremental run: hash the new images, search them against the index", second, incremental),
        ("reference: index deleted, hashes cached, whole search", reference, reference_time),
    ]
    print(f"### dedupe on a workspace: {args.count:,} images, then {args.new:,} more "
          f"({args.size}x{args.size} JPEGs, {args.kind})\n")
    print("| run | images | hashed | groups | time | of the full run |")
    print("|---|---|---|---|---|---|")
    for name, result, seconds in rows:
        print(f"| {name} | {len(result.items):,} | {result.hashed:,} | {len(result.groups):,} | "
              f"{seconds:.2f} s | {100 * seconds / full:.1f}% |")


if __name__ == "__main__":
    main()
