"""Tagging benchmark: does `Tagger.predict` keep the model busy while images are decoded?

Over a folder of N generated photos (crops of scikit-image's samples, 300-1600 px, JPEG and
PNG), with one model and one batch size, in the same process:

  (a) bare `session.run` on tensors preprocessed beforehand: the ceiling;
  (b) `Tagger.predict` on the files: decoding + preprocessing in threads, overlapping inference;
  (c) a sequential loop in the style of sd-scripts' `tag_images_by_wd14_tagger.py` with its
      default of no data-loader workers: load and preprocess a batch, then run it.

The tiny fixture model costs almost nothing to run, so with it every column measures decoding;
`--model-size base` builds a synthetic model with ~30 GMAC of convolutions per image (about
half a ViT-B / SwinV2-B tagger at 448 px) so that compute dominates as with real taggers.
`--model DIR` runs a real SmilingWolf model folder instead.

    python bench/tag_bench.py [--count 200] [--batch-size 8] [--model-size tiny base] [--model DIR]

Prints a Markdown table; the figures in docs/benchmarks.md (Tagging) come from this script.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from curate.tagging.engine import Tagger
from curate.tagging.preprocess import preprocess
from fixtures.scrape import PHOTOS, photo, random_crop
from fixtures.tiny_tagger import SIZES, build_tiny_tagger


def make_photos(out: Path, count: int, seed: int = 0) -> list[Path]:
    """`count` distinct photos: random crops and sizes, 85% JPEG, 15% PNG."""
    rng = np.random.default_rng(seed)
    sources = [photo(name).convert("RGB") for name in PHOTOS]
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(count):
        im = random_crop(sources[i % len(sources)], rng, (300, 1600))
        path = out / (f"{i:05d}.png" if rng.random() < 0.15 else f"{i:05d}.jpg")
        im.save(path, quality=int(rng.integers(85, 96))) if path.suffix == ".jpg" else im.save(path)
        paths.append(path)
    return paths


def sdscripts_style_preprocess(path: Path, size: int) -> np.ndarray:
    """What sd-scripts' tagger does per image (own equivalent): BGR, pad white, cv2 resize."""
    import cv2

    image = np.array(Image.open(path).convert("RGB"))[:, :, ::-1]
    h, w = image.shape[:2]
    side = max(h, w)
    top, left = (side - h) // 2, (side - w) // 2
    image = np.pad(image, ((top, side - h - top), (left, side - w - left), (0, 0)), constant_values=255)
    interp = cv2.INTER_AREA if side > size else cv2.INTER_LANCZOS4
    return cv2.resize(image, (size, size), interpolation=interp).astype(np.float32)


def bare(tagger: Tagger, batches: list[np.ndarray]) -> np.ndarray:
    return np.concatenate([tagger.run(batch) for batch in batches])


def predicted(tagger: Tagger, paths: Sequence[Path], batch_size: int) -> np.ndarray:
    rows = []
    for _index, probs, error in tagger.predict(paths, batch_size=batch_size):
        assert error is None, error
        rows.append(probs)
    return np.stack(rows)


def sequential(tagger: Tagger, paths: Sequence[Path], batch_size: int) -> np.ndarray:
    outputs = []
    for start in range(0, len(paths), batch_size):
        batch = [sdscripts_style_preprocess(p, tagger.input_size) for p in paths[start:start + batch_size]]
        outputs.append(tagger.run(np.stack(batch)))
    return np.concatenate(outputs)


def timed(fn: Callable[[], np.ndarray]) -> tuple[float, np.ndarray]:
    start = time.perf_counter()
    value = fn()
    return time.perf_counter() - start, value


def measure(tagger: Tagger, paths: list[Path], batch_size: int, repeat: int) -> dict[str, float]:
    """Best-of-`repeat` seconds per column (the least disturbed by other processes); checks
    that (b) gives the probabilities of (a)."""
    decode_s, arrays = timed(lambda: np.stack([preprocess(Image.open(p), tagger.input_size) for p in paths]))
    step = tagger.batch_limit or batch_size
    batches = [arrays[i:i + step] for i in range(0, len(arrays), step)]
    tagger.run(batches[0])  # warm-up: onnxruntime allocates and picks kernels on the first run
    runs: dict[str, list[float]] = {"bare": [], "predict": [], "sequential": []}
    for _ in range(repeat):  # interleaved so that drift in machine load hits all three alike
        seconds, reference = timed(lambda: bare(tagger, batches))
        runs["bare"].append(seconds)
        seconds, probs = timed(lambda: predicted(tagger, paths, batch_size))
        runs["predict"].append(seconds)
        np.testing.assert_allclose(probs, reference, rtol=0, atol=1e-5)
        runs["sequential"].append(timed(lambda: sequential(tagger, paths, batch_size))[0])
    return {"decode": decode_s, **{k: min(v) for k, v in runs.items()}}


def report(rows: list[tuple[str, dict[str, float]]], args: argparse.Namespace, tagger: Tagger) -> None:
    count = args.count
    print(f"\n{count} photos, batch {args.batch_size}, {tagger.providers[0]}, {tagger.workers} decode "
          f"threads, {os.cpu_count()} cores ({platform.machine()}), Python {platform.python_version()}, "
          f"best of {args.repeat}, load average {os.getloadavg()[0]:.2f}, "
          f"ort config {' '.join(args.ort_config) or 'onnxruntime defaults'}")
    if tagger.provider_note:
        print(f"note: {tagger.provider_note}")
    print("| model | decode+preprocess alone (1 thread) | (a) bare session.run | (b) Tagger.predict "
          "| (b)/(a) | (c) sequential, sd-scripts style | (b)/(c) |")
    print("|---|---|---|---|---|---|---|")
    for name, m in rows:
        rate = {k: count / v for k, v in m.items()}
        print(f"| {name} | {rate['decode']:,.1f} img/s | {rate['bare']:,.1f} img/s "
              f"| {rate['predict']:,.1f} img/s | {100 * m['bare'] / m['predict']:.0f}% "
              f"| {rate['sequential']:,.1f} img/s "
              f"| {m['sequential'] / m['predict']:.2f}x |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=200)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--model-size", nargs="+", choices=sorted(SIZES), default=["tiny", "base"])
    parser.add_argument("--model", type=Path, help="a real tagger folder (model.onnx + selected_tags.csv)")
    parser.add_argument("--workers", type=int, default=None, help="decode threads (default: min(4, cores))")
    parser.add_argument("--providers", nargs="+", default=None, help="default: CUDA if it works, else CPU")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--ort-config", nargs="+", default=[], metavar="KEY=VALUE",
                        help="onnxruntime session config, e.g. session.intra_op.allow_spinning=1")
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory(prefix="curate-tag-bench-") as tmp:
        paths = make_photos(Path(tmp) / "photos", args.count)
        models = ([(args.model.name, args.model)] if args.model else
                  [(f"synthetic {size}", build_tiny_tagger(Path(tmp) / size, size=size))
                   for size in args.model_size])
        for name, folder in models:
            tagger = Tagger(folder / "model.onnx", providers=args.providers, workers=args.workers,
                            ort_config=dict(item.split("=", 1) for item in args.ort_config))
            rows.append((name, measure(tagger, paths, args.batch_size, args.repeat)))
            print(f"{name}: done", file=sys.stderr)
    report(rows, args, tagger)
    print("\nreproduce: python bench/tag_bench.py " + " ".join(sys.argv[1:]))


if __name__ == "__main__":
    main()
