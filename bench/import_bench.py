"""Import benchmark: `curate import` of N gallery-dl-style JPEGs, then a re-import (no-op).

Side by side, in the same process, with what a user would otherwise script: walk the folder,
`PIL.Image.verify()` each file and `shutil.copy2` it (and its sidecar) into a target folder.

    python bench/import_bench.py [--count 1000] [--size 512] [--workers 0] [--repeat 3]

Prints a Markdown table; the figures in docs/benchmarks.md come from this script.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from curate.stages.ingest.config import ImportConfig
from curate.stages.ingest.run import import_sources
from fixtures.scrape import build_bulk


def plain_copy(src: Path, dst: Path) -> int:
    """The hand-written baseline: verify every image, copy it and its sidecar."""
    dst.mkdir(parents=True, exist_ok=True)
    copied = 0
    for path in sorted(src.rglob("*")):
        if path.suffix.lower() not in (".jpg", ".jpeg", ".png", ".webp"):
            continue
        with Image.open(path) as im:
            im.verify()
        shutil.copy2(path, dst / path.name)
        sidecar = path.with_name(path.name + ".json")
        if sidecar.exists():
            shutil.copy2(sidecar, dst / sidecar.name)
        copied += 1
    return copied


def timed(fn) -> tuple[float, object]:
    start = time.perf_counter()
    value = fn()
    return time.perf_counter() - start, value


def one_round(scrape: Path, work: Path, config: ImportConfig) -> dict[str, float]:
    ws = work / "ws"
    first, result = timed(lambda: import_sources(ws, [scrape], config))
    assert result.counts.get("imported") == sum(1 for _ in scrape.glob("*.jpg")), result.counts
    again, result2 = timed(lambda: import_sources(ws, [scrape], config))
    assert result2.nothing_new, result2.counts
    plain, copied = timed(lambda: plain_copy(scrape, work / "plain"))
    assert copied == result.counts["imported"]
    shutil.rmtree(ws)
    shutil.rmtree(work / "plain")
    return {"first": first, "again": again, "plain": plain}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=1000)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--workers", type=int, default=0, help="0 = all cores")
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    config = ImportConfig(workers=args.workers)
    with tempfile.TemporaryDirectory(prefix="curate-import-bench-") as tmp:
        scrape = build_bulk(Path(tmp) / "scrape", args.count, args.size)
        rounds = [one_round(scrape, Path(tmp), config) for _ in range(args.repeat)]
    med = {k: statistics.median(r[k] for r in rounds) for k in rounds[0]}
    n = args.count
    print(f"{n} JPEGs {args.size}x{args.size} with .json sidecars, {os.cpu_count()} cores, "
          f"median of {args.repeat}")
    print("| step | time | images/s |")
    print("|---|---|---|")
    print(f"| curate import (first) | {med['first']:.2f} s | {n / med['first']:,.0f} |")
    print(f"| curate import (again, no-op) | {med['again']:.2f} s | {n / med['again']:,.0f} |")
    print(f"| plain script: PIL verify + shutil.copy2 | {med['plain']:.2f} s | {n / med['plain']:,.0f} |")
    print(f"\nre-import / first import = {100 * med['again'] / med['first']:.1f}%")


if __name__ == "__main__":
    main()
