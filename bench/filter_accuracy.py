"""Accuracy of `curate.tagging.filter.filter_tags` on tagged datasets with planted tagger mistakes.

    python bench/filter_accuracy.py [--seeds 20] [--images 60] [--out FILE]

Each seed builds `fixtures.tag_dataset.build_tag_dataset` (one character, planted mistakes with
ground truth), runs the filter with the built-in rules and the fixture's confidence thresholds,
and compares what was removed with what was planted. Prints Markdown (and writes it to --out);
exits 1 when the default setting misses a target: >= 95% of the planted mistakes removed,
<= 2% of the true tags removed.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

# The fixtures package is not installed; it lives beside bench/.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from curate.tagging.filter import FilterConfig, filter_tags
from curate.tagging.rules import Rules, load_rules
from fixtures.tag_dataset import CONTRADICTIONS, MIN_CONFIDENCE, build_tag_dataset

PLANTED_TARGET, TRUE_TARGET = 0.95, 0.02
COMMAND = "python bench/filter_accuracy.py --seeds {seeds} --images {images}"


@dataclass
class Tally:
    planted: Counter[str] = field(default_factory=Counter)  # kind -> planted
    caught: Counter[str] = field(default_factory=Counter)  # kind -> removed
    true_tags: int = 0
    true_removed: Counter[str] = field(default_factory=Counter)  # rule kind -> true tags removed
    merges: int = 0
    merges_done: int = 0
    alternate: int = 0  # images with the legitimate second look ("black hair")
    alternate_kept: int = 0
    seconds: float = 0.0

    @property
    def caught_share(self) -> float:
        return sum(self.caught.values()) / max(1, sum(self.planted.values()))

    @property
    def true_share(self) -> float:
        return sum(self.true_removed.values()) / max(1, self.true_tags)


def run(rules: Rules, seeds: int, images: int, config: FilterConfig, contradictions: float = 1.0) -> Tally:
    tally = Tally()
    for seed in range(seeds):
        data = build_tag_dataset(seed, images, contradictions=contradictions)
        start = time.perf_counter()
        result = filter_tags(data.dataset, rules, config)
        tally.seconds += time.perf_counter() - start
        removed = {(r.image, r.tag): r.rule.split(":", 1)[0] for r in result.removals}
        for key, kind in data.planted.items():
            tally.planted[kind] += 1
            tally.caught[kind] += key in removed
        true_tags = data.true_tags
        tally.true_tags += len(true_tags)
        tally.true_removed.update(rule for key, rule in removed.items() if key in true_tags)
        added = {(a.image, a.tag) for a in result.additions}
        tally.merges += len(data.merged)
        tally.merges_done += len(data.merged & added)
        dyed = [image for image, tags in data.dataset.items() if any(t.name == "black hair" for t in tags)]
        tally.alternate += len(dyed)
        tally.alternate_kept += sum(any(t.name == "black hair" for t in result.dataset[i]) for i in dyed)
    return tally


def pct(part: float, whole: float) -> str:
    return f"{100 * part / whole:.1f}%" if whole else "-"


def table(header: list[str], rows: list[list[object]]) -> list[str]:
    align = ["---"] + ["---:"] * (len(header) - 1)
    return ["| " + " | ".join(map(str, row)) + " |" for row in (header, align, *rows)]


def main_table(tally: Tally) -> list[str]:
    rows: list[list[object]] = [
        [kind, tally.planted[kind], tally.caught[kind], pct(tally.caught[kind], tally.planted[kind])]
        for kind in sorted(tally.planted, key=lambda k: -tally.planted[k])
    ]
    planted, caught = sum(tally.planted.values()), sum(tally.caught.values())
    removed = sum(tally.true_removed.values())
    rows.append([f"**all planted** (target >= {PLANTED_TARGET:.0%})", planted, caught,
                 f"**{pct(caught, planted)}**"])
    rows.append([f"**true tags** (target <= {TRUE_TARGET:.0%})", tally.true_tags, removed,
                 f"**{pct(removed, tally.true_tags)}**"])
    lines = table(["tags", "in the datasets", "removed", "share removed"], rows)
    by_rule = [[rule, count] for rule, count in tally.true_removed.most_common()] or [["(none)", 0]]
    lines += ["", *table(["true tags removed, by rule", "count"], by_rule), ""]
    lines.append(f'Merges expected ("boots" + "brown footwear" -> "brown boots"): {tally.merges}, done: '
                 f"{tally.merges_done}. Images with the legitimate second look (dyed black hair): "
                 f"{tally.alternate}, still tagged so after filtering: {tally.alternate_kept}.")
    return lines


def contradictions_caught(tally: Tally) -> str:
    return pct(sum(tally.caught[k] for k in CONTRADICTIONS), sum(tally.planted[k] for k in CONTRADICTIONS))


def sweeps(rules: Rules, seeds: int, images: int) -> list[str]:
    base = FilterConfig(min_confidence=MIN_CONFIDENCE)
    rows: list[list[object]] = []
    for share in (0.05, 0.10, 0.15, 0.25, 0.35):
        tally = run(rules, seeds, images, FilterConfig(min_share=share, min_confidence=MIN_CONFIDENCE))
        rows.append([f"{share:.2f}", contradictions_caught(tally), pct(tally.alternate_kept, tally.alternate),
                     pct(tally.true_share, 1)])
    lines = ["### min_share", "", *table(
        ["min_share", "contradictions removed", "second look kept", "true tags removed"], rows)]
    rows = []
    for scale in (1, 2, 3, 4, 6):
        tally = run(rules, seeds, images, base, contradictions=scale)
        rows.append([f"x{scale}", contradictions_caught(tally), pct(tally.true_share, 1)])
    lines += ["", "### More wrong values", "",
              "The planted contradictions multiplied (x1: 4 wrong hair colours, 3 eye colours, 3 hair "
              "lengths and 2 breast sizes per 60 images, each drawn from 2-3 wrong values).", "",
              *table(["contradictions", "contradictions removed", "true tags removed"], rows)]
    rows = []
    for size in (12, 30, 60, 200):
        tally = run(rules, seeds, size, base)
        rows.append([size, pct(tally.caught_share, 1), pct(tally.true_share, 1)])
    lines += ["", "### Dataset size", "", *table(["images", "planted removed", "true tags removed"], rows)]
    return lines


def render(seeds: int, images: int) -> tuple[str, Tally]:
    rules = load_rules()
    config = FilterConfig(min_confidence=MIN_CONFIDENCE)
    tally = run(rules, seeds, images, config)
    per_run = 1000 * tally.seconds / seeds
    text = [
        "# Tag filter accuracy (`bench/filter_accuracy.py`)", "",
        "```sh", "make venv && .venv/bin/" + COMMAND.format(seeds=seeds, images=images), "```", "",
        f"{seeds} seeded datasets of {images} images (`fixtures/tag_dataset.py`): one character (blonde, "
        "blue eyes, long hair) in four outfits, 3 images with a second, brown-haired girl, ~20% of the "
        "single-person images with a legitimate second look (dyed black hair), and planted tagger mistakes. "
        f"Filter: built-in rules, `FilterConfig(min_confidence={MIN_CONFIDENCE})`, other settings default "
        f"(min_share 0.15). {per_run:.1f} ms per dataset (Python {platform.python_version()}, "
        f"{os.cpu_count()} cores).", "",
        "## Default setting", "", *main_table(tally), "",
        "## Sensitivity", "", "Same fixture, one setting changed.", "", *sweeps(rules, seeds, images), "",
        "## What the figures do not show", "",
        "- The fixture and the default rules were written together: every redundant pair and wrong value "
        "planted is one the rules cover, so the first table measures that the rules do what they claim, "
        "not how much of a real tagger's vocabulary they cover (a garment missing from the pattern lists "
        "is not caught). The sensitivity tables are the test of the statistical exclusive rule.",
        "- The fixture is made by hand to look like WD14 output; its true tags contain no implied pair, "
        "so `implies` costs nothing here. A real tagger's weak true tags below the threshold are "
        "modelled by 2% of the scene tags at 0.30-0.35; they are the true tags removed above.",
        "- The few redundant tags kept are \"simple background\" in images whose weak true "
        "\"white background\" fell below the threshold first: then it is no longer redundant, and keeping "
        "it is right.",
        "- An image whose only hair-colour tag was wrong ends with no hair-colour tag: the filter never "
        "adds a tag except by merging. That is a missing tag, not a wrong one.",
        "- At 12 images (9 single-person) a group whose majority tag is in fewer than 5 images is left "
        "alone (`min_majority_images`): the misses in that row are such groups.",
        "- A wrong value the tagger repeats in more than min_share of the images (a whole scene shot in "
        "dark light) is indistinguishable from a second look and stays: see the min_share table.",
    ]
    return "\n".join(text) + "\n", tally


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=20, help="datasets to build (seeds 0..N-1)")
    parser.add_argument("--images", type=int, default=60, help="images per dataset")
    parser.add_argument("--out", type=Path, help="also write the Markdown here")
    args = parser.parse_args()
    text, tally = render(args.seeds, args.images)
    print(text)
    if args.out:
        args.out.write_text(text, encoding="utf-8")
    if tally.caught_share < PLANTED_TARGET or tally.true_share > TRUE_TARGET:
        print(f"target missed: {tally.caught_share:.1%} planted removed, {tally.true_share:.1%} true removed")
        sys.exit(1)


if __name__ == "__main__":
    main()
