"""Caption benchmark: does `curate caption` keep a local model generating while images are decoded?

For each model (the tiny fixture families of fixtures/tiny_vlm.py at `--size tiny` and/or
`wide`, or a model folder given with `--model`), over a plain folder of N photos (crops of
scikit-image's samples, 400-1200 px JPEGs), with one batch size and one max_new_tokens, in the
same process and with the same loaded model:

  (a) a bare loop, what a user's own script does: per batch, open + convert the images,
      `processor(...)`, `model.generate(...)` greedy (do_sample False, num_beams 1), decode;
      its prompt rendered here from the processor's chat template (Florence-2: the task token);
  (b) `LocalCaptioner.caption` (curate.tagging.vlm) on the files: a feeder thread decodes and
      preprocesses the next batch while the model generates;
  (c) `curate caption DIR` as the library runs it (curate.stages.caption.run.caption, with the
      loaded captioner passed in): listing, content hashes, prompts, cache lookups, (b), the
      caption checks, one atomic .caption file and one cache row per image. Each run gets a fresh
      cache folder and --existing overwrite, so every image is generated again.

A warm-up run of each first, then `--repeat` interleaved runs, best of them (the least disturbed
by other processes). The script asserts that (b) gives (a)'s text for every image and that every
caption (c) stored is (a)'s text, so the three measure the same work.

    python bench/caption_bench.py [--count 24] [--batch-size 4] [--max-new-tokens 32]
        [--size tiny wide] [--family NAME ...] [--model DIR ...] [--threads N] [--repeat 3]

Prints a Markdown table; the figures in docs/benchmarks.md (Captions) come from this script.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from curate.stages.caption.config import CaptionConfig
from curate.stages.caption.run import caption
from curate.tagging.vlm import Request, load_local
from curate.tagging.vlm.captioner import LocalCaptioner
from curate.tagging.vlm.checks import clean
from curate.tagging.vlm.prompts import FLORENCE, Values, prompt_for
from fixtures.scrape import PHOTOS, photo, random_crop
from fixtures.tiny_vlm import FAMILIES, SIZES, build_tiny_vlm

PRESET = "detailed"


def make_photos(out: Path, count: int, seed: int = 0) -> list[Path]:
    """`count` distinct JPEG photos: random crops of the sample photos, 400-1200 px long side."""
    rng = np.random.default_rng(seed)
    sources = [photo(name).convert("RGB") for name in PHOTOS]
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(count):
        image = random_crop(sources[i % len(sources)], rng, (400, 1200))
        path = out / f"{i:05d}.jpg"
        image.save(path, quality=int(rng.integers(85, 96)))
        paths.append(path)
    return paths


def ask_text(family: str) -> str:
    """What the model is asked: the preset's words, as `curate caption --preset detailed` asks."""
    return prompt_for(FLORENCE if family == "florence2" else family, PRESET, None, Values())


def bare_prompt(processor: Any, family: str, ask: str) -> str:
    """The prompt as a user's script writes it: Florence-2's task token, else one user message
    with the image and the question through the processor's own chat template."""
    if family == "florence2":
        return ask
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": ask}]}]
    return processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)


def bare_loop(model: Any, processor: Any, prompt: str, paths: list[Path], batch_size: int,
              max_new_tokens: int) -> list[str]:
    """(a): one batch after the other, nothing overlapped, no per-image error handling."""
    import torch

    encoder_decoder = bool(getattr(model.config, "is_encoder_decoder", False))
    if not encoder_decoder:
        processor.tokenizer.padding_side = "left"  # batched decoder-only generation needs it
    texts: list[str] = []
    for start in range(0, len(paths), batch_size):
        images = [Image.open(path).convert("RGB") for path in paths[start:start + batch_size]]
        inputs = processor(images=images, text=[prompt] * len(images), padding=True,
                           return_tensors="pt").to(model.device)
        inputs["pixel_values"] = inputs["pixel_values"].to(model.dtype)
        with torch.inference_mode():
            ids = model.generate(**inputs, do_sample=False, num_beams=1, max_new_tokens=max_new_tokens)
        new = ids if encoder_decoder else ids[:, inputs["input_ids"].shape[1]:]
        texts += [text.strip() for text in processor.batch_decode(new, skip_special_tokens=True)]
    return texts


def captioner_run(captioner: LocalCaptioner, ask: str, paths: list[Path], batch_size: int) -> list[str]:
    """(b)"""
    results = list(captioner.caption([Request(path, ask) for path in paths], batch_size=batch_size))
    assert all(result.error is None for result in results), [r.error for r in results if r.error]
    return [str(result.text) for result in results]


def stage_run(captioner: LocalCaptioner, model: Path, folder: Path, cache: Path, batch_size: int,
              max_new_tokens: int) -> dict[str, str]:
    """(c): image file name -> stored caption (a caption a check refused is generated, not stored)."""
    os.environ["CURATE_CACHE_DIR"] = str(cache)  # fresh per run: nothing answered from the cache
    config = CaptionConfig(model=str(model), preset=PRESET, max_tokens=max_new_tokens, batch_size=batch_size,
                           existing="overwrite")
    result = caption(folder, config, backend=captioner)
    assert result.generated == len(list(folder.glob("*.jpg"))), result.counts
    return {Path(shown).name: text for shown, text in result.captions}


def timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    start = time.perf_counter()
    value = fn()
    return time.perf_counter() - start, value


@dataclass
class Row:
    name: str
    params: int
    seconds: dict[str, float]
    stored: int  # captions the stage stored (the rest were refused by a check)


def measure(name: str, model_dir: Path, paths: list[Path], tmp: Path, args: argparse.Namespace) -> Row:
    captioner = load_local(str(model_dir), max_new_tokens=args.max_new_tokens)
    ask = ask_text(captioner.family)
    prompt = bare_prompt(captioner.processor, captioner.family, ask)
    assert prompt == captioner.prompt_text(ask), (prompt, captioner.prompt_text(ask))
    folder, batch, new = paths[0].parent, args.batch_size, args.max_new_tokens
    columns: dict[str, Callable[[int], Any]] = {
        "bare": lambda _: bare_loop(captioner.model, captioner.processor, prompt, paths, batch, new),
        "captioner": lambda _: captioner_run(captioner, ask, paths, batch),
        "stage": lambda run: stage_run(captioner, model_dir, folder, tmp / f"cache-{name}-{run}", batch, new),
    }
    runs: dict[str, list[float]] = {key: [] for key in columns}
    stored = 0
    for run in range(args.repeat + 1):  # run 0 is the warm-up; the columns interleave against drift
        found = {key: timed(lambda fn=fn, run=run: fn(run)) for key, fn in columns.items()}  # type: ignore[misc]
        reference = found["bare"][1]
        assert found["captioner"][1] == reference, f"{name}: the captioner's text differs from the bare loop"
        by_file = {path.name: clean(text) for path, text in zip(paths, reference, strict=True)}
        assert all(by_file[file] == text for file, text in found["stage"][1].items()), \
            f"{name}: a stored caption differs from the bare loop's"
        stored = len(found["stage"][1])
        if run:
            for key, (seconds, _) in found.items():
                runs[key].append(seconds)
    params = sum(p.numel() for p in captioner.model.parameters())
    captioner.close()
    return Row(name, params, {key: min(values) for key, values in runs.items()}, stored)


def report(rows: list[Row], args: argparse.Namespace, load: tuple[float, float]) -> None:
    import torch
    import transformers

    print(f"\n{args.count} photos (400-1200 px JPEG), batch {args.batch_size}, max_new_tokens "
          f"{args.max_new_tokens}, greedy, CPU float32, torch {torch.__version__} "
          f"({torch.get_num_threads()} intra-op threads), transformers {transformers.__version__}, "
          f"{os.cpu_count()} cores ({platform.machine()}), Python {platform.python_version()}, best of "
          f"{args.repeat} after a warm-up, load average {load[0]:.2f} at the start, {load[1]:.2f} at the end")
    print("| model | params | (a) bare loop | (b) LocalCaptioner.caption | (b)/(a) "
          "| (c) curate caption | (c)/(a) | stored by (c) |")
    print("|---|---|---|---|---|---|---|---|")
    for row in rows:
        rate = {key: args.count / seconds for key, seconds in row.seconds.items()}
        print(f"| {row.name} | {row.params / 1e6:.1f} M | {rate['bare']:.2f} /s | {rate['captioner']:.2f} /s "
              f"| {rate['captioner'] / rate['bare']:.2f} | {rate['stage']:.2f} /s "
              f"| {rate['stage'] / rate['bare']:.2f} | {row.stored}/{args.count} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=24)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--size", nargs="*", choices=sorted(SIZES), default=["tiny", "wide"])
    parser.add_argument("--family", nargs="+", choices=sorted(FAMILIES), default=sorted(FAMILIES))
    parser.add_argument("--model", type=Path, nargs="+", default=[], help="local model folders to add")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    load = os.getloadavg()[0]
    rows = []
    with tempfile.TemporaryDirectory(prefix="curate-caption-bench-") as tmp:
        paths = make_photos(Path(tmp) / "photos", args.count)
        models = [(folder.name, folder) for folder in args.model]
        models += [(f"{FAMILIES[family][0].replace('-tiny', '')} {size}",
                    build_tiny_vlm(Path(tmp) / "models", family, size))
                   for size in args.size for family in args.family]
        for name, folder in models:
            rows.append(measure(name, folder, paths, Path(tmp), args))
            print(f"{name}: done", file=sys.stderr)
    report(rows, args, (load, os.getloadavg()[0]))
    print("\nreproduce: python bench/caption_bench.py " + " ".join(sys.argv[1:]))


if __name__ == "__main__":
    main()
