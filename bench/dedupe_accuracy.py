"""Accuracy of perceptual dedupe on real photos: pair precision and recall per hash and threshold.

    python bench/dedupe_accuracy.py [--images DIR] [--thresholds 0-20] [--workers N]

The set is `fixtures/dupes.py` (built into a temporary folder unless --images names one that
holds a truth.json): scikit-image photos with resized, recompressed, cropped, watermarked,
brightened, transparent and grey copies, plus hard negatives. Ground truth: every two files
of one truth cluster are a duplicate pair. Two ways of scoring a prediction:

* pairs: the pairs the method links directly (hash distance <= t, or confirmed by verify);
* clusters: every pair inside the groups those links form (single linkage, as the dedupe
  stage groups), plus the number of predicted groups equal to a truth cluster.

Prints Markdown: one table per hash (hash_size 8) over thresholds, then "phash + verify":
pairs within t are taken as they are, pairs within the candidate threshold c are checked by
`verify.confirm_pairs`. The recommended default is chosen from that table by the rule printed
with it.
"""

from __future__ import annotations

import argparse
import re
import shlex
import sys
import tempfile
import time
from collections.abc import Iterable, Sequence
from functools import cache
from pathlib import Path
from typing import NamedTuple

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script from anywhere, without installing
    sys.path.insert(0, str(ROOT))

from curate.stages.dedupe.clusters import clusters_from_pairs  # noqa: E402
from curate.stages.dedupe.hashing import METHODS, hash_bits, hash_files  # noqa: E402
from curate.stages.dedupe.search import pack_hashes, pairs_within  # noqa: E402
from curate.stages.dedupe.verify import VerifyConfig, candidate_threshold, confirm_pairs  # noqa: E402
from fixtures.dupes import build_dupe_set, load_truth  # noqa: E402

Pair = tuple[int, int]
TARGET_PRECISION, TARGET_RECALL = 0.99, 0.95
# Thresholds taken without a second look, in the verify table. Even only: a phash has as many
# bits above its median as below (32 of 64), so two phashes always differ in an even number.
DIRECT = (0, 2, 4, 6, 8, 10)
CANDIDATE = (12, 14, 16, 18, 20, 22)  # candidate thresholds (of 64 bits) in the verify table


class Score(NamedTuple):
    found: int
    precision: float
    recall: float
    f1: float
    cluster_precision: float
    cluster_recall: float
    exact: int  # predicted groups (singletons included) equal to a truth cluster


class Fixture(NamedTuple):
    paths: list[str]
    labels: list[str]  # truth cluster of each path
    truth: set[Pair]


def load_fixture(images: Path) -> Fixture:
    truth_of = load_truth(images)
    names = sorted(truth_of)
    labels = [truth_of[n] for n in names]
    pairs = {(i, j) for i in range(len(names)) for j in range(i + 1, len(names)) if labels[i] == labels[j]}
    return Fixture([str(images / n) for n in names], labels, pairs)


def score(fixture: Fixture, predicted: Iterable[Pair]) -> Score:
    """Direct and cluster-level precision / recall of predicted pairs (i < j)."""
    direct = {(min(i, j), max(i, j)) for i, j in predicted}
    groups = clusters_from_pairs(len(fixture.paths), sorted(direct), min_size=1)
    closed = {(g[a], g[b]) for g in groups for a in range(len(g)) for b in range(a + 1, len(g))}
    truth_groups: dict[str, list[int]] = {}
    for i, label in enumerate(fixture.labels):
        truth_groups.setdefault(label, []).append(i)
    exact = len({tuple(g) for g in groups} & {tuple(g) for g in truth_groups.values()})
    p, r = _precision_recall(direct, fixture.truth)
    cp, cr = _precision_recall(closed, fixture.truth)
    return Score(len(direct), p, r, 2 * p * r / (p + r) if p + r else 0.0, cp, cr, exact)


def _precision_recall(found: set[Pair], truth: set[Pair]) -> tuple[float, float]:
    hits = len(found & truth)
    return (hits / len(found) if found else 1.0), (hits / len(truth) if truth else 1.0)


@cache
def hashes(paths: tuple[str, ...], method: str, workers: int | None) -> list[int]:
    """Hashes of the fixture (hash_size 8, draft decoding), computed once per method."""
    values = [h.value for h in hash_files(paths, method, 8, workers=workers)]
    if any(v is None for v in values):
        raise SystemExit(f"{method}: some fixture image did not decode")
    return [v or 0 for v in values]


def hash_pairs(paths: Sequence[str], method: str, t_max: int, workers: int | None) -> dict[Pair, int]:
    """Every pair within t_max for this hash, with its distance."""
    bits = hash_bits(method, 8)
    values = hashes(tuple(paths), method, workers)
    found = pairs_within(pack_hashes(values, bits), t_max, bits=bits, workers=workers)
    return {(int(i), int(j)): int(d) for i, j, d in zip(found.i, found.j, found.distance, strict=True)}


def hash_table(fixture: Fixture, method: str, near: dict[Pair, int], thresholds: Sequence[int]) -> str:
    rows = []
    for t in thresholds:
        s = score(fixture, [p for p, d in near.items() if d <= t])
        rows.append([t, *_cells(s, len(set(fixture.labels)))])
    head = ["t", "pairs", "precision", "recall", "F1", "cluster P", "cluster R", "exact clusters"]
    return f"### {method} (hash_size 8, {hash_bits(method, 8)} bits)\n\n" + table(head, rows)


def _cells(s: Score, n_clusters: int) -> list[str]:
    return [str(s.found), f"{s.precision:.3f}", f"{s.recall:.3f}", f"{s.f1:.3f}",
            f"{s.cluster_precision:.3f}", f"{s.cluster_recall:.3f}", f"{s.exact}/{n_clusters}"]


def verified(paths: Sequence[str], near: dict[Pair, int], c_max: int,
             workers: int | None) -> dict[Pair, float]:
    """verify's score of every pair within c_max (0 where no transform fits), in one call."""
    todo = sorted(p for p, d in near.items() if d <= c_max)
    found = confirm_pairs(paths, todo, VerifyConfig(min_score=0.0), workers=workers)
    scores = dict.fromkeys(todo, 0.0)
    scores.update({(i, j): s for i, j, s in found})
    return scores


def predict(near: dict[Pair, int], scores: dict[Pair, float], t: int, c: int) -> list[Pair]:
    """Pairs within t as they are, plus pairs within c that verify confirms (default min_score)."""
    accept = VerifyConfig().min_score
    return [p for p, d in near.items() if d <= t or (d <= c and scores.get(p, 0.0) >= accept)]


def verify_table(fixture: Fixture, near: dict[Pair, int], scores: dict[Pair, float],
                 combos: Sequence[tuple[int, int]]) -> tuple[str, dict[tuple[int, int], Score]]:
    rows, results = [], {}
    for t, c in combos:
        s = score(fixture, predict(near, scores, t, c))
        checked = sum(1 for d in near.values() if t < d <= c)
        results[(t, c)] = s
        rows.append([t, c, checked, *_cells(s, len(set(fixture.labels)))])
    head = ["t", "c", "verified", "pairs", "precision", "recall", "F1", "cluster P", "cluster R",
            "exact clusters"]
    return table(head, rows), results


def score_spread(fixture: Fixture, scores: dict[Pair, float]) -> str:
    """The closest calls: the lowest-scoring duplicate pair and the highest-scoring other pair."""
    name = [Path(p).name for p in fixture.paths]
    dup = min((s, p) for p, s in scores.items() if p in fixture.truth)
    other = max(((s, p) for p, s in scores.items() if p not in fixture.truth), default=(0.0, (0, 0)))
    return (f"Lowest score of a duplicate pair: {dup[0]:.3f} ({name[dup[1][0]]}, {name[dup[1][1]]}); "
            f"highest of any other pair: {other[0]:.3f} ({name[other[1][0]]}, {name[other[1][1]]}); "
            f"min_score = {VerifyConfig().min_score}.")


def edit_kind(name: str) -> str:
    """The edit a fixture file name records: resize25, q30-40, cropside, watermark, ..."""
    stem = name.split("__", 1)[1].rsplit(".", 1)[0]
    if stem.startswith("resize") or stem == "q95":
        return stem
    if stem[0] == "q" and stem[1:].isdigit():
        return "q30-40"
    return re.sub(r"\d+", "", stem)


def report_edits(fixture: Fixture, scores: dict[Pair, float], t: int, c: int, workers: int | None) -> None:
    """Per edit: how far phash moves a copy from its original, and whether the default links it."""
    phash = hashes(tuple(fixture.paths), "phash", workers)
    names = [Path(p).name for p in fixture.paths]
    original = {label: k for k, (label, name) in enumerate(zip(fixture.labels, names, strict=True))
                if "__" not in name}
    by_kind: dict[str, list[tuple[int, bool]]] = {}
    for k, name in enumerate(names):
        if "__" not in name:
            continue
        o = original[fixture.labels[k]]
        d = (phash[k] ^ phash[o]).bit_count()
        linked = d <= t or (d <= c and scores.get((min(k, o), max(k, o)), 0.0) >= VerifyConfig().min_score)
        by_kind.setdefault(edit_kind(name), []).append((d, linked))
    rows = [[kind, len(v), int(np.median([d for d, _ in v])), max(d for d, _ in v),
             sum(d <= 10 for d, _ in v), sum(ok for _, ok in v)] for kind, v in sorted(by_kind.items())]
    head = ["edit", "copies", "median phash distance", "max", "within t = 10",
            f"linked by default (t = {t}, c = {c})"]
    print("## Copy to original, by edit\n\n" + table(head, rows) + "\n")


def meets(s: Score) -> bool:
    return min(s.precision, s.cluster_precision) >= TARGET_PRECISION and min(
        s.recall, s.cluster_recall) >= TARGET_RECALL


def choose(results: dict[tuple[int, int], Score]) -> tuple[int, int] | None:
    """Of the (t, c) that meet the target on pairs and on clusters, the highest cluster F1;
    then the smallest c (fewer candidates to verify at scale); then the largest t."""
    ok = [(tc, s) for tc, s in results.items() if meets(s)]
    if not ok:
        return None

    def key(item: tuple[tuple[int, int], Score]) -> tuple[float, int, int]:
        (t, c), s = item
        f1 = 2 * s.cluster_precision * s.cluster_recall / (s.cluster_precision + s.cluster_recall)
        return (-round(f1, 4), c, -t)
    return min(ok, key=key)[0]


def table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def parse_range(text: str) -> list[int]:
    """"0-20" or "0,2,4" to a list of ints."""
    if "-" in text:
        lo, hi = text.split("-")
        return list(range(int(lo), int(hi) + 1))
    return [int(v) for v in text.split(",")]


def report_hashes(fixture: Fixture, thresholds: Sequence[int], workers: int | None) -> None:
    print("## Each hash alone\n")
    for method in METHODS:
        scale = hash_bits(method, 8) / 64  # colorhash has 112 bits: compare at the same fraction
        ts = sorted({round(t * scale) for t in thresholds})
        near = hash_pairs(fixture.paths, method, max(ts), workers)
        print(hash_table(fixture, method, near, ts) + "\n")


def report_verify(fixture: Fixture, workers: int | None) -> tuple[tuple[int, int] | None, dict[Pair, float]]:
    near = hash_pairs(fixture.paths, "phash", max(CANDIDATE), workers)
    start = time.perf_counter()
    scores = verified(fixture.paths, near, max(CANDIDATE), workers)
    took = time.perf_counter() - start
    combos = [(t, c) for t in DIRECT for c in CANDIDATE if c > t]
    _, results = verify_table(fixture, near, scores, combos)
    chosen = choose(results)
    print("## phash + verify\n")
    print(f"verify scored {len(scores)} pairs (phash distance <= {max(CANDIDATE)}) in {took:.2f} s. "
          + score_spread(fixture, scores) + "\n")
    if chosen is None:
        print(table(["t", "c"], combos) + "\n\nNo (t, c) meets the target.\n")
        return None, scores
    t0, c0 = chosen
    print(f"Candidate threshold c at t = {t0}:\n")
    print(verify_table(fixture, near, scores, [(t0, c) for c in CANDIDATE if c > t0])[0] + "\n")
    print(f"Direct threshold t at c = {c0}:\n")
    print(verify_table(fixture, near, scores, [(t, c0) for t in DIRECT if t < c0])[0] + "\n")
    return chosen, scores


def report_other_verify(fixture: Fixture, t64: int, workers: int | None) -> None:
    """Each hash with verify at its own `candidate_threshold`, for comparison."""
    rows = []
    for method in METHODS:
        bits = hash_bits(method, 8)
        t, c = round(t64 * bits / 64), candidate_threshold(method, 8)
        near = hash_pairs(fixture.paths, method, c, workers)
        scores = verified(fixture.paths, {p: d for p, d in near.items() if d > t}, c, workers)
        s = score(fixture, predict(near, scores, t, c))
        rows.append([method, t, c, len(scores), *_cells(s, len(set(fixture.labels)))])
    head = ["hash", "t", "c", "verified", "pairs", "precision", "recall", "F1", "cluster P",
            "cluster R", "exact clusters"]
    print("## Each hash + verify at its candidate threshold\n\n" + table(head, rows) + "\n")


def time_default(fixture: Fixture, t: int, c: int, workers: int | None) -> None:
    near = hash_pairs(fixture.paths, "phash", c, workers)
    todo = sorted(p for p, d in near.items() if t < d <= c)
    start = time.perf_counter()
    confirm_pairs(fixture.paths, todo, VerifyConfig(), workers=workers)
    print(f"confirm_pairs on the default's {len(todo)} candidate pairs: "
          f"{time.perf_counter() - start:.2f} s (workers={workers or 'all cores'}).\n")


def run(images: Path, args: argparse.Namespace) -> None:
    fixture = load_fixture(images)
    n = len(fixture.paths)
    print("# Dedupe accuracy\n")
    print("```sh\n" + shlex.join([Path(sys.executable).name, *sys.argv]) + "\n```\n")
    if args.images is None:
        print("The set was built by `fixtures.dupes.build_dupe_set` into a temporary folder; "
              "`python -m fixtures.dupes OUT` writes the same files to OUT/dupes.\n")
    print(f"{n} images in {len(set(fixture.labels))} truth clusters ({images}): "
          f"{len(fixture.truth)} duplicate pairs, {n * (n - 1) // 2 - len(fixture.truth)} other pairs. "
          f"Target: precision >= {TARGET_PRECISION}, recall >= {TARGET_RECALL}.\n")
    report_hashes(fixture, parse_range(args.thresholds), args.workers)
    chosen, scores = report_verify(fixture, args.workers)
    if chosen is None:
        return
    t, c = chosen
    report_edits(fixture, scores, t, c, args.workers)
    report_other_verify(fixture, t, args.workers)
    time_default(fixture, t, c, args.workers)
    print(f"**Default: phash, hash_size 8, threshold t = {t} (taken without a second look), "
          f"candidates within c = {c} confirmed by verify ({VerifyConfig()}).** "
          f"Rule: {' '.join((choose.__doc__ or '').split())}")


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=Path, help="a folder built by fixtures.dupes (has truth.json)")
    parser.add_argument("--thresholds", default="0-20",
                        help="thresholds of 64 bits, e.g. 0-20 or 0,4,8 (scaled for colorhash's 112)")
    parser.add_argument("--workers", type=int, default=None, help="processes/threads (default: all cores)")
    args = parser.parse_args(argv)
    if args.images is not None:
        run(args.images, args)
        return
    with tempfile.TemporaryDirectory() as tmp:
        run(build_dupe_set(Path(tmp)), args)


if __name__ == "__main__":
    main()
