from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from curate.cli._common import Out, config_options, output_options
from curate.cli._flags import Flag, config_flags
from curate.config import CONFIG_NAME, stage_config
from curate.stages.quality.config import CHECKS, QualityConfig


def _skipped(names: tuple[str, ...]) -> tuple[str, ...]:
    """--skip none runs every check."""
    return tuple(name for name in names if name != "none")


@click.command("filter")
@click.argument("target", type=click.Path(path_type=Path))
@click.option("--out", type=click.Path(file_okay=False, path_type=Path),
              help="Plain folder: copy the images that pass (with captions) here, same relative paths.")
@config_flags(QualityConfig, "min_side", "max_aspect", "min_sharpness", Flag("faces", metavar="DETECTOR"),
              Flag("skip", multiple=True, choices=(*CHECKS, "none"), convert=_skipped,
                   note="--skip none runs them all."), "workers")
@click.option("--dry-run", is_flag=True, help="List what would be rejected or copied; change nothing.")
@config_options
@output_options
def command(target: Path, out: Path | None, flags: dict[str, Any], dry_run: bool, config_file: Path | None,
            overrides: tuple[str, ...], as_json: bool,
            quiet: bool, verbose: bool) -> None:
    """Reject images unfit for training, with a reason for each: blurry, too small, extreme
    aspect ratio, too dark or washed out, greyscale, heavy JPEG blocks, text-covered (opt-in),
    another person's face at the border.

    \b
    TARGET is a workspace (rejected images are marked and left out of later stages; each run
    replaces the previous run's marks; scores are stored, so changing a threshold re-judges
    without reading images) or a plain folder (a report; --out copies the images that pass).
    Every threshold is in the [filter] table of curate.toml and reachable with --set.

    \b
    Examples:
      curate filter ws --dry-run                 # what would go, and why
      curate filter ws --skip monochrome         # keep greyscale images
      curate filter ws --set filter.dark_below=40 --skip none
      curate filter ./raw --out ./clean          # copy the good ones (with captions)
    """
    from curate.stages.quality.run import quality_filter

    output = Out(as_json, quiet, verbose)
    config = stage_config(QualityConfig, "filter", config_file or target / CONFIG_NAME, overrides, flags)
    with output.progress("measuring") as progress:
        result = quality_filter(target, config, out=out, dry_run=dry_run, on_progress=progress)
    _print(output, result)


def _print(out: Out, result) -> None:  # type: ignore[no-untyped-def]
    if out.as_json:
        out.json(result.as_dict())
        return
    out.problems("skipped", result.skipped)
    out.problems("ignored", result.ignored, always=False)
    verb = "would reject" if result.dry_run else "rejected"
    if not out.quiet:
        out.listing([f"{verb}: {item.shown}: " + "; ".join(reason for _, reason in item.failures)
                     for item in result.rejected])
    counts = result.counts()
    out.summary(f"quality filter of {result.target}", counts, "images")
    if result.mode == "workspace":
        out.line(f"{verb} {len(result.rejected)} of {len(result.items)} images; later stages leave them out")
    elif result.out:
        verb = "would copy" if result.dry_run else "copied"
        out.line(f"{verb} {len(result.copied)} images to {result.out}")
    elif result.rejected:
        out.line(f"report only, nothing written: add --out DIR to copy the {counts['passed']} images "
                 "that pass")
