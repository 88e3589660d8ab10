from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from curate.cli._common import Out, config_options, output_options
from curate.cli._flags import Flag, config_flags
from curate.config import CONFIG_NAME, stage_config
from curate.stages.background.config import BgConfig


@click.command("bg")
@click.argument("target", type=click.Path(path_type=Path))
@click.option("--out", type=click.Path(file_okay=False, path_type=Path),
              help="Plain folder: write NAME.png cut-outs here (same relative paths, with captions).")
@config_flags(BgConfig, "method", Flag("model", metavar="NAME"),
              Flag("model_path", type=click.Path(dir_okay=False)), "download",
              Flag("fill", metavar="transparent|white|black|#RRGGBB"), "alpha_matting", "mask_only")
@config_options
@output_options
def command(target: Path, out: Path | None, flags: dict[str, Any], config_file: Path | None,
            overrides: tuple[str, ...], as_json: bool, quiet: bool,
            verbose: bool) -> None:
    """Remove the background of each image of TARGET, keeping the mask as its alpha channel.

    \b
    The output is a PNG whose alpha is the subject mask (train with Kohya's --alpha_mask to
    use it as a loss mask) and whose colours are the subject over --fill. In a workspace the
    cut-outs stand in for the images (or their crops) in later stages; a plain folder gets a
    report, and --out writes the cut-outs there. --method grabcut needs no model: it models
    the subject inside the centre box (bg.margin of each side outside).

    \b
    Examples:
      curate bg ws --model isnet-anime --fill white
      curate bg ./raw --out ./cut --method grabcut
      curate bg ./raw --out ./masks --mask-only --model-path ~/models/my_u2net.onnx
    """
    from curate.stages.background import remove_backgrounds

    output = Out(as_json, quiet, verbose)
    config = stage_config(BgConfig, "bg", config_file or target / CONFIG_NAME, overrides, flags)
    with output.progress("removing backgrounds") as progress:
        result = remove_backgrounds(target, config, out=out, on_progress=progress)
    _print(output, result)


def _print(out: Out, result) -> None:  # type: ignore[no-untyped-def]
    if out.as_json:
        out.json(result.as_dict())
        return
    out.line(result.device)
    out.problems("skipped", result.skipped)
    out.problems("ignored", result.ignored, always=False)
    done = result.done
    if not out.quiet:
        out.listing([f"{item.shown}: {item.size[0]}x{item.size[1]}, subject {item.subject:.0%}"
                     for item in done])
    out.summary(f"backgrounds of {result.target}", result.counts(), "images")
    if result.mode == "workspace":
        out.line(f"stored {len(done)} cut-outs; later stages use them (alpha = mask)")
    elif result.out:
        out.line(f"wrote {sum(len(i.written) for i in done)} files to {result.out}")
    else:
        out.line("report only, nothing written: add --out DIR to write the cut-outs")
