from __future__ import annotations

from pathlib import Path

import click

from curate.cli._common import Out, output_options

ALLOW_PICKLE = click.option(
    "--allow-pickle", is_flag=True,
    help="Read a .ckpt/.pt (pickle) checkpoint, with torch.load(weights_only=True); refused by default "
    "because a pickle can run code when loaded.")


@click.group("lora")
def command() -> None:
    """Work on trained network files.

    \b
    Examples:
      curate lora info last.safetensors
      curate lora resize last.safetensors --dim 16 --out last-16.safetensors
      curate lora extract --base ./sd15 --tuned ./finetune.safetensors --dim 128 --out distilled.safetensors
      curate lora export ia3/last.safetensors --model ./sd15-diffusers --to lora --out last-lora.safetensors
      curate lora merge --base ./sd15 char.safetensors:0.8 --out ./sd15-char
      curate lora blocks OUTALL
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
@click.option("--allow-pickle", is_flag=True,
              help="Read a base model whose weights are pickles (.bin; tensors only, with torch.load "
              "weights_only; still only from sources you trust).")
@output_options
def export(network: Path, model: Path, target: str, out: Path | None, save_precision: str,
           allow_pickle: bool, as_json: bool, quiet: bool, verbose: bool) -> None:
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
        from curate.trainer.export import describe, export_ia3_to_lora
    except ImportError as exc:
        raise CurateError(f"exporting needs the train extra ({exc}); pip install 'curate[train]'") from exc
    o = Out(as_json, quiet, verbose)
    out = out or network.with_name(f"{network.stem}-lora.safetensors")
    result = export_ia3_to_lora(network, model, out, save_precision, allow_pickle=allow_pickle)
    if as_json:
        o.json({"to": target, **result.as_dict()})
        return
    o.line(f"wrote {result.output}: {describe(result)}")
    if result.skipped_zero:
        o.line(f"left out {len(result.skipped_zero)} layers whose scales are all zero")
    if verbose:
        o.table("layers", [(x.name, "input" if x.on_input else "output", x.rank, f"{x.bytes:,}")
                           for x in result.layers], ("layer", "scales", "rank", "bytes"))


def _tools(what: str) -> None:
    from curate.errors import CurateError

    try:
        import torch  # noqa: F401
    except ImportError as exc:
        raise CurateError(f"{what} needs the train extra ({exc}); pip install 'curate[train]'") from exc


@command.command("info")
@click.argument("network", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--tags", "top_tags", type=click.IntRange(min=0), default=20, show_default=True,
              help="How many of the most frequent training tags to show (0: none).")
@output_options
def info(network: Path, top_tags: int, as_json: bool, quiet: bool, verbose: bool) -> None:
    """Show what a LoRA / LyCORIS / iA3 file is: kind, ranks, alphas, base model, training
    settings and the tags it was trained on (read from the header; pickles are never opened).

    \b
    Examples:
      curate lora info last.safetensors
      curate lora info someone-elses-locon.safetensors --tags 50
      curate lora info last.safetensors --json | jq .training
    """
    _tools("reading network files")
    from curate.trainer.tools.info import lora_info

    o = Out(as_json, quiet, verbose)
    result = lora_info(network)
    shown = result.tags if verbose else result.tags[:top_tags]
    if as_json:
        o.json({**result.as_dict(), "tags": [{"tag": t, "count": n} for t, n in shown],
                "distinct_tags": len(result.tags)})
        return
    parts = ", ".join(f"{part} {n}" for part, n in result.modules.items()) or "no modules"
    alphas = ", ".join(f"{a:g}" for a, _n in result.alphas) or "-"
    o.line(f"{network.name}: {result.kind}, {parts}; dim {result.dims.text()}, conv dim "
           f"{result.conv_dims.text()}, alpha {alphas}; {result.parameters:,} parameters "
           f"({', '.join(result.dtypes)}), {result.size:,} bytes")
    if not result.has_metadata:
        o.line("no metadata: base model, training settings and tags are unknown")
    if result.base_model:
        o.table("base model", list(result.base_model.items()), ("field", "value"))
    if result.training:
        o.table("training", list(result.training.items()), ("setting", "value"))
    if shown:
        o.table(f"tags ({len(shown)} of {len(result.tags)})", shown, ("tag", "count"))
    for warning in result.warnings:
        o.line(f"warning: {warning}")


@command.command("resize")
@click.argument("network", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--dim", "new_dim", required=True, type=click.IntRange(min=1),
              help="The new rank (with --dynamic: the largest rank a module may keep).")
@click.option("--conv-dim", type=click.IntRange(min=1), default=None,
              help="The new rank of 3x3 conv modules (default: --dim).")
@click.option("--dynamic", type=click.Choice(["sv_ratio", "sv_fro", "sv_cumulative"]), default=None,
              help="Pick each module's rank from its singular values (needs --param).")
@click.option("--param", type=float, default=None,
              help="sv_ratio: keep s >= s_max/X; sv_fro: keep X of the Frobenius norm; "
                   "sv_cumulative: keep X of sum(s).")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="File to write (default: NETWORK-dimN.safetensors beside NETWORK).")
@click.option("--save-precision", type=click.Choice(["fp16", "bf16", "float"]), default=None,
              help="Precision of the written weights (default: the source's).")
@click.option("--device", default="cpu", show_default=True, help="Where to run the SVDs (cpu, cuda).")
@output_options
def resize(network: Path, new_dim: int, conv_dim: int | None, dynamic: str | None, param: float | None,
           out: Path | None, save_precision: str | None, device: str, as_json: bool, quiet: bool,
           verbose: bool) -> None:
    """Lower a LoRA's rank by SVD and report the error per module (docs/lora-tools.md).

    \b
    The file keeps its alpha/rank ratio, so the same strength gives the same effect.
    Examples:
      curate lora resize last.safetensors --dim 16 --out last-16.safetensors
      curate lora resize last.safetensors --dim 64 --dynamic sv_fro --param 0.9 -v
      curate lora resize last.safetensors --dim 8 --save-precision fp16 --json
    """
    _tools("resizing")
    from curate.trainer.tools.resize import describe, resize_lora

    o = Out(as_json, quiet, verbose)
    out = out or network.with_name(f"{network.stem}-dim{new_dim}.safetensors")
    result = resize_lora(network, out, new_dim, conv_dim=conv_dim, dynamic=dynamic, param=param,
                         save_precision=save_precision, device=device)
    if as_json:
        o.json(result.as_dict())
        return
    o.line(f"wrote {result.output}: {describe(result)}")
    layers = result.layers if verbose else sorted(result.layers, key=lambda x: -x.error)[:10]
    o.table("modules" if verbose else "modules with the largest error",
            [(x.name, f"{x.old_rank} -> {x.new_rank}", f"{x.energy:.2%}", f"{x.error:.2%}") for x in layers],
            ("module", "rank", "energy kept", "error"))


@command.command("extract")
@click.option("--base", required=True, type=click.Path(exists=True, path_type=Path),
              help="The original model: a diffusers folder or a single-file checkpoint.")
@click.option("--tuned", required=True, type=click.Path(exists=True, path_type=Path),
              help="The fine-tuned model: the LoRA is TUNED - BASE.")
@click.option("--dim", required=True, type=click.IntRange(min=1), help="Rank of the LoRA.")
@click.option("--conv-dim", type=click.IntRange(min=1), default=None,
              help="Also extract the 3x3 convs (LoCon) at this rank.")
@click.option("--out", required=True, type=click.Path(dir_okay=False, path_type=Path), help="File to write.")
@click.option("--clamp-quantile", type=float, default=0.99, show_default=True,
              help="Clamp the factors to this quantile of their absolute values (1: no clamping).")
@click.option("--min-diff", type=float, default=0.01, show_default=True,
              help="Leave the text encoder out when no weight in it moved by more than this.")
@click.option("--save-precision", type=click.Choice(["fp16", "bf16", "float"]), default="fp16",
              show_default=True, help="Precision of the written weights.")
@click.option("--model-config", default=None,
              help="For single-file checkpoints: a diffusers folder or cached hub repo with the configs.")
@click.option("--device", default="cpu", show_default=True, help="Where to run the SVDs (cpu, cuda).")
@ALLOW_PICKLE
@output_options
def extract(base: Path, tuned: Path, dim: int, conv_dim: int | None, out: Path, clamp_quantile: float,
            min_diff: float, save_precision: str, model_config: str | None, device: str, allow_pickle: bool,
            as_json: bool, quiet: bool, verbose: bool) -> None:
    """Make a LoRA from the difference of two checkpoints, by SVD per layer, with a report of
    the energy each layer keeps (docs/lora-tools.md).

    \b
    Examples:
      curate lora extract --base ./sd15 --tuned ./finetune.safetensors --dim 128 --out distilled.safetensors
      curate lora extract --base sd15.safetensors --tuned ft.safetensors --model-config ./sd15 \\
          --dim 64 --conv-dim 32 --out ft-locon.safetensors --device cuda
    """
    _tools("extracting")
    from curate.trainer.tools.extract import describe, extract_lora

    o = Out(as_json, quiet, verbose)
    result = extract_lora(base, tuned, out, dim, conv_dim, clamp_quantile=clamp_quantile, min_diff=min_diff,
                          save_precision=save_precision, device=device, model_config=model_config,
                          allow_pickle=allow_pickle)
    if as_json:
        o.json(result.as_dict())
        return
    o.line(f"wrote {result.output}: {describe(result)}")
    if result.identical:
        o.line(f"left out {len(result.identical)} layers that are identical in both models")
    layers = result.layers if verbose else sorted(result.layers, key=lambda x: x.energy)[:10]
    o.table("layers" if verbose else "layers that keep the least energy",
            [(x.name, x.rank, f"{x.energy:.2%}", f"{x.error:.2%}") for x in layers],
            ("layer", "rank", "energy kept", "error"))


@command.command("merge")
@click.argument("networks", nargs=-1, required=True)
@click.option("--base", required=True, type=click.Path(exists=True, path_type=Path),
              help="The checkpoint to bake into: a diffusers folder or a single-file .safetensors.")
@click.option("--out", required=True, type=click.Path(path_type=Path),
              help="A folder (diffusers) or FILE.safetensors (single file, with --format single-file).")
@click.option("--blocks", "block_weights", default=None,
              help="Block weights: a preset (OUTALL, MIDD...), 17 or 26 values (SDXL base: 12 or 20), or "
              "IN=0,MID=0,OUT=1 (see `curate lora blocks [--sdxl]`).")
@click.option("--format", "out_format", type=click.Choice(["diffusers", "single-file"]), default="diffusers",
              show_default=True, help="What to write.")
@click.option("--precision", "save_precision", type=click.Choice(["fp16", "bf16", "float"]), default="fp16",
              show_default=True, help="Precision of the merged weights.")
@click.option("--model-config", default=None,
              help="Configs and tokenizer for a single-file base that is not SD 1.x/2.x-shaped.")
@click.option("--strict", is_flag=True, help="Stop when a key cannot be merged instead of reporting it.")
@ALLOW_PICKLE
@output_options
def merge(networks: tuple[str, ...], base: Path, out: Path, block_weights: str | None, out_format: str,
          save_precision: str, model_config: str | None, strict: bool, allow_pickle: bool, as_json: bool,
          quiet: bool, verbose: bool) -> None:
    """Bake LoRA / LoCon / iA3 files into a checkpoint: NETWORKS are NET[:STRENGTH] (default 1).

    \b
    LoRA adds strength x alpha/rank x up @ down to each weight; iA3 scales rows or columns by
    1 + strength x w; networks apply in the order given. Keys that fit no layer of the base
    are reported (not silently dropped).

    \b
    Examples:
      curate lora merge --base ./sd15 char.safetensors:0.8 style.safetensors:0.5 --out ./sd15-merged
      curate lora merge --base sd15.safetensors ia3.safetensors --out merged.safetensors --format single-file
      curate lora merge --base ./sd15 skin.safetensors --blocks OUTALL --out ./sd15-skin
    """
    from curate.errors import CurateError

    try:
        from curate.trainer.merge import describe, merge_networks, parse_network_arg
    except ImportError as exc:
        raise CurateError(f"merging needs the train extra ({exc}); pip install 'curate[train]'") from exc
    o = Out(as_json, quiet, verbose)
    result = merge_networks(base, [parse_network_arg(n) for n in networks], out, block_weights=block_weights,
                            save_precision=save_precision, out_format=out_format, model_config=model_config,
                            strict=strict, allow_pickle=allow_pickle)
    if as_json:
        o.json(result.as_dict())
        return
    for line in describe(result).splitlines():
        o.line(line)
    if result.unknown:
        click.echo(f"warning: {len(result.unknown)} keys were not merged (--json lists them)", err=True)


@command.command("blocks")
@click.argument("spec", required=False)
@click.option("--sdxl", is_flag=True, help="SDXL's blocks (IN00-IN08, M00, OUT00-OUT08; 12 / 20 values).")
@output_options
def blocks(spec: str | None, sdxl: bool, as_json: bool, quiet: bool, verbose: bool) -> None:
    """The UNet blocks block weights name (BASE = text encoder, IN00-IN11, M00, OUT00-OUT11;
    SDXL: IN00-IN08, M00, OUT00-OUT08), and the weight each gets under SPEC.

    \b
    SPEC is a preset of the LoRA Block Weight extension (ALL, INALL, MIDD, OUTD, OUTS, OUTALL...),
    17 values (LoRA: BASE,IN01,IN02,IN04,...,OUT11), 26 values (LyCORIS), or named groups such as
    IN=0,MID=0,OUT=1. With --sdxl: 12 values (LoRA: BASE,IN04,IN05,IN07,IN08,M00,OUT00-OUT05),
    20 values (LyCORIS), the presets NONE / ALL / ALL0.5, or named groups. The same SPEC works for
    `curate lora merge --blocks` and for training (`--set block_lr_weights=...`).

    \b
    Examples:
      curate lora blocks
      curate lora blocks OUTALL
      curate lora blocks "IN=0,MID=0.5,OUT=1" --json
      curate lora blocks --sdxl "1,0,0,0,0,1,1,1,1,1,1,1"
    """
    from curate.trainer.blocks import block_table

    o = Out(as_json, quiet, verbose)
    rows = block_table(spec, sdxl=sdxl)
    short = "in_12" if sdxl else "in_17"
    if as_json:
        o.json([{"block": b, "contains": c, short: in_short, "weight": w} for b, c, in_short, w in rows])
        return
    headers = ("block", f"{'SDXL' if sdxl else 'SD 1.x'} modules",
               f"in the {short[3:]}-value list") + (("weight",) if spec else ())
    table = [(b, c, "yes" if in_short else "", *((f"{w:g}",) if spec and w is not None else ()))
             for b, c, in_short, w in rows]
    o.table(f"blocks{f' under {spec}' if spec else ''}", table, headers)
