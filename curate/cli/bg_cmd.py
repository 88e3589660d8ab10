from __future__ import annotations

from pathlib import Path

import click

from curate.cli._common import Out, config_options, output_options
from curate.config import CONFIG_NAME, stage_config


@click.command("bg")
@click.argument("target", type=click.Path(path_type=Path))
@click.option("--out", type=click.Path(file_okay=False, path_type=Path),
              help="Plain folder: write NAME.png cut-outs here (same relative paths, with captions).")
@click.option("--method", type=click.Choice(["rembg", "grabcut"]), default=None,
              help="rembg: a segmentation model (default); grabcut: OpenCV, no model needed.")
@click.option("--model", default=None, metavar="NAME",
              help="rembg model: u2net (default), isnet-anime, isnet-general-use, birefnet-general, ...")
@click.option("--model-path", default=None, type=click.Path(dir_okay=False, path_type=Path),
              help="A local u2net-style .onnx model, used where it lies.")
@click.option("--no-download", "no_download", is_flag=True, default=None,
              help="Never download a model: fail, saying which file to put where.")
@click.option("--fill", default=None, metavar="transparent|white|black|#RRGGBB",
              help="Background colour of the output (default transparent); the alpha keeps the mask.")
@click.option("--alpha-matting", is_flag=True, default=None, help="Refine soft edges (rembg).")
@click.option("--mask-only", is_flag=True, default=None, help="Write only the masks (greyscale PNG).")
@config_options
@output_options
def command(target: Path, out: Path | None, method: str | None, model: str | None, model_path: Path | None,
            no_download: bool | None, fill: str | None, alpha_matting: bool | None, mask_only: bool | None,
            config_file: Path | None, overrides: tuple[str, ...], as_json: bool, quiet: bool,
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
    from curate.stages.background import BgConfig, remove_backgrounds

    output = Out(as_json, quiet, verbose)
    config = stage_config(BgConfig, "bg", config_file or target / CONFIG_NAME, overrides, {
        "method": method, "model": model, "model_path": str(model_path) if model_path else None,
        "download": False if no_download else None, "fill": fill, "alpha_matting": alpha_matting,
        "mask_only": mask_only})
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
