"""Thresholds of `curate filter` chosen from a fixture table.

    python bench/filter_quality.py [--images DIR] [--lfw 100] [--workers N] [--out FILE]

The set is `fixtures/quality.py` (built into a temporary folder unless --images names one that
holds a truth.json): 18 real photos and their defective copies, each labelled with the checks
that must flag it and the checks whose verdict on it does not count. Every image is measured
once (`curate.stages.quality.score.measure_file`); thresholds are then chosen on the scores:

* a measured threshold (sharpness, fine detail, brightness percentiles, colour spread,
  blockiness, text cover) sits in the middle (geometric mean) of the gap between the
  negative nearest to being flagged and the nearest positive beyond it: no negative of the
  set is flagged, and the margin on both sides is the same ratio. Blur has two numbers:
  fine detail is chosen on the blur positives that sharpness does not catch;
* min_side and max_aspect come from sd-scripts' buckets at 512 (`curate.buckets.assign`): the
  smallest short side it upscales at most 2x, the widest aspect it trains without cutting;
* face_neighbors is the smallest count with no false "face at the border" in the set; its
  recall is also measured on `--lfw` faces of scikit-image's LFW subset pasted at the border;
  border_margin (how close to the edge a face touches it) is the smallest that finds the
  most border faces (fixtures + LFW) with no false alarm.

Prints Markdown (and writes it to --out); exits 1 when a default in QualityConfig differs
from the chosen value.
"""

from __future__ import annotations

import argparse
import math
import platform
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import fields, replace
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script from anywhere, without installing
    sys.path.insert(0, str(ROOT))

from curate.buckets import BucketConfig, assign  # noqa: E402
from curate.stages.dedupe.hashing import pool_map  # noqa: E402
from curate.stages.quality.config import CHECKS, QualityConfig  # noqa: E402
from curate.stages.quality.judge import JUDGES, border_faces  # noqa: E402
from curate.stages.quality.score import measure_file  # noqa: E402
from fixtures.quality import Case, build_quality_set, load_truth  # noqa: E402

Scores = dict[str, Any]
# (config field, check, score -> value, flags values "below" or "above" the threshold)
MEASURED: list[tuple[str, str, Callable[[Scores], float], str]] = [
    ("min_sharpness", "blur", lambda s: s["sharpness"], "below"),
    ("min_fine_detail", "blur", lambda s: s["fine_detail"], "below"),
    ("dark_below", "dark", lambda s: s["p99"], "below"),
    ("bright_above", "bright", lambda s: s["p1"], "above"),
    ("min_colour", "monochrome", lambda s: s["colour"], "below"),
    ("max_blockiness", "blocky", lambda s: s["blockiness"], "above"),
    ("max_text", "text", lambda s: s["text"], "above"),
]


def round2(value: float) -> float:
    """Two significant digits: a threshold is a judgement, not a measurement."""
    if value == 0:
        return 0.0
    digits = 1 - math.floor(math.log10(abs(value)))
    return round(value, digits)


def middle(a: float, b: float) -> float:
    return math.sqrt(a * b) if a > 0 and b > 0 else (a + b) / 2


def choose(pos: Sequence[float], neg: Sequence[float], direction: str) -> float:
    """The threshold in the middle of the gap between the nearest negative and the nearest
    positive beyond it (see module doc)."""
    if direction == "below":
        edge = min(neg)
        caught = [v for v in pos if v < edge]
        return round2(middle(max(caught), edge)) if caught else edge
    edge = max(neg)
    caught = [v for v in pos if v > edge]
    return round2(middle(min(caught), edge)) if caught else edge


def labelled(truth: dict[str, Case], scores: dict[str, Scores], check: str
             ) -> tuple[list[Scores], list[Scores]]:
    pos = [scores[f] for f, c in truth.items() if check in c.expect and f in scores]
    neg = [scores[f] for f, c in truth.items()
           if check not in c.expect and check not in c.ignore and f in scores]
    return pos, neg


def candidates(chosen: float, values: Sequence[float]) -> list[float]:
    """The chosen threshold and its neighbours among the measured values, for the table."""
    ordered = sorted({round2(v) for v in values if v > 0} | {chosen})
    i = ordered.index(chosen)
    return ordered[max(0, i - 3):i + 4]


def measured_tables(truth: dict[str, Case], scores: dict[str, Scores]) -> tuple[dict[str, float], list[str]]:
    chosen: dict[str, float] = {}
    lines = []
    for name, check, value, direction in MEASURED:
        pos, neg = labelled(truth, scores, check)
        if name == "min_fine_detail":  # only the blur positives sharpness leaves
            pos = [s for s in pos if s["sharpness"] >= chosen["min_sharpness"]]
        threshold = choose([value(s) for s in pos], [value(s) for s in neg], direction)
        chosen[name] = threshold
        flag = (lambda v, t: v < t) if direction == "below" else (lambda v, t: v > t)
        lines += [f"### {name} ({check}: flagged {direction} the threshold)", "",
                  "| threshold | positives flagged | negatives flagged |", "|---|---|---|"]
        for t in candidates(threshold, [value(s) for s in pos + neg]):
            mark = " **chosen**" if t == threshold else ""
            lines.append(f"| {t:g}{mark} | {sum(flag(value(s), t) for s in pos)}/{len(pos)} | "
                         f"{sum(flag(value(s), t) for s in neg)}/{len(neg)} |")
        lines.append("")
    return chosen, lines


def bucket_tables() -> tuple[dict[str, float], list[str]]:
    config = BucketConfig(resolution=(512, 512))
    lines = ["### min_side (sd-scripts buckets at 512)", "",
             "| square image | bucket | upscale |", "|---|---|---|"]
    min_side = None
    for side in (128, 160, 192, 224, 256, 320, 384, 448, 512):
        a = assign((side, side), config)
        lines.append(f"| {side}x{side} | {a.bucket[0]}x{a.bucket[1]} | {a.scale:.2f}x |")
        if min_side is None and a.scale <= 2.0:
            min_side = side
    lines += ["", "### max_aspect (sd-scripts buckets at 512)", "",
              "| aspect | bucket | share cut off |", "|---|---|---|"]
    max_aspect = 1.0
    for ratio in (2.0, 3.0, 3.5, 4.0, 4.5, 5.0, 6.0):
        a = assign((round(512 * ratio), 512), config)
        lines.append(f"| {ratio:g}:1 | {a.bucket[0]}x{a.bucket[1]} | {a.lost_fraction:.1%} |")
        if a.lost_fraction < 0.01:
            max_aspect = ratio
    return {"min_side": float(min_side or 0), "max_aspect": max_aspect}, [*lines, ""]


def face_tables(truth: dict[str, Case], scores: dict[str, Scores], lfw: dict[str, Scores]
                ) -> tuple[dict[str, float], list[str]]:
    pos, neg = labelled(truth, scores, "border_face")
    base = QualityConfig()
    lines = ["### face_neighbors (border_face)", "",
             "| neighbours | fixture positives flagged | negatives flagged | LFW faces at the border found |",
             "|---|---|---|---|"]
    chosen = None
    for n in range(2, 13):
        config = replace(base, face_neighbors=n)
        hit = sum(bool(border_faces(s, config)) for s in pos)
        false = sum(bool(border_faces(s, config)) for s in neg)
        found = sum(bool(border_faces(s, config)) for s in lfw.values())
        if chosen is None and false == 0:
            chosen = n
        mark = " **chosen**" if chosen == n else ""
        lines.append(f"| {n}{mark} | {hit}/{len(pos)} | {false}/{len(neg)} | {found}/{len(lfw)} |")
    margin, margin_lines = margin_table(replace(base, face_neighbors=chosen or 0), pos, neg, lfw)
    return {"face_neighbors": float(chosen or 0), "border_margin": margin}, [*lines, "", *margin_lines]


def margin_table(config: QualityConfig, pos: list[Scores], neg: list[Scores], lfw: dict[str, Scores]
                 ) -> tuple[float, list[str]]:
    rows = []
    for m in (0.0, 0.05, 0.1, 0.15, 0.25, 0.35, 0.5):
        at = replace(config, border_margin=m)
        groups = (pos, neg, list(lfw.values()))
        rows.append((m, *(sum(bool(border_faces(s, at)) for s in group) for group in groups)))
    best = max(r[1] + r[3] for r in rows if r[2] == 0)
    margin = min(r[0] for r in rows if r[2] == 0 and r[1] + r[3] == best)
    lines = [f"### border_margin (border_face, at {config.face_neighbors} neighbours)", "",
             "| margin (share of the face) | fixture positives flagged | negatives flagged | "
             "LFW faces at the border found |", "|---|---|---|---|"]
    lines += [f"| {m:g}{' **chosen**' if m == margin else ''} | {p}/{len(pos)} | {n}/{len(neg)} | "
              f"{f}/{len(lfw)} |" for m, p, n, f in rows]
    return margin, [*lines, ""]


def summary(truth: dict[str, Case], scores: dict[str, Scores], config: QualityConfig) -> list[str]:
    lines = ["### every check at the defaults", "",
             "| check | positives flagged | negatives flagged | missed | false alarms |",
             "|---|---|---|---|---|"]
    for check in CHECKS:
        pos_files = [f for f, c in truth.items() if check in c.expect]
        neg_files = [f for f, c in truth.items() if check not in c.expect and check not in c.ignore]
        flagged = {f for f in pos_files + neg_files if JUDGES[check](scores[f], config)}
        missed = sorted(set(pos_files) - flagged)
        false = sorted(flagged & set(neg_files))
        lines.append(f"| {check} | {len(flagged & set(pos_files))}/{len(pos_files)} | "
                     f"{len(false)}/{len(neg_files)} | {', '.join(missed) or '-'} | "
                     f"{', '.join(false) or '-'} |")
    return [*lines, ""]


def lfw_border_set(out: Path, count: int) -> Path:
    """`count` LFW faces, each flush with an edge of a face-less photo (a fifth of its height)."""
    import numpy as np

    from fixtures.quality import lfw_face, source
    from fixtures.scrape import png, write

    names = ("chelsea", "coffee", "rocket", "motorcycle_left", "immunohistochemistry")
    bases = [source(name) for name in names]
    rng = np.random.default_rng(1)
    for i in range(count):
        base = bases[i % len(bases)].convert("RGB")
        side = base.height // 5
        y = int(rng.integers(base.height // 4, base.height - side - base.height // 10))
        x = 0 if i % 2 else base.width - side
        base.paste(lfw_face(i, side), (x, y))
        write(out / f"lfw_{i:03d}.png", png(base))
    return out


def measure(paths: Sequence[Path], workers: int | None) -> dict[str, Scores]:
    jobs = [(str(p), "frontal") for p in paths]
    out = {}
    for path, (scores, error) in zip(paths, pool_map(measure_file, jobs, workers), strict=True):
        if error:
            raise SystemExit(f"{path}: {error}")
        out[path.name] = scores
    return out


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=Path, help="a folder built by fixtures.quality (with truth.json)")
    parser.add_argument("--lfw", type=int, default=100, help="LFW faces pasted at the border (0-100)")
    parser.add_argument("--workers", type=int, default=None)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        folder = args.images or build_quality_set(Path(tmp))
        truth = load_truth(folder)
        start = time.perf_counter()
        scores = measure([folder / f for f in sorted(truth)], args.workers)
        lfw_dir = lfw_border_set(Path(tmp) / "lfw", args.lfw)
        lfw = measure(sorted(lfw_dir.glob("*.png")), args.workers)
        seconds = time.perf_counter() - start
    chosen, lines = measured_tables(truth, scores)
    more, bucket_lines = bucket_tables()
    faces, face_lines = face_tables(truth, scores, lfw)
    chosen.update(more | faces)
    defaults = QualityConfig()
    header = [f"{len(truth)} fixture images + {len(lfw)} LFW border faces measured in {seconds:.0f} s "
              f"({platform.processor() or platform.machine()}, python {platform.python_version()})", "",
              "| option | chosen | default in QualityConfig |", "|---|---|---|"]
    mismatch = []
    for f in fields(QualityConfig):
        if f.name in chosen:
            default = getattr(defaults, f.name)
            header.append(f"| {f.name} | {chosen[f.name]:g} | {default:g} |")
            if not math.isclose(chosen[f.name], default):
                mismatch.append(f.name)
    text = "\n".join([*header, "", *lines, *bucket_lines, *face_lines, *summary(truth, scores, defaults)])
    print(text)
    if args.out:
        args.out.write_text(text + "\n", encoding="utf-8")
    if mismatch:
        print(f"defaults differ from the chosen thresholds: {', '.join(mismatch)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
