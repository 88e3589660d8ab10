"""Ray executor benchmark: the per-image stages on N images, local executor vs Ray Data.

    python bench/ray_bench.py [--count 2000] [--filter-count 200] [--repeat 2] [--cpus 2] [--two-node]

The same N images (`fixtures.scrape.build_bulk`: distinct tinted 512 px JPEG crops of the
photos with gallery-dl sidecars) go through import, dedupe (hashing) and tag (the tiny fixture
tagger as the model stage: one actor), once with `--executor local` and once on a local Ray
instance limited to `--cpus` CPUs (the machine's 2 cores), each into an empty workspace; the
filter (~0.4 s of OpenCV per image and core) runs on the first `--filter-count` images only, so
that a round takes minutes. `--repeat` rounds alternate which executor goes first, and each
stage's best round is reported (the machine is shared: load from other jobs only adds time).
Ray's start-up (paid once per process, not per stage) is timed apart; its workers' first-use
warm-up (process start, imports) falls in round 1's first Ray stage.

`--two-node` then starts a two-node Ray cluster on this machine (`ray start --head --block` and
`ray start --address ... --block`, one CPU each; both stopped by their process ids at the end),
runs the same stages through RAY_ADDRESS and checks that every manifest row and file is
identical to the local run's. Prints a Markdown table; docs/benchmarks.md has the figures.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import platform
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from curate.executor import LOCAL, Executor, RayExecutor
from curate.stages.dedupe.config import DedupeConfig
from curate.stages.dedupe.run import dedupe
from curate.stages.ingest import ImportConfig, import_sources
from curate.stages.quality.config import QualityConfig
from curate.stages.quality.run import quality_filter
from curate.stages.tag import TagConfig, tag
from fixtures.scrape import build_bulk
from fixtures.tiny_tagger import build_tiny_tagger

WHEN = {"id", "imported_at", "created_at", "run_id"}


Steps = list[tuple[str, Callable[[Path, Executor], Any]]]


def stages(scrape: Path, few: Path, tagger: Path) -> Steps:
    return [
        ("import", lambda ws, ex: import_sources(ws, [scrape], ImportConfig(), executor=ex)),
        ("dedupe", lambda ws, ex: dedupe(ws, DedupeConfig(), executor=ex)),
        ("tag", lambda ws, ex: tag(ws, TagConfig(model=str(tagger)), executor=ex)),
        ("filter", lambda ws, ex: quality_filter(ws / "few", QualityConfig(), executor=ex)),
    ]


def few_images(scrape: Path, count: int, out: Path) -> Path:
    """The filter's input: a workspace of the first `count` images (made before timing)."""
    out.mkdir(parents=True)
    for path in sorted(scrape.glob("*.jpg"))[:count]:
        shutil.copy(path, out / path.name)
    return out


def run(ws: Path, executor: Executor, steps: Steps, few: Path) -> dict[str, float]:
    import_sources(ws / "few", [few], ImportConfig())  # the filter's workspace, not timed
    times = {}
    for name, step in steps:
        started = time.perf_counter()
        step(ws, executor)
        times[name] = time.perf_counter() - started
    return times


def snapshot(ws: Path) -> dict[str, Any]:
    """Manifest rows (less when/which-run columns) and the bytes of every stored file."""
    db = sqlite3.connect(ws / ".curate" / "manifest.sqlite")
    state: dict[str, Any] = {}
    for (table,) in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'"):
        if table == "runs":
            continue
        columns = [c[1] for c in db.execute(f"PRAGMA table_info({table})") if c[1] not in WHEN]
        state[table] = sorted(map(repr, db.execute(f"SELECT {', '.join(columns)} FROM {table}")))
    db.close()
    state["files"] = sorted(hashlib.sha256(p.read_bytes()).hexdigest()
                            for p in (ws / "images").rglob("*") if p.is_file())
    return state if ws.name == "few" else {**state, "few": snapshot(ws / "few")}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def two_node_cluster(tmp: Path) -> tuple[str, list[subprocess.Popen[bytes]]]:
    """Head and one worker node on this machine, one CPU each; `ray start --block` keeps each
    in the foreground, so stopping it by its pid stops that node's processes and no other's."""
    ray = shutil.which("ray") or str(Path(sys.executable).parent / "ray")
    port = free_port()
    address = f"127.0.0.1:{port}"
    common = ["--num-cpus=1", "--object-store-memory=500000000", "--block", "--disable-usage-stats"]
    head = subprocess.Popen([ray, "start", "--head", f"--port={port}", "--include-dashboard=false",
                             f"--temp-dir={tmp}/ray", *common], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    time.sleep(8)
    worker = subprocess.Popen([ray, "start", f"--address={address}", *common], stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL, start_new_session=True)
    time.sleep(6)
    return address, [worker, head]


def stop(processes: list[subprocess.Popen[bytes]]) -> None:
    for proc in processes:
        os.killpg(proc.pid, signal.SIGTERM)  # its own session: the node it started, nothing else
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=2000)
    parser.add_argument("--filter-count", type=int, default=200)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--cpus", type=int, default=2)
    parser.add_argument("--two-node", action="store_true")
    args = parser.parse_args()
    import ray

    tmp = Path(tempfile.mkdtemp(prefix="ray-bench-"))
    scrape = build_bulk(tmp / "scrape", args.count, args.size)
    few = few_images(scrape, args.filter_count, tmp / "few")
    steps = stages(scrape, few, build_tiny_tagger(tmp / "wd-tiny"))
    started = time.perf_counter()
    executor = RayExecutor(num_cpus=args.cpus)
    startup = time.perf_counter() - started
    rounds: dict[str, list[dict[str, float]]] = {"local": [], "ray": []}
    for r in range(args.repeat):
        order = [("local", LOCAL), ("ray", executor)]
        for name, ex in order if r % 2 == 0 else order[::-1]:
            shutil.rmtree(tmp / name, ignore_errors=True)
            rounds[name].append(run(tmp / name, ex, steps, few))
    same = snapshot(tmp / "ray") == snapshot(tmp / "local")
    ray.shutdown()
    best = {k: {s: min(t[s] for t in v) for s, _ in steps} for k, v in rounds.items()}
    print(f"{args.count} images of {args.size} px (filter: {args.filter_count}), {os.cpu_count()} cores, "
          f"Python {platform.python_version()}, ray {ray.__version__}; best of {args.repeat} rounds; "
          f"Ray start-up {startup:.1f} s (once per process)\n")
    print("| stage | local (s) | ray, 1 node (s) | overhead | rounds local / ray (s) |")
    print("|---|---|---|---|---|")
    for name, _ in steps:
        each = " / ".join(", ".join(f"{t[name]:.1f}" for t in rounds[k]) for k in ("local", "ray"))
        print(f"| {name} | {best['local'][name]:.2f} | {best['ray'][name]:.2f} | "
              f"{best['ray'][name] / best['local'][name] - 1:+.0%} | {each} |")
    total_l, total_r = sum(best["local"].values()), sum(best["ray"].values())
    print(f"| all | {total_l:.2f} | {total_r:.2f} | {total_r / total_l - 1:+.0%} | |")
    print(f"\nray (1 node) manifest and files identical to local: {same}")
    if args.two_node:
        address, nodes = two_node_cluster(tmp)
        try:
            cluster = RayExecutor(address)
            alive = cluster.nodes()
            two = run(tmp / "two", cluster, steps, few)
            same2 = snapshot(tmp / "two") == snapshot(tmp / "local")
            ray.shutdown()
        finally:
            stop(nodes)
        print(f"2-node cluster ({alive} nodes alive, 1 CPU each): "
              + ", ".join(f"{k} {v:.2f} s" for k, v in two.items())
              + f"; total {sum(two.values()):.2f} s; identical to local: {same2}")
    shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
