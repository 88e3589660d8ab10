from __future__ import annotations

from pathlib import Path

import click

from curate.cli._common import Out, config_options, output_options


def _list_presets(ctx: click.Context, _param: click.Parameter, value: bool) -> None:
    if not value or ctx.resilient_parsing:
        return
    from trainer.presets import describe

    click.echo(describe(), nl=False)
    ctx.exit(0)


@click.command("train")
@click.argument("dataset", type=click.Path(exists=True, path_type=Path))
@click.option("--model", required=True, type=click.Path(exists=True, path_type=Path),
              help="Base model: a diffusers folder (model_index.json, unet/, vae/, text_encoder/, ...).")
@click.option("--out", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="Folder for NAME.safetensors, intermediate saves and state folders.")
@click.option("--network", type=click.Choice(["lora", "ia3"]), default=None, help="Adapter (default lora).")
@click.option("--max-train-steps", type=int, default=None, help="Steps to train (default 1600).")
@click.option("--max-train-epochs", type=int, default=None, help="Epochs to train (wins over steps).")
@click.option("--output-name", default=None, help="File name stem (default last).")
@click.option("--save-every-n-steps", type=int, default=None, help="Also save NAME-stepNNNNNNNN.safetensors.")
@click.option("--save-precision", type=click.Choice(["fp16", "bf16", "float"]), default=None,
              help="Precision of saved weights (default fp16).")
@click.option("--save-state/--no-save-state", default=None,
              help="Write a resumable NAME-...-state folder with each save.")
@click.option("--resume", type=click.Path(exists=True, file_okay=False, path_type=Path), default=None,
              help="State folder to continue from.")
@click.option("--seed", type=int, default=None, help="Random seed (default 42).")
@click.option("--threads", type=int, default=None,
              help="CPU threads (default: 1 on a machine with 2 or fewer cores; 0 = torch's default).")
@click.option("--preset", default=None, help="Start from a named recipe (see --list-presets); "
              "--config, --set and flags override it.")
@click.option("--list-presets", is_flag=True, expose_value=False, is_eager=True, callback=_list_presets,
              help="Print the presets and their settings, then exit.")
@config_options
@output_options
def command(dataset: Path, model: Path, out: Path, network: str | None, max_train_steps: int | None,
            max_train_epochs: int | None, output_name: str | None, save_every_n_steps: int | None,
            save_precision: str | None, save_state: bool | None, resume: Path | None, seed: int | None,
            threads: int | None, preset: str | None, config_file: Path | None, overrides: tuple[str, ...],
            as_json: bool, quiet: bool, verbose: bool) -> None:
    """Train a LoRA or iA3 on a Kohya dataset (a `curate layout` folder, its dataset.toml, or N_name folders).

    \b
    Settings come from --preset, then the [train] table of --config, then --set KEY=VALUE (any
    TrainConfig field, sd-scripts names: network_dim, learning_rate, min_snr_gamma, ...), then flags.
    The result loads in A1111, ComfyUI, diffusers and sd-scripts (LoRA) or A1111 (iA3).

    \b
    Examples:
      curate train dataset --model ./sd15-diffusers --out lora --max-train-steps 1500
      curate train dataset --model ./sd15 --out lora --set network_dim=16 --set min_snr_gamma=5
      curate train dataset --model ./sd15 --out ia3 --network ia3 --config train.toml --json
      curate train dataset --model ./sd15 --out ia3 --preset prodigy-ia3 --set T_0=120
      curate train --list-presets
      curate train dataset --model ./sd15 --out lora --resume lora/last-step00000500-state
    """
    from curate.errors import CurateError
    from trainer.config import train_config

    o = Out(as_json, quiet, verbose)
    config = train_config(config_file, overrides, {
        "network": network, "max_train_steps": max_train_steps, "max_train_epochs": max_train_epochs,
        "output_name": output_name, "save_every_n_steps": save_every_n_steps,
        "save_precision": save_precision, "save_state": save_state, "seed": seed, "threads": threads},
        preset=preset)
    try:
        from trainer.loop import train
    except ImportError as exc:
        raise CurateError(f"the trainer needs the train extra ({exc}); pip install 'curate[train]'") from exc
    with o.progress("training") as progress:
        result = train(dataset, model, out, config, resume=resume,
                       on_step=lambda step, total, _loss: progress(step, total))
    if as_json:
        o.json(result.as_dict())
        return
    data = result.as_dict()
    o.line(f"trained {config.network} for {result.steps} steps ({result.epochs} epochs, "
           f"{result.steps_per_epoch} steps each) on {result.device} in {result.seconds:.1f} s; "
           f"loss {data['first_loss']:.4f} -> {data['last_loss']:.4f}" if result.losses else
           f"nothing to train: already at step {result.steps}")
    o.line(f"wrote {result.output}")
    if verbose:
        for path in result.saved:
            o.line(f"saved {path}")
