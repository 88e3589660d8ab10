from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any, NoReturn

import click

from curate.cli._common import Out, config_options, output_options
from curate.cli._flags import Flag, config_flags
from curate.trainer.config import TrainConfig

INTERRUPTED = 130  # the shell's code for a run stopped by SIGINT, as handle_errors uses


def _list_presets(ctx: click.Context, _param: click.Parameter, value: bool) -> None:
    if not value or ctx.resilient_parsing:
        return
    from curate.trainer.presets import describe

    click.echo(describe(), nl=False)
    ctx.exit(0)


def status(loss: float, info: dict[str, float]) -> str:
    """What the progress bar shows beside the step count: loss, learning rate, Prodigy's d*lr."""
    parts = [f"loss {info.get('loss/average', loss):.4f}"]
    lr = next((v for k, v in info.items() if k.startswith("lr/") and "d*lr" not in k), None)
    dlr = next((v for k, v in info.items() if k.startswith("lr/d*lr")), None)
    if lr is not None:
        parts.append(f"lr {lr:.2e}")
    if dlr is not None:
        parts.append(f"d*lr {dlr:.2e}")
    return " ".join(parts)


@click.command("train")
@click.argument("dataset", required=False, type=click.Path(exists=True, path_type=Path))
@click.option("--model", type=click.Path(path_type=Path),
              help="Base model: a diffusers folder (model_index.json, unet/, ...) or a single-file SD1.x/2.x "
              ".safetensors checkpoint (configs shipped; --set model_config=DIR for others); with "
              "--backend kohya also a FLUX.1 or SD3 file or a ComfyUI models/ folder; with "
              "--backend aitoolkit also a Hub repo id it downloads (black-forest-labs/FLUX.1-dev).")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path),
              help="Folder for NAME.safetensors, intermediate saves and state folders.")
@config_flags(TrainConfig, "network", "max_train_steps", "max_train_epochs", "output_name",
              "save_every_n_steps",
              "save_precision", "save_state")
@click.option("--resume", type=click.Path(exists=True, file_okay=False, path_type=Path), default=None,
              help="State folder to continue from.")
@config_flags(TrainConfig, "seed", "threads", "v_parameterization", "zero_terminal_snr",
              Flag("scale_v_pred_loss_like_noise_pred",
                   ("--scale-v-pred-loss/--no-scale-v-pred-loss",)),
              "mixed_precision", "gradient_checkpointing", "cache_latents",
              Flag("sample_prompts", type=click.Path(exists=True, dir_okay=False)), "sample_every_n_steps",
              Flag("logging_dir", type=click.Path(file_okay=False)), "allow_pickle", "backend")
@click.option("--print-command", is_flag=True,
              help="kohya, aitoolkit: write the dataset TOML / job file into --out, print the command, "
              "and exit.")
@click.option("--sd-scripts", "sd_scripts", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="kohya: the sd-scripts checkout to run the command in (with accelerate).")
@click.option("--ai-toolkit", "ai_toolkit", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="aitoolkit: the ostris/ai-toolkit checkout to run the job in.")
@click.option("--print-config", is_flag=True,
              help="Print the resolved settings as a [train] TOML table (readable with --config) and exit.")
@click.option("--preset", default=None, help="Start from a named recipe (see --list-presets); "
              "--config, --set and flags override it.")
@click.option("--list-presets", is_flag=True, expose_value=False, is_eager=True, callback=_list_presets,
              help="Print the presets and their settings, then exit.")
@config_options
@output_options
def command(dataset: Path | None, model: Path | None, out: Path | None, resume: Path | None,
            print_command: bool, sd_scripts: Path | None, ai_toolkit: Path | None, print_config: bool,
            preset: str | None, config_file: Path | None, overrides: tuple[str, ...], as_json: bool,
            quiet: bool, verbose: bool, flags: dict[str, Any]) -> None:
    """Train a LoRA or iA3 on a Kohya dataset (a `curate layout` folder, its dataset.toml, or N_name folders).

    \b
    Settings come from --preset, then the [train] table of --config (or a kohya_ss GUI .json),
    then --set KEY=VALUE (any TrainConfig field, sd-scripts names: network_dim, learning_rate,
    min_snr_gamma, optimizer_type, network_args, ...), then flags.
    The result loads in A1111, ComfyUI, diffusers and sd-scripts (LoRA) or A1111 (iA3).
    --model is a diffusers folder or a single-file .safetensors checkpoint. Ctrl-C saves a
    resumable state and stops (exit code 130); a second Ctrl-C stops at once. Several GPUs:
    launch with `accelerate launch --multi_gpu --num_processes N -m curate train ...` (all options
    as here).

    \b
    Examples:
      curate train dataset --model ./sd15-diffusers --out lora --max-train-steps 1500
      curate train dataset --model ./sd15 --out lora --set network_dim=16 --set min_snr_gamma=5
      curate train dataset --model ./sd15 --out ia3 --network ia3 --config train.toml --json
      curate train dataset --model ./sd15 --out ia3 --preset prodigy-ia3 --set T_0=120
      curate train --list-presets
      curate train --config kohya_ss-recipe.json --print-config > train.toml
      curate train dataset --model ./sd15 --out lora --resume lora/last-step00000500-state
      curate train dataset --model ./sd15 --out lora --backend kohya --print-command
      curate train dataset --model ./sd15 --out lora --backend kohya --sd-scripts ~/sd-scripts
      curate train dataset --model ./flux-dev --out lora --backend aitoolkit --print-command
    """
    from curate.trainer.backends import get_backend
    from curate.trainer.config import train_config

    # under a multi-process launcher every process runs this; only the first one talks
    follower = os.environ.get("RANK", "0") != "0"
    o = Out(as_json and not follower, quiet or follower, verbose and not follower)
    messages: list[tuple[str, str]] = []
    config = train_config(config_file, overrides, flags, preset=preset, messages=messages)
    for kind, text in messages if not follower else []:
        if kind == "warning" or verbose or print_config or print_command:
            click.echo(f"{kind}: {text}", err=True)
    if print_config:
        from curate.trainer.config import to_toml

        click.echo(to_toml(config, "curate train settings, resolved (read back with --config)"), nl=False)
        return
    dataset = _dataset(dataset, config.train_data_dir)
    if model is None or out is None:
        raise click.UsageError("--model and --out are required (except with --print-config)")
    trainer = get_backend(config.backend)
    if config.backend != "aitoolkit" and not model.exists():  # ai-toolkit also takes Hub repo ids
        raise click.BadParameter(f"{model} does not exist", param_hint="'--model'")
    tool = ai_toolkit if config.backend == "aitoolkit" else sd_scripts
    plan = trainer.plan(dataset, model, out, config, resume=resume, tool=tool)
    shell = plan.shell() if print_command else None  # the builtin backend has none: one-line error
    for note in plan.notes if verbose or print_command else []:
        click.echo(f"note: {note}", err=True)
    for warning in plan.warnings:
        click.echo(f"warning: {warning}", err=True)
    if shell is not None:
        if as_json:
            o.json(plan.as_dict())
        else:
            click.echo(shell)
        return
    with o.progress("training") as progress:
        result = trainer.run(plan, on_step=lambda step, total, loss, info: progress(step, total,
                                                                                    status(loss, info)))
    _report(o, result, follower)
    # Ctrl-C stopped the run early, its state saved: a script or `&&` must not take it as done
    code = INTERRUPTED if result.details.get("interrupted") else 0
    if result.details.get("processes", 1) > 1:
        _leave(code)
    if code:
        click.get_current_context().exit(code)


def _leave(code: int) -> NoReturn:
    """End one process of a data-parallel run here: its files are written, its output flushed,
    and its process group was left in step with the others (trainer/distributed.py). Python's
    own shutdown after gloo has run sometimes aborted one process ("terminate called without an
    active exception", SIGABRT: 1 run in 11 on a loaded 2-core machine, after every file had
    been written), and the launcher then fails the whole run; os._exit skips that shutdown."""
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def _dataset(given: Path | None, train_data_dir: str | None) -> Path:
    """The DATASET argument, or sd-scripts' train_data_dir from the settings; both must agree."""
    named = Path(train_data_dir).expanduser() if train_data_dir else None
    if given is None and named is None:
        raise click.UsageError("missing the DATASET argument (or train_data_dir in the settings)")
    if given is not None and named is not None and given.resolve() != named.resolve():
        raise click.UsageError(f"DATASET {given} and train_data_dir {named} differ; give one")
    dataset = given or named
    assert dataset is not None
    if not dataset.exists():
        raise click.UsageError(f"train_data_dir {dataset}: no such folder")
    return dataset


def _report(o: Out, result: Any, follower: bool) -> None:
    if follower:
        return
    if o.as_json:
        o.json(result.as_dict())
        return
    for line in result.summary.splitlines():
        o.line(line)
    o.line(f"wrote {result.output}")
    if o.verbose:
        for path in result.saved:
            o.line(f"saved {path}")
