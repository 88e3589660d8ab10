"""Near-duplicate search from 1M to 10M hashes, and the incremental index: time, peak memory, exactness.

    python bench/search_scale.py --part search --sizes 1000000 3000000 10000000
    python bench/search_scale.py --part search --hash-size 16 --t 32 --sizes 100000 1000000
    python bench/search_scale.py --part incremental --base 1000000 --new 10000
    python bench/search_scale.py --part search --plan halves --sizes 1000000 3000000 10000000
    python bench/search_scale.py --part search --compare numpy --sizes 1000000 3000000 10000000

Hashes are random with planted pairs at distance 0..10 (`--planted` per distance), written to a
.npy and memory-mapped, so the search reads them from the page cache in blocks. Each size runs
in a fresh process, which reports its own peak RSS. Checks, every run: every planted pair
within t is found and none beyond it, and the pairs found among a random subset of rows (plus
every planted row) equal numpy all-pairs on that subset. Prints markdown tables.

`--plan halves` fixes the chunking to two 32-bit halves at radius 2 (the plan whose cost is
linear in N) instead of the cost model's choice, to measure what the N^1.2 target would cost.
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

try:
    import curate  # noqa: F401  (installed, or run with PYTHONPATH=.)
except ImportError:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from curate.stages.dedupe.clusters import component_labels
from curate.stages.dedupe.index import SearchIndex, indexed_search
from curate.stages.dedupe.search import (
    Chunk,
    _plan,
    collapse,
    pairs_bruteforce,
    pairs_within,
    search_unique,
)

COMPARE = {"auto": None, "compiled": True, "numpy": False}  # pairs_within(compiled=...)
CHECK_ROWS = 20_000  # random rows brute-forced against the search's answer


def make_hashes(n: int, words: int, planted: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """n random hashes, the last 11 * planted of them copies of earlier ones at distance 0..10.
    Returns the hashes and the planted pairs (original row, copy row, distance)."""
    rng = np.random.default_rng(seed)
    bits = 64 * words
    hashes = rng.integers(0, 2**64, (n, words), dtype=np.uint64)
    copies = n - 11 * planted
    pairs = []
    for d in range(11):
        rows = rng.choice(copies, planted, replace=False)
        flips = np.argsort(rng.random((planted, bits)), axis=1)[:, :d]  # d distinct bits a row
        out = hashes[rows].copy()
        for c in range(d):
            np.bitwise_xor.at(out, (np.arange(planted), flips[:, c] // 64),
                              np.uint64(1) << (flips[:, c] % 64).astype(np.uint64))
        at = copies + d * planted + np.arange(planted)
        hashes[at] = out
        pairs.append(np.stack([rows, at, np.full(planted, d)], axis=1))
    return hashes, np.concatenate(pairs)


def _cpu() -> float:
    """CPU seconds of this process, all threads: less at the mercy of other load than wall time."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def peak_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6  # KiB on Linux


PLANS = {"auto": None, "halves": (Chunk(0, 32, 2), Chunk(32, 32, 2))}


def run_one(path: Path, planted_path: Path, t: int, seed: int, plan_name: str = "auto",
            compare: str = "auto") -> dict[str, object]:
    """One search in this process: the hashes memory-mapped, checks after the clock stops.
    The clock includes loading the compiled comparison (numba's import, the cached loop)."""
    hashes = np.load(path, mmap_mode="r")
    chunks = PLANS[plan_name]
    cpu, start = _cpu(), time.perf_counter()
    found = pairs_within(hashes if hashes.shape[1] > 1 else hashes[:, 0], t, chunks=chunks,
                         compiled=COMPARE[compare])
    elapsed, cpu = time.perf_counter() - start, _cpu() - cpu
    start = time.perf_counter()
    component_labels(len(hashes), found.i, found.j)
    grouping = time.perf_counter() - start
    peak = peak_gb()
    planted = np.load(planted_path)
    got = set((found.i * len(hashes) + found.j).tolist())
    want = planted[:, 2] <= t
    hit = np.array([int(a) * len(hashes) + int(b) in got for a, b, _ in planted])
    assert (hit == want).all(), "a planted pair was missed (or found beyond t)"
    rng = np.random.default_rng(seed)
    rows = np.unique(np.concatenate([rng.choice(len(hashes), CHECK_ROWS, replace=False), planted[:, 0],
                                     planted[:, 1]]))
    subset = np.asarray(hashes[rows])
    brute = pairs_bruteforce(subset, t)
    inside = np.full(len(hashes), -1, dtype=np.int64)
    inside[rows] = np.arange(len(rows))
    keep = (inside[found.i] >= 0) & (inside[found.j] >= 0)
    assert np.array_equal(np.sort(inside[found.i[keep]] * len(rows) + inside[found.j[keep]]),
                          np.sort(brute.i * len(rows) + brute.j)), "pairs differ from brute force"
    unique, _ = collapse(np.asarray(hashes))
    plan = chunks or _plan(len(unique), 64 * hashes.shape[1], t, hashes.shape[1])
    return {"n": len(hashes), "seconds": elapsed, "cpu": cpu, "grouping": grouping, "peak_gb": peak,
            "pairs": len(found.i), "checked_rows": len(rows), "plan": str(plan),
            "compiled": "curate.stages.dedupe.kernel" in sys.modules}


def bench_search(sizes: list[int], words: int, t: int, planted: int, brute_n: int,
                 plan: str = "auto", compare: str = "auto") -> str:
    rows, times, cpus = [], {}, {}
    with tempfile.TemporaryDirectory(prefix="search-scale-") as tmp:
        for n in sizes:
            hashes, pairs = make_hashes(n, words, planted, seed=n)
            path, ppath = Path(tmp) / "hashes.npy", Path(tmp) / "planted.npy"
            np.save(path, hashes)
            np.save(ppath, pairs)
            del hashes
            command = [sys.executable, __file__, "--one", str(path), str(ppath), str(t), plan, compare]
            out = subprocess.run(command, check=True, capture_output=True, text=True).stdout
            r = json.loads(out.strip().splitlines()[-1])
            times[n], cpus[n] = r["seconds"], r["cpu"]
            rows.append([f"{n:,}", "numba" if r["compiled"] else "numpy", f"{r['seconds']:.1f} s",
                         f"{r['cpu']:.1f} s", f"{r['grouping']:.2f} s", f"{r['peak_gb']:.2f} GB",
                         f"{r['pairs']:,}", f"{r['checked_rows']:,}"])
            print(f"n={n:,}: {r}", file=sys.stderr, flush=True)
    lines = [f"### Search, t={t}, {64 * words}-bit hashes, {11 * planted:,} planted pairs at 0..10, "
             f"plan {plan}, comparison {compare}\n",
             _table(["hashes", "comparison", "pairs_within (wall)", "CPU", "grouping (labels)", "peak RSS",
                     "pairs found", "rows checked vs brute force"], rows), ""]
    if brute_n > 0:  # --brute 0 leaves the all-pairs timing out
        brute = _brute_time(brute_n, words, t)
        lines.append(f"numpy all-pairs (`pairs_bruteforce`) at {brute_n:,}: {brute:.1f} s, so "
                     f"~{brute * (1e6 / brute_n) ** 2 / 60:.0f} min at 1M and "
                     f"~{brute * (1e7 / brute_n) ** 2 / 3600:.0f} h at 10M (quadratic).")
    for name, values in (("wall", times), ("CPU", cpus)):
        ordered = sorted(values.items())
        steps = [*itertools.pairwise(ordered), *([(ordered[0], ordered[-1])] if len(ordered) > 2 else [])]
        fits = [f"{n1:,} -> {n2:,}: N^{math.log(t2 / t1) / math.log(n2 / n1):.2f}"
                for (n1, t1), (n2, t2) in steps]
        lines.append(f"- growth of {name} time: " + ", ".join(fits))
    return "\n".join(lines)


def _brute_time(n: int, words: int, t: int) -> float:
    hashes = np.random.default_rng(1).integers(0, 2**64, (n, words), dtype=np.uint64)
    start = time.perf_counter()
    pairs_bruteforce(hashes, t)
    return time.perf_counter() - start


def bench_incremental(base: int, new: int, t: int, planted: int) -> str:
    """A full search of `base` hashes that builds the index, then `new` more: the new ones
    searched against the index, checked equal to a full search of all of them."""
    hashes, _ = make_hashes(base + new, 1, planted, seed=7)
    rng = np.random.default_rng(8)
    # the new ones: a random 1%, so fresh hashes and near copies of old ones at 0..10 bits
    old = np.sort(rng.permutation(base + new)[:base])
    with tempfile.TemporaryDirectory(prefix="search-index-") as tmp:
        path = Path(tmp) / "dedupe-index.npz"
        unique_old, _ = collapse(hashes[old])
        start = time.perf_counter()
        indexed_search(path, "bench", unique_old, t, 64, None)
        first = time.perf_counter() - start
        unique_all, _ = collapse(hashes)
        index = SearchIndex.load(path, "bench", t)
        assert index is not None
        fresh = unique_all[~np.isin(unique_all[:, 0], index.words[:, 0])]
        start = time.perf_counter()
        probe = index.query(fresh, t)
        among = search_unique(fresh, t, 64, None)  # what a run adds: probes and new x new
        search = time.perf_counter() - start
        start = time.perf_counter()
        got = indexed_search(path, "bench", unique_all, t, 64, None)
        whole = time.perf_counter() - start
        start = time.perf_counter()
        want = search_unique(unique_all, t, 64, None)
        full = time.perf_counter() - start
    assert all(np.array_equal(a, b) for a, b in zip(got, want, strict=True)), "incremental != full"
    rows = [["full search, builds the index", f"{base:,}", f"{first:.2f} s", "-"],
            ["new x index probes + new x new search", f"{len(fresh):,} new",
             f"{search:.3f} s", f"{100 * search / full:.1f}%"],
            ["whole incremental run (load, probe, update, save)", f"{len(fresh):,} new",
             f"{whole:.2f} s", f"{100 * whole / full:.1f}%"],
            ["full search of all (the reference)", f"{len(unique_all):,}", f"{full:.2f} s", "100%"]]
    return (f"### Incremental, t={t}: {base:,} + {new:,} ({len(probe.i)} new x old pairs, "
            f"{len(among.i)} new x new)\n\n"
            + _table(["step", "hashes", "time", "of the full search"], rows))


def _table(headers: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in rows])


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--one":
        path, planted, t = Path(sys.argv[2]), Path(sys.argv[3]), int(sys.argv[4])
        print(json.dumps(run_one(path, planted, t, seed=3, plan_name=sys.argv[5], compare=sys.argv[6])))
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--part", choices=("search", "incremental", "all"), default="all")
    parser.add_argument("--sizes", type=int, nargs="+", default=[1_000_000, 3_000_000, 10_000_000])
    parser.add_argument("--hash-size", type=int, default=8, help="8: 64-bit hashes, 16: 256-bit")
    parser.add_argument("--t", type=int, default=8)
    parser.add_argument("--planted", type=int, default=1_000, help="planted pairs per distance 0..10")
    parser.add_argument("--brute", type=int, default=100_000, help="N for the numpy all-pairs timing")
    parser.add_argument("--base", type=int, default=1_000_000)
    parser.add_argument("--new", type=int, default=10_000)
    parser.add_argument("--plan", choices=sorted(PLANS), default="auto",
                        help="auto: the cost model's chunking; halves: two 32-bit halves at radius 2")
    parser.add_argument("--compare", choices=sorted(COMPARE), default="auto",
                        help="candidates compared by the numba loop (compiled), numpy, or as "
                             "pairs_within chooses (auto: numba from ~1e9 candidates when installed)")
    args = parser.parse_args()
    words = max(1, args.hash_size**2 // 64)
    if args.part in ("search", "all"):
        table = bench_search(args.sizes, words, args.t, args.planted, args.brute, args.plan, args.compare)
        print(table, "\n")
    if args.part in ("incremental", "all"):
        print(bench_incremental(args.base, args.new, args.t, args.planted), "\n")


if __name__ == "__main__":
    main()
