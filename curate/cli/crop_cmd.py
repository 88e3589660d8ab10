from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from curate.cli._common import Out, config_options, output_options
from curate.cli._flags import Flag, config_flags
from curate.config import CONFIG_NAME, stage_config
from curate.stages.crop.config import CropConfig


@click.command("crop")
@click.argument("target", type=click.Path(path_type=Path))
@click.option("--out", type=click.Path(file_okay=False, path_type=Path),
              help="Plain folder: write the crops here (same relative paths, with captions).")
@config_flags(CropConfig, "size", Flag("aspect", metavar="W:H|keep|bucket"), "fit", "max_upscale")
@click.option("--crops", "crops_file", type=click.Path(dir_okay=False, exists=True, path_type=Path),
              help="Your subject boxes, file,x,y,w,h per line; always win (default TARGET/crops.csv).")
@config_flags(CropConfig, Flag("sources", metavar="LIST"), Flag("faces", metavar="DETECTOR"), "face_closeups",
              "format", "workers")
@click.option("--dry-run", is_flag=True, help="Show each crop; write nothing.")
@config_options
@output_options
def command(target: Path, out: Path | None, flags: dict[str, Any], crops_file: Path | None, dry_run: bool,
            config_file: Path | None, overrides: tuple[str, ...], as_json: bool, quiet: bool,
            verbose: bool) -> None:
    """Crop each image of TARGET around its subject to a training size and aspect.

    \b
    The subject is your box in crops.csv when there is one, else (in --sources order) the
    opaque part of a cut-out, the faces, or what stands out (saliency). Nothing is enlarged
    beyond --max-upscale: an image too small for the target is written smaller and recorded.
    In a workspace the crops are stored beside the images and later stages (layout) use them;
    the originals are kept, and each run re-crops from them. A plain folder gets a report;
    --out writes the crops and their captions there.

    \b
    Examples:
      curate crop ws --dry-run                       # where each crop would go, and why
      curate crop ws --size 768 --aspect 2:3 --face-closeups
      curate crop ws --crops my_boxes.csv            # file,x,y,w,h: your boxes win
      curate crop ./raw --out ./cropped --aspect bucket
    """
    from curate.stages.crop.run import crop_images

    output = Out(as_json, quiet, verbose)
    config = stage_config(CropConfig, "crop", config_file or target / CONFIG_NAME, overrides, flags)
    with output.progress("cropping") as progress:
        result = crop_images(target, config, out=out, crops_file=crops_file, dry_run=dry_run,
                             on_progress=progress)
    _print(output, result)


def _line(item) -> str:  # type: ignore[no-untyped-def]
    main = item.outcome.pieces[0].window
    extra = f", {len(item.outcome.pieces) - 1} close-up(s)" if len(item.outcome.pieces) > 1 else ""
    flag = "  TOO SMALL" if main.small else ""
    return (f"{item.shown}: {main.out[0]}x{main.out[1]} from {main.box[2]}x{main.box[3]} at "
            f"({main.box[0]},{main.box[1]}), subject from {item.outcome.subject.source}{extra}{flag}")


def _print(out: Out, result) -> None:  # type: ignore[no-untyped-def]
    if out.as_json:
        out.json(result.as_dict())
        return
    out.problems("skipped", result.skipped)
    out.problems("warning", result.warnings)
    out.problems("ignored", result.ignored, always=False)
    done = result.done
    if not out.quiet:
        out.listing([_line(item) for item in done])
    counts = result.counts()
    out.summary(f"crops of {result.target}", counts, "images")
    if result.mode == "workspace":
        verb = "would store" if result.dry_run else "stored"
        out.line(f"{verb} {len(done)} crops; later stages use them in place of the originals")
    elif result.out:
        out.line(f"{'would write' if result.dry_run else 'wrote'} {sum(len(i.written) for i in done)} files "
                 f"to {result.out}")
    else:
        out.line("report only, nothing written: add --out DIR to write the crops")
