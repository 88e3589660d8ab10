from __future__ import annotations

from pathlib import Path

import click

from curate.cli._common import Out, output_options


@click.group("lora")
def command() -> None:
    """Work on trained network files.

    \b
    Examples:
      curate lora export ia3/last.safetensors --model ./sd15-diffusers --to lora --out last-lora.safetensors
    """


@command.command("export")
@click.argument("network", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--model", required=True, type=click.Path(exists=True, path_type=Path),
              help="The base model the network was trained on: a diffusers folder.")
@click.option("--to", "target", type=click.Choice(["lora"]), default="lora", show_default=True,
              help="Format to write.")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="File to write (default: NETWORK-lora.safetensors beside NETWORK).")
@click.option("--save-precision", type=click.Choice(["fp16", "bf16", "float"]), default="fp16",
              show_default=True, help="Precision of the written weights.")
@output_options
def export(network: Path, model: Path, target: str, out: Path | None, save_precision: str,
           as_json: bool, quiet: bool, verbose: bool) -> None:
    """Turn an iA3 file into an exact LoRA that ComfyUI, diffusers, Forge and sd-scripts load.

    \b
    The LoRA gives the same model as the iA3 at every strength, but is much larger: each
    layer stores a full-rank factorisation of the change (docs/lora-export.md). --model must
    be the diffusers folder the iA3 was trained on.

    \b
    Examples:
      curate lora export ia3/last.safetensors --model ./sd15 --to lora --out last-lora.safetensors
      curate lora export ia3/last.safetensors --model ./sd15 --save-precision float --json
    """
    from curate.errors import CurateError

    try:
        from trainer.export import describe, export_ia3_to_lora
    except ImportError as exc:
        raise CurateError(f"exporting needs the train extra ({exc}); pip install 'curate[train]'") from exc
    o = Out(as_json, quiet, verbose)
    out = out or network.with_name(f"{network.stem}-lora.safetensors")
    result = export_ia3_to_lora(network, model, out, save_precision)
    if as_json:
        o.json({"to": target, **result.as_dict()})
        return
    o.line(f"wrote {result.output}: {describe(result)}")
    if result.skipped_zero:
        o.line(f"left out {len(result.skipped_zero)} layers whose scales are all zero")
    if verbose:
        o.table("layers", [(x.name, "input" if x.on_input else "output", x.rank, f"{x.bytes:,}")
                           for x in result.layers], ("layer", "scales", "rank", "bytes"))
