"""How much of a known subject `curate crop` keeps, per subject source and setting.

    python bench/crop_accuracy.py [--images DIR] [--out FILE]

The set is `fixtures/quality.py`'s crop cases (built into a temporary folder unless --images
names one with a boxes.json): real photos with hand-drawn subject boxes (at 2x, so that a
512 px crop is a choice), LFW faces, cut-outs with transparency and an object on a plain
backdrop, each at the left, middle and right of wide and tall canvases, and a user box.
For each case and setting the crop window is planned exactly as the stage plans it
(`render.plan`); "kept" is the share of the subject box's area inside the window, and
"window" the share of the image the crop takes (smaller is tighter).

The saliency level (how far above the map's mean a region must be) is chosen as the highest,
so the tightest boxes, below the first level that keeps less than 95% of some saliency case's
subject. Exits 1 when a case keeps less than 95% at the defaults, or when the default level
is not the chosen one.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script from anywhere, without installing
    sys.path.insert(0, str(ROOT))

from PIL import Image  # noqa: E402

from curate.stages.crop.config import CropConfig  # noqa: E402
from curate.stages.crop.render import plan  # noqa: E402
from fixtures.quality import CropCase, build_crop_set, load_crop_truth  # noqa: E402

TARGET = 0.95
LEVELS = (1.0, 1.25, 1.5, 2.0, 2.5, 3.0)
SETTINGS = {
    "default (512, 1:1, subject)": CropConfig(),
    "fit max": CropConfig(fit="max"),
    "384, 2:3": CropConfig(size=384, aspect="2:3"),
    "256, 1:1 (tight)": CropConfig(size=256),
    "bucket": CropConfig(aspect="bucket"),
}


def evaluate(images: dict[str, Image.Image], truth: dict[str, CropCase], config: CropConfig
             ) -> dict[str, tuple[str, float, float]]:
    """File -> (source that placed the crop, share of the subject kept, share of the image used)."""
    out = {}
    for file, case in truth.items():
        image = images[file]
        outcome = plan(image, config, case.user)
        window = outcome.pieces[0].window
        area = window.box[2] * window.box[3] / (image.width * image.height)
        out[file] = (outcome.subject.source if outcome.subject else "-", window.kept(case.box), area)
    return out


def level_table(images: dict[str, Image.Image], truth: dict[str, CropCase]) -> tuple[float, list[str]]:
    cases = {f: c for f, c in truth.items() if c.finds == "saliency"}
    lines = ["### saliency level (saliency cases, defaults otherwise)", "",
             "| level | cases keeping >= 95% | least kept | mean window share |", "|---|---|---|---|"]
    rows = []
    for level in LEVELS:
        got = evaluate(images, cases, replace(CropConfig(), saliency_level=level))
        kept = [k for _, k, _ in got.values()]
        share = sum(a for *_, a in got.values()) / len(got)
        rows.append((level, sum(k >= TARGET for k in kept), min(kept), share))
    # the last level before the first one that loses a subject: tighter levels may pass again
    # by luck, but a level between two safe ones must not lose anything
    safe = [row[0] for row in rows[:next((i for i, r in enumerate(rows) if r[1] < len(cases)), len(rows))]]
    chosen = max(safe) if safe else LEVELS[0]
    lines += [f"| {lv:g}{' **chosen**' if lv == chosen else ''} | {ok}/{len(cases)} | {least:.2f} | "
              f"{share:.2f} |" for lv, ok, least, share in rows]
    return chosen, [*lines, ""]


def tables(images: dict[str, Image.Image], truth: dict[str, CropCase]) -> tuple[bool, list[str]]:
    summary = ["### every setting, per subject source", "",
               "| setting | finds | cases | keeping >= 95% | least kept | right source | mean window share |",
               "|---|---|---|---|---|---|---|"]
    ok = True
    per_case: dict[str, tuple[str, float, float]] = {}
    for name, config in SETTINGS.items():
        got = evaluate(images, truth, config)
        per_case = per_case or got
        for finds in ("user", "alpha", "face", "saliency"):
            files = [f for f, c in truth.items() if c.finds == finds]
            kept = [got[f][1] for f in files]
            right = sum(got[f][0] == finds for f in files)
            share = sum(got[f][2] for f in files) / len(files)
            summary.append(f"| {name} | {finds} | {len(files)} | {sum(k >= TARGET for k in kept)} | "
                           f"{min(kept):.2f} | {right}/{len(files)} | {share:.2f} |")
        ok = ok if name != next(iter(SETTINGS)) else all(k >= TARGET for _, k, _ in got.values())
    cases = ["### each case at the defaults", "", "| file | finds | found by | kept | window share |",
             "|---|---|---|---|---|"]
    cases += [f"| {f} | {truth[f].finds} | {src} | {kept:.2f} | {share:.2f} |"
              for f, (src, kept, share) in sorted(per_case.items())]
    return ok, [*summary, "", *cases, ""]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=Path, help="a folder built by fixtures.quality (with boxes.json)")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        folder = args.images or build_crop_set(Path(tmp))
        truth = load_crop_truth(folder)
        images = {f: Image.open(folder / f) for f in truth}
        for image in images.values():
            image.load()
        start = time.perf_counter()
        level, level_lines = level_table(images, truth)
        ok, lines = tables(images, truth)
        seconds = time.perf_counter() - start
    header = [f"{len(truth)} crop cases, {len(SETTINGS)} settings + {len(LEVELS)} saliency levels "
              f"in {seconds:.0f} s; saliency level chosen {level:g}, "
              f"default {CropConfig().saliency_level:g}", ""]
    text = "\n".join([*header, *level_lines, *lines])
    print(text)
    if args.out:
        args.out.write_text(text + "\n", encoding="utf-8")
    if not ok or level != CropConfig().saliency_level:
        print("a default crop keeps less than 95% of a subject, or the saliency level differs",
              file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
