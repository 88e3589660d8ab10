"""Benchmark perceptual dedupe: near-pair search and file hashing, against the usual tools.

    python bench/dedupe_bench.py --part search|plans|hash|stage|all

Search: random 64-bit hashes at t=8 with `pairs_within`, numpy all-pairs brute force and
imagededup's own searches (Cython brute force, BK-tree). Hashing: generated 512x512 JPEGs
with `hash_files`, a plain imagehash + Pool + draft script, and imagededup's PHash encoder.
Prints markdown tables. imagededup is optional: when it is not importable its columns say so.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import multiprocessing
import os
import platform
import shutil
import sys
import tempfile
import time
import types
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

try:
    import curate  # noqa: F401  (installed, or run with PYTHONPATH=.)
except ImportError:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from curate.stages.dedupe import search
from curate.stages.dedupe.clusters import cluster_hashes
from curate.stages.dedupe.hashing import hash_files
from curate.stages.dedupe.search import Chunk, pairs_bruteforce, pairs_within

SEARCH_SIZES = (2_000, 5_000, 10_000, 30_000, 100_000, 300_000, 1_000_000)
NOT_RUN = "-"


def import_imagededup() -> Any | None:
    """imagededup's hashing classes, or None. Its package imports the torch-based CNN code
    unconditionally; stand-ins for those two modules let the hashing part import without
    torch, which is never installed here."""
    for name, attr in (("imagededup.methods.cnn", "CNN"), ("imagededup.utils.models", "CustomModel")):
        if name not in sys.modules:
            stand_in = types.ModuleType(name)
            setattr(stand_in, attr, None)
            sys.modules[name] = stand_in
    try:
        from imagededup import methods
    except ImportError as exc:
        print(f"> imagededup not importable ({exc}): its columns are skipped.\n")
        return None
    return methods


def timed(fn: Callable[[], Any], repeat: int = 1) -> tuple[float, Any]:
    """Best time of `repeat` runs (the first run of a pool pays for cold imports)."""
    best = math.inf
    for _ in range(repeat):
        start = time.perf_counter()
        result = fn()
        best = min(best, time.perf_counter() - start)
    return best, result


def table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def seconds(value: float | None) -> str:
    return NOT_RUN if value is None else f"{value:.2f} s"


def growth(times: dict[int, float]) -> tuple[float, float] | None:
    """Exponent k of time ~ N^k from the two largest sizes, and the time it predicts at 1M."""
    if len(times) < 2:
        return None
    (n1, t1), (n2, t2) = sorted(times.items())[-2:]
    k = math.log(t2 / t1) / math.log(n2 / n1)
    return k, t2 * (1_000_000 / n2) ** k


def imagededup_search(methods: Any, hashes: np.ndarray, t: int, how: str) -> tuple[float, int]:
    encoding = {f"{k}.jpg": f"{int(v):016x}" for k, v in enumerate(hashes)}
    hasher = methods.PHash(verbose=False)
    elapsed, found = timed(
        lambda: hasher.find_duplicates(
            encoding_map=encoding, max_distance_threshold=t, search_method=how, num_dist_workers=2
        )
    )
    return elapsed, sum(len(v) for v in found.values()) // 2


def bench_search(sizes: Sequence[int], t: int, brute_max: int, idd_max: dict[str, int]) -> str:
    """idd_max: largest N to run each of imagededup's search methods on."""
    methods = import_imagededup() if any(idd_max.values()) else None
    hows = tuple(idd_max)
    idd_times: dict[str, dict[int, float]] = {how: {} for how in hows}
    rows = []
    for n in sizes:
        hashes = np.random.default_rng(n).integers(0, 2**64, n, dtype=np.uint64)
        ours, found = timed(lambda h=hashes: pairs_within(h, t))
        brute = idd = None
        if n <= brute_max:
            brute, want = timed(lambda h=hashes: pairs_bruteforce(h, t))
            assert np.array_equal(found.i, want.i) and np.array_equal(found.j, want.j)
        cells = []
        for how in hows:
            if methods is None or n > idd_max[how]:
                cells.append(NOT_RUN)
                continue
            idd, idd_pairs = imagededup_search(methods, hashes, t, how)
            idd_times[how][n] = idd
            cells.append(f"{idd:.2f} s ({idd_pairs} pairs)")
        rows.append([f"{n:,}", seconds(ours), len(found.i), seconds(brute), *cells])
        print(f"search n={n:,}: ours {ours:.2f} s, brute {seconds(brute)}, imagededup {cells}",
              file=sys.stderr, flush=True)
    headers = ["hashes", "curate pairs_within", "pairs found", "numpy all-pairs",
               "imagededup brute_force_cython", "imagededup bktree"]
    out = [f"### Search, t={t}, random 64-bit hashes\n", table(headers, rows), bench_skewed(max(sizes), t)]
    for how, times in idd_times.items():
        fit = growth(times)
        if fit:
            out.append(f"\nimagededup {how}: time grows as N^{fit[0]:.2f}; "
                       f"extrapolated to 1M: {fit[1] / 3600:.1f} h")
    return "\n".join(out)


def bench_plans(sizes: Sequence[int]) -> str:
    """Why three radius-1 chunks: the same search at t=8 under other chunkings."""
    plans = {
        "9 exact chunks of 7-8 bits (plain multi-index hashing)": (
            Chunk(0, 8, 0), *(Chunk(8 + 7 * k, 7, 0) for k in range(8))),
        "4 chunks of 16 bits, radius 1": tuple(Chunk(16 * k, 16, 1) for k in range(4)),
        "3 chunks of 21-22 bits, radius 1 (what _plan picks)": (
            Chunk(0, 22, 1), Chunk(22, 21, 1), Chunk(43, 21, 1)),
    }
    chosen = search._plan
    rows = []
    try:
        for n in sizes:
            hashes = np.random.default_rng(n).integers(0, 2**64, n, dtype=np.uint64)
            for name, plan in plans.items():
                search._plan = lambda *_, p=plan: p  # forces the chunking; results stay exact
                elapsed, found = timed(lambda h=hashes: pairs_within(h, 8))
                rows.append([f"{n:,}", name, seconds(elapsed), len(found.i)])
    finally:
        search._plan = chosen
    return "### Chunkings compared, t=8\n\n" + table(["hashes", "chunks", "time", "pairs"], rows)


def bench_skewed(n: int, t: int) -> str:
    """Hashes shaped like a scrape: 20% one value (blank images), 10% near copies (<= 6 bits)."""
    rng = np.random.default_rng(0)
    hashes = rng.integers(0, 2**64, n, dtype=np.uint64)
    blank, copies = n // 5, n // 10
    hashes[:blank] = hashes[0]
    flips = np.zeros(copies, np.uint64)
    for _ in range(6):
        use = rng.random(copies) < 0.5
        flips[use] ^= np.uint64(1) << rng.integers(0, 64, copies).astype(np.uint64)[use]
    hashes[blank : blank + copies] = hashes[rng.integers(blank + copies, n, copies)] ^ flips
    elapsed, groups = timed(lambda: cluster_hashes(hashes, t))
    return (f"\nSkewed {n:,} hashes ({blank:,} identical, {copies:,} near copies), t={t}: "
            f"`cluster_hashes` {elapsed:.2f} s, {len(groups):,} groups, largest "
            f"{max(map(len, groups), default=0):,} (listing its pairs would take "
            f"{blank * (blank - 1) // 2:,} rows; grouping never lists them)")


def _make_one(job: tuple[int, str]) -> None:
    from PIL import Image
    from skimage import data

    k, folder = job
    rng = np.random.default_rng(k)
    names = ("astronaut", "coffee", "chelsea", "rocket", "camera", "coins", "horse")
    pixels = getattr(data, names[k % len(names)])()
    if pixels.ndim == 2:
        pixels = np.stack([pixels] * 3, axis=-1)
    h, w = pixels.shape[:2]
    side = int(rng.integers(min(h, w) // 2, min(h, w) + 1))
    y, x = int(rng.integers(0, h - side + 1)), int(rng.integers(0, w - side + 1))
    crop = pixels[y : y + side, x : x + side].astype(np.float32)
    crop = crop * rng.uniform(0.7, 1.3, 3) + rng.uniform(-30, 30, 3)  # colour shift
    image = Image.fromarray(np.clip(crop, 0, 255).astype(np.uint8)).resize((512, 512))
    image.save(Path(folder) / f"{k:06d}.jpg", quality=90)


def make_images(folder: Path, n: int, workers: int) -> list[Path]:
    with multiprocessing.get_context("fork").Pool(workers) as pool:
        pool.map(_make_one, [(k, str(folder)) for k in range(n)], chunksize=64)
    return sorted(folder.glob("*.jpg"))


def _plain_phash(path: Path) -> str:
    """The baseline script: what one would write with imagehash in ten minutes."""
    import imagehash
    from PIL import Image

    with Image.open(path) as image:
        image.draft("RGB", (64, 64))
        return str(imagehash.phash(image))


def plain_script(paths: list[Path], workers: int) -> list[str]:
    with multiprocessing.get_context("fork").Pool(workers) as pool:
        return pool.map(_plain_phash, paths, chunksize=64)


def bench_hash(n: int, workers: int, keep: Path | None, repeat: int) -> str:
    folder = keep or Path(tempfile.mkdtemp(prefix="dedupe-bench-"))
    folder.mkdir(parents=True, exist_ok=True)
    paths = sorted(folder.glob("*.jpg"))
    if len(paths) != n:
        paths = make_images(folder, n, workers)
    rows = []
    for decode in ("draft", "full"):
        elapsed, res = timed(lambda d=decode: hash_files(paths, "phash", 8, d, workers=workers), repeat)
        failed = sum(r.value is None for r in res)
        rows.append([f"curate hash_files (phash, {decode})", seconds(elapsed), f"{n / elapsed:,.0f}",
                     failed])
    elapsed, _ = timed(lambda: plain_script(paths, workers), repeat)
    rows.append([f"imagehash.phash + draft + Pool({workers})", seconds(elapsed), f"{n / elapsed:,.0f}", 0])
    methods = import_imagededup()
    if methods is None:
        rows.append(["imagededup PHash.encode_images", "not installed", NOT_RUN, NOT_RUN])
    else:
        hasher = methods.PHash(verbose=False)
        elapsed, enc = timed(lambda: hasher.encode_images(str(folder), num_enc_workers=workers), repeat)
        rows.append(["imagededup PHash.encode_images", seconds(elapsed), f"{n / elapsed:,.0f}",
                     n - len(enc)])
    if keep is None:
        shutil.rmtree(folder)
    headers = ["hasher", "time", "images/s", "failed"]
    title = f"### Hashing {n:,} 512x512 JPEGs, {workers} processes, best of {repeat}"
    return f"{title}\n\n" + table(headers, rows)


def bench_stage(n: int, workers: int, keep: Path | None) -> str:
    """`curate dedupe FOLDER` end to end (walk, read, hash, search, verify, group) against
    imagededup's PHash.find_duplicates on the same folder, at their default thresholds."""
    from curate.stages.dedupe.config import DedupeConfig
    from curate.stages.dedupe.run import dedupe

    folder = keep or Path(tempfile.mkdtemp(prefix="dedupe-bench-"))
    folder.mkdir(parents=True, exist_ok=True)
    if len(list(folder.glob("*.jpg"))) != n:
        make_images(folder, n, workers)
    rows = []
    with tempfile.TemporaryDirectory() as cache:
        os.environ["CURATE_CACHE_DIR"] = cache
        for label in ("curate dedupe (cold cache)", "curate dedupe (re-run, cached hashes)"):
            elapsed, res = timed(lambda: dedupe(folder, DedupeConfig(workers=workers)))
            rows.append([label, seconds(elapsed), f"{n / elapsed:,.0f}", len(res.groups), res.duplicates])
        elapsed, res = timed(lambda: dedupe(folder, DedupeConfig(workers=workers, verify=False)))
        rows.append(["curate dedupe --no-verify (cached)", seconds(elapsed), f"{n / elapsed:,.0f}",
                     len(res.groups), res.duplicates])
    with tempfile.TemporaryDirectory() as cache:
        os.environ["CURATE_CACHE_DIR"] = cache
        elapsed, res = timed(lambda: dedupe(folder, DedupeConfig(workers=workers, verify=False)))
        rows.append(["curate dedupe --no-verify (cold cache)", seconds(elapsed), f"{n / elapsed:,.0f}",
                     len(res.groups), res.duplicates])
    methods = import_imagededup()
    if methods is not None:
        hasher = methods.PHash(verbose=False)
        elapsed, found = timed(lambda: hasher.find_duplicates(
            image_dir=str(folder), max_distance_threshold=10, num_enc_workers=workers,
            num_dist_workers=workers))
        dups = {k for k, v in found.items() if v}
        rows.append(["imagededup PHash.find_duplicates", seconds(elapsed), f"{n / elapsed:,.0f}",
                     NOT_RUN, f"{len(dups)} files with a duplicate"])
    if keep is None:
        shutil.rmtree(folder)
    headers = ["tool", "time", "images/s", "groups", "duplicates"]
    title = f"### End to end: {n:,} 512x512 JPEGs, {workers} processes, threshold 10"
    return f"{title}\n\n" + table(headers, rows)


def machine() -> str:
    import PIL

    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError, StopIteration):
        lines = Path("/proc/cpuinfo").read_text().splitlines()
        cpu = next(line.split(":", 1)[1].strip() for line in lines if line.startswith("model name"))
    return (f"{os.cpu_count()} cores ({cpu}), Python {platform.python_version()}, "
            f"numpy {np.__version__}, Pillow {PIL.__version__}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--part", choices=("search", "plans", "hash", "stage", "all"), default="all")
    parser.add_argument("--sizes", type=int, nargs="+", default=list(SEARCH_SIZES))
    parser.add_argument("--t", type=int, default=8, help="Hamming distance threshold")
    parser.add_argument("--brute-max", type=int, default=100_000, help="largest N for numpy all-pairs")
    parser.add_argument("--imagededup-max", type=int, default=30_000,
                        help="largest N for imagededup's Cython brute force (0 skips it)")
    parser.add_argument("--bktree-max", type=int, default=5_000,
                        help="largest N for imagededup's BK-tree (0 skips it)")
    parser.add_argument("--images", type=int, default=10_000, help="JPEGs to generate and hash")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--repeat", type=int, default=2, help="hashing runs per tool (best counts)")
    parser.add_argument("--keep-images", type=Path, help="folder to keep (and reuse) the JPEGs in")
    args = parser.parse_args()
    print(f"Machine: {machine()}\n")
    if args.part in ("search", "all"):
        idd_max = {"brute_force_cython": args.imagededup_max, "bktree": args.bktree_max}
        print(bench_search(args.sizes, args.t, args.brute_max, idd_max), "\n")
    if args.part in ("plans", "all"):
        print(bench_plans([100_000, 300_000]), "\n")
    if args.part in ("hash", "all"):
        print(bench_hash(args.images, args.workers, args.keep_images, args.repeat), "\n")
    if args.part in ("stage", "all"):
        print(bench_stage(args.images, args.workers, args.keep_images), "\n")


if __name__ == "__main__":
    main()
