"""The kohya backend: the same TrainConfig as an sd-scripts `train_network.py` run, or for an
SDXL base model `sdxl_train_network.py` (kohya_model.py tells the family from the folder or file).

The plan has two parts. The dataset config: a `curate layout` dataset.toml is used as it is
when sd-scripts would read it the way the builtin trainer does; when the config overrides one
of its settings (resolution, caption_extension, ...), or it names image folders by relative
path (sd-scripts resolves those from its own working folder), a corrected copy is written to
OUT/kohya-dataset.toml. A plain folder of `N_name` subfolders becomes OUT/kohya-dataset.toml
with absolute image_dir paths and the repeats and class tokens from the folder names, since
`--dataset_config` never parses folder names. Every file is written through curate.atomic.

The command: `accelerate launch --num_cpu_threads_per_process 1 train_network.py` and one
sd-scripts option per TrainConfig key that has one (names are mostly the same; the optimiser,
network and the torch CosineAnnealingWarmRestarts schedule are spelled differently). Keys that
do not change the trained network (threads, backend, ...) are skipped; any other key this
module does not know (one added to TrainConfig later) becomes a warning in the plan when it is
set, so nothing that changes training is dropped without a word. The option names are pinned
against sd-scripts' own parsers by tests/data/sd_scripts_train_network_args.json.

SDXL (`sdxl_args`) uses the same launcher and network modules (networks.lora knows SDXL's
UNet; iA3 stays lycoris.kohya) with these differences: no --v2 and no --clip_skip (sd-scripts
ignores clip_skip for SDXL, as curate's builtin trainer does; a set one becomes a warning);
--v_parameterization only for a v-predicting SDXL model; --cache_text_encoder_outputs when
the config caches them (curate keeps them in memory only, so never
--cache_text_encoder_outputs_to_disk); and always --no_half_vae, because curate keeps the VAE
in float32 under mixed precision (SDXL's VAE overflows in fp16) and sd-scripts casts it to
the mixed-precision type without that flag. The dataset is checked as sdxl_train_network.py
checks it (kohya_toml.check_sdxl) before anything is written.

FLUX.1 and SD3/3.5 run `flux_train_network.py` / `sd3_train_network.py`: kohya_flow.py finds
their text encoder and autoencoder files and writes the model, network and family options; the
optimiser, schedule, length, saving and sample options are the ones above, and the dataset is
checked as for SDXL (both scripts assert the same).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from curate.atomic import atomic_write_bytes, atomic_write_text
from curate.errors import CurateError
from curate.trainer.backends import Plan, RunResult, StepCallback, changed_settings
from curate.trainer.backends.captions import tag_captions_in
from curate.trainer.backends.kohya_files import (
    CACHE_NAME,
    PRESET_NAME,
    ia3_preset,
    tokenizer_files,
    tokenizer_folders,
)
from curate.trainer.backends.kohya_flow import SCRIPTS, UNREAD, flow_args, flow_only_settings, model_files
from curate.trainer.backends.kohya_model import BaseModel, base_model, model_args
from curate.trainer.backends.kohya_toml import check_sdxl, dataset_config
from curate.trainer.config import TrainConfig

NAME = "kohya"
SCRIPT = "train_network.py"
SDXL_SCRIPT = "sdxl_train_network.py"
LAUNCH = ["accelerate", "launch", "--num_cpu_threads_per_process", "1"]
OPTIMIZERS = {"adamw": "AdamW", "adamw8bit": "AdamW8bit", "prodigy": "Prodigy", "dadaptadam": "DAdaptAdam"}
CAWR = "torch.optim.lr_scheduler.CosineAnnealingWarmRestarts"
# options spelled the same in sd-scripts, passed when set (None / False leave sd-scripts' default)
SAME: tuple[str, ...] = (
    "learning_rate", "unet_lr", "text_encoder_lr", "max_grad_norm", "gradient_accumulation_steps",
    "gradient_checkpointing", "seed", "min_snr_gamma", "prior_loss_weight", "clip_skip", "cache_latents",
    "cache_latents_to_disk", "output_name", "save_every_n_steps", "save_every_n_epochs", "save_state",
    "save_last_n_steps", "save_last_n_epochs", "save_precision", "mixed_precision", "logging_dir",
    "log_prefix", "zero_terminal_snr", "scale_v_pred_loss_like_noise_pred", "v_pred_like_loss",
    "debiased_estimation_loss")
# read by the helpers below (their sd-scripts spelling differs, or depends on other keys)
TRANSLATED: frozenset[str] = frozenset({
    "network", "network_dim", "network_alpha", "network_dropout", "conv_dim", "conv_alpha",
    "factor", "ia3_train_on_input", "train_unet", "train_text_encoder", "optimizer", "optimizer_args",
    "lr_scheduler", "lr_warmup_steps", "lr_scheduler_num_cycles", "lr_scheduler_power", "T_0", "T_mult",
    "eta_min", "max_train_steps", "max_train_epochs", "noise_offset", "adaptive_noise_scale",
    "cache_text_encoder_outputs", "noise_offset_random_strength",
    "multires_noise_iterations", "multires_noise_discount", "v_parameterization", "max_token_length",
    "scale_weight_norms", "sample_prompts", "sample_every_n_steps", "sample_every_n_epochs",
    "sample_sampler", "down_lr_weight", "mid_lr_weight", "up_lr_weight", "block_lr_weights",
    "block_lr_zero_threshold", "clip_l", "clip_g", "t5xxl", "ae"})
# dataset settings: they go into the dataset TOML (kohya_toml.py), not the command line
DATASET: frozenset[str] = frozenset({
    "resolution", "batch_size", "enable_bucket", "min_bucket_reso", "max_bucket_reso", "bucket_reso_steps",
    "caption_extension", "shuffle_caption", "keep_tokens", "caption_dropout_rate",
    "caption_tag_dropout_rate", "caption_dropout_every_n_epochs", "train_data_dir", "reg_data_dir"})
# no effect on the trained network, or only on how curate itself reads the model
SKIPPED: frozenset[str] = frozenset({"version", "threads", "backend", "model_config", "allow_pickle"})


def plan(dataset: Path, model: Path, out: Path, config: TrainConfig, *, resume: Path | None = None,
         tool: Path | None = None) -> Plan:
    """Write the dataset TOML into `out` and build the sd-scripts command (nothing is trained)."""
    config.check()
    dataset, model, out = dataset.absolute(), model.absolute(), out.absolute()
    if not model.exists():
        raise CurateError(f"{model}: no such base model (a diffusers folder or a .safetensors file)")
    base = base_model(model, config)
    name = SCRIPTS[str(base.family)] if base.flow else SDXL_SCRIPT if base.sdxl else SCRIPT
    if tool is not None:
        tool = check_sd_scripts(tool, name)
    result = Plan(NAME, dataset, model, out, config, resume=resume, tool=tool)
    data = dataset_config(dataset, out, config)
    if base.sdxl or base.flow:
        check_sdxl(data, config, "SDXL" if base.sdxl else name)
    if base.flow:
        files = model_files(base, config, result.notes, result.warnings)
        head = flow_args(base, config, files, result.notes, result.warnings)
        if tag_captions_in(data.data, data.source):
            result.warnings.append(f"{base.family} trains on sentences, and these captions read as tags: set "
                                   "[captions] format = \"nl\" or \"hybrid\" (after `curate caption`) and "
                                   "run `curate layout`")
    else:
        head = model_args(base, config, result.warnings)
        result.warnings += flow_only_settings(config, name)
    extra = side_files(base, config, out, result.warnings)
    args = [*head, "--dataset_config", str(data.path),
            "--output_dir", str(out), *arguments(config, base, result.notes, result.warnings, out),
            *resume_args(resume)]
    if any(path.parent.parent.name == CACHE_NAME for path in extra):
        args += ["--tokenizer_cache_dir", str(out / CACHE_NAME)]
    result.command = [*LAUNCH, str(tool / name) if tool else name, *args]
    # written only once everything above has been checked, so a refused plan leaves nothing behind
    for path, content in extra.items():
        atomic_write_bytes(path, content)
    result.files += [p for p in extra if p.parent.parent.name != CACHE_NAME]
    if data.text is not None:
        atomic_write_text(data.path, data.text)
        result.files.append(data.path)
        result.notes.insert(0, f"wrote {data.path} ({'; '.join(data.reasons)})")
    else:
        result.notes.insert(0, f"uses {data.path} as it is")
    result.notes += data.notes
    result.warnings += data.warnings
    result.warnings += unknown_settings(config)
    if tool is None:
        result.notes.append("run it in your sd-scripts folder, in its Python environment "
                            "(or pass --sd-scripts PATH to have curate run it)")
    return result


def side_files(base: BaseModel, config: TrainConfig, out: Path, warnings: list[str]) -> dict[Path, bytes]:
    """The iA3 preset file and the tokenizer cache (kohya_files.py), by path."""
    files: dict[Path, bytes] = {}
    if config.network == "ia3":
        files[out / PRESET_NAME] = ia3_preset(config).encode("utf-8")
    folders, missing = tokenizer_folders(base, config)
    warnings += missing
    return files | tokenizer_files(folders, out / CACHE_NAME)


def check_sd_scripts(tool: Path, script: str = SCRIPT) -> Path:
    tool = tool.absolute()
    if not (tool / script).is_file():
        raise CurateError(f"{tool}: no {script} here; --sd-scripts must be a kohya-ss/sd-scripts checkout")
    return tool


def arguments(config: TrainConfig, base: BaseModel, notes: list[str], warnings: list[str],
              folder: Path | None = None) -> list[str]:
    """The sd-scripts options for the training settings of `config` (not paths; `folder`, the
    output folder, holds the iA3 preset file)."""
    sdxl = base.sdxl
    out: list[str] = []
    for name in SAME:
        if not ((sdxl and name == "clip_skip") or (base.flow and name in UNREAD)):
            out += _option(name, getattr(config, name))
    if base.flow:  # the network and model options: kohya_flow.flow_args; the SD noise settings unread
        return [*optimizer_args(config), *schedule_args(config), *length_args(config, flow=True), *out,
                *sample_args(config)]
    if sdxl:
        out += sdxl_args(config, warnings)
    elif config.cache_text_encoder_outputs:
        notes.append("cache_text_encoder_outputs: train_network.py (SD 1.x/2.x) has no such option, so "
                     "sd-scripts encodes the captions every step (the same training, slower)")
    preset = str(folder / PRESET_NAME) if folder is not None and config.network == "ia3" else None
    return [*network_args(config, notes, sdxl, preset), *optimizer_args(config), *schedule_args(config),
            *length_args(config), *noise_args(config), *out, *sample_args(config)]


def sdxl_args(config: TrainConfig, warnings: list[str]) -> list[str]:
    """sdxl_train_network.py's own options (see the module docstring)."""
    if config.clip_skip is not None:
        warnings.append(f"train.clip_skip = {config.clip_skip}: sd-scripts ignores clip_skip for SDXL (so "
                        "does --backend builtin), so --clip_skip is not passed")
    if config.cache_text_encoder_outputs and config.train_text_encoder:
        raise CurateError("cache_text_encoder_outputs needs frozen text encoders (sdxl_train_network.py "
                          "refuses it otherwise): set train_text_encoder = false, or turn the cache off")
    return [*_option("cache_text_encoder_outputs", config.cache_text_encoder_outputs), "--no_half_vae"]


def _option(name: str, value: Any) -> list[str]:
    """`--name value`; a True bool is a bare flag; None and False are left out."""
    if value is None or value is False:
        return []
    if value is True:
        return [f"--{name}"]
    return [f"--{name}", _number(value) if isinstance(value, float) else str(value)]


def _number(value: float) -> str:
    return str(int(value)) if value.is_integer() and abs(value) < 1e15 else repr(value)


def literal(value: Any) -> str:
    """A value as Python source: sd-scripts reads `key=value` arguments with ast.literal_eval."""
    if isinstance(value, list | tuple):
        return repr(tuple(value))
    text = repr(value)
    if "=" in text:
        raise CurateError(f"{value!r}: sd-scripts splits key=value arguments on '=', so a value cannot "
                          "contain one")
    return text


def _key_values(option: str, pairs: dict[str, Any], *, python: bool = True) -> list[str]:
    """`--option k=v ...`; python=False for --network_args, whose values sd-scripts passes as strings."""
    def text(value: Any) -> str:
        if python:
            return literal(value)
        return _number(value) if isinstance(value, float) else str(value)

    return [option, *(f"{k}={text(v)}" for k, v in pairs.items())] if pairs else []


def block_args(config: TrainConfig, notes: list[str], sdxl: bool = False) -> dict[str, Any]:
    """Block learning rates as sd-scripts' networks.lora reads them (network_args); a block-weight
    spec becomes its down/mid/up lists (12/1/12 values; SDXL 9/3/9, the one mid weight repeated
    for sd-scripts' three middle blocks). sd-scripts has no text-encoder entry: BASE must be 1."""
    out: dict[str, Any] = {k: getattr(config, k) for k in ("down_lr_weight", "mid_lr_weight", "up_lr_weight")
                           if getattr(config, k) is not None}
    if config.block_lr_weights is not None:
        from curate.trainer.blocks import block_ids, parse_block_weights

        weights = parse_block_weights(config.block_lr_weights, sdxl=sdxl)
        ids = block_ids(sdxl)[1:]
        side = len(ids) // 2  # IN00.. then M00 then OUT00..
        mid = _number(weights["M00"])
        out |= {"down_lr_weight": ",".join(_number(weights[b]) for b in ids[:side]),
                "mid_lr_weight": ",".join([mid] * 3) if sdxl else mid,
                "up_lr_weight": ",".join(_number(weights[b]) for b in ids[side + 1:])}
        if weights["BASE"] != 1.0:
            notes.append(f"block_lr_weights gives BASE (text encoder) {weights['BASE']:g}; sd-scripts' block "
                         "learning rates leave the text encoder at 1 (use text_encoder_lr)")
    if out and config.block_lr_zero_threshold:
        out["block_lr_zero_threshold"] = config.block_lr_zero_threshold
    return out


def network_args(config: TrainConfig, notes: list[str], sdxl: bool = False,
                 preset: str | None = None) -> list[str]:
    only = (["--network_train_unet_only"] if not config.train_text_encoder else
            ["--network_train_text_encoder_only"] if not config.train_unet else [])
    if config.network == "ia3":
        if preset and "=" in preset:
            raise CurateError(f"{preset}: sd-scripts splits network_args on '=', so the output folder's path "
                              "cannot hold one; choose another --out")
        notes.append("iA3 trains with LyCORIS (network_module lycoris.kohya): `pip install lycoris_lora` in "
                     "sd-scripts' environment first. LyCORIS releases have broken iA3 with sd-scripts before "
                     "(LyCORIS #116, #249, kohya_ss #3192); --backend builtin trains iA3 without LyCORIS")
        return ["--network_module", "lycoris.kohya",
                # the preset file names the builtin's modules (kohya_files.py); without it, LyCORIS' own
                *_key_values("--network_args", {"algo": "ia3", **({"preset": preset} if preset else {}),
                                                "train_on_input": config.ia3_train_on_input}, python=False),
                *only]
    if config.network in ("loha", "lokr"):
        return lycoris_args(config, notes, sdxl) + only
    extra: dict[str, Any] = {}
    if config.conv_dim:
        # written out although sd-scripts reads an unset conv_alpha as 1.0 too, as the builtin does
        extra = {"conv_dim": config.conv_dim,
                 "conv_alpha": 1.0 if config.conv_alpha is None else config.conv_alpha}
    args = ["--network_module", "networks.lora", "--network_dim", str(config.network_dim),
            "--network_alpha", _number(float(config.network_alpha))]
    args += _option("network_dropout", config.network_dropout)
    extra |= block_args(config, notes, sdxl)
    args += _key_values("--network_args", extra, python=False)
    # the builtin trainer scales LoRA weight norms only; iA3 has no up/down pair to scale
    return args + _option("scale_weight_norms", config.scale_weight_norms) + only


def lycoris_args(config: TrainConfig, notes: list[str], sdxl: bool = False) -> list[str]:
    """LoHa / LoKr through LyCORIS' kohya wrapper, with the conv settings the builtin trainer reads
    (an unset conv_dim / conv_alpha is network_dim / network_alpha in both)."""
    notes.append(f"{config.network} trains with LyCORIS (network_module lycoris.kohya): `pip install "
                 "lycoris_lora` in sd-scripts' environment first")
    if not sdxl:
        # its preset "full" lists the class TimestepEmbedding beside time_embedding.linear_1/2
        notes.append("LyCORIS 4.1.3 stops with 'duplicated lora name: lora_unet_time_embedding_linear_1' "
                     "on SD 1.x/2.x UNets (seen on diffusers' UNet, whose classes sd-scripts' SD UNet "
                     "shares); use another LyCORIS release or --backend builtin")
    if any(getattr(config, k) is not None for k in ("down_lr_weight", "mid_lr_weight", "up_lr_weight",
                                                    "block_lr_weights")):
        notes.append("LyCORIS reads no block learning rates (down/mid/up_lr_weight); they are left out")
    pairs: dict[str, Any] = {"algo": config.network, "conv_dim": config.conv_dim or config.network_dim,
                             "conv_alpha": float(config.conv_alpha if config.conv_alpha is not None
                                                 else config.network_alpha)}
    if config.network == "lokr" and config.factor != -1:
        pairs["factor"] = config.factor
    return ["--network_module", "lycoris.kohya", "--network_dim", str(config.network_dim),
            "--network_alpha", _number(float(config.network_alpha)),
            *_key_values("--network_args", pairs, python=False)]


def optimizer_args(config: TrainConfig) -> list[str]:
    return ["--optimizer_type", OPTIMIZERS[config.optimizer],
            *_key_values("--optimizer_args", dict(config.optimizer_args))]


def schedule_args(config: TrainConfig) -> list[str]:
    if config.lr_scheduler == "cosine_annealing_warm_restarts":
        # sd-scripts refuses warm-up steps with a custom scheduler; the builtin one ignores them
        return ["--lr_scheduler_type", CAWR, *_key_values("--lr_scheduler_args", {
            "T_0": config.T_0, "T_mult": config.T_mult, "eta_min": config.eta_min})]
    name = config.lr_scheduler
    if name == "constant" and config.lr_warmup_steps:
        name = "constant_with_warmup"  # sd-scripts raises on constant with warm-up steps
    args = ["--lr_scheduler", name, *_option("lr_warmup_steps", config.lr_warmup_steps or None)]
    if name == "cosine_with_restarts":
        args += _option("lr_scheduler_num_cycles", config.lr_scheduler_num_cycles)
    if name == "polynomial":
        args += _option("lr_scheduler_power", config.lr_scheduler_power)
    return args


def length_args(config: TrainConfig, flow: bool = False) -> list[str]:
    steps = (_option("max_train_epochs", config.max_train_epochs) if config.max_train_epochs
             else _option("max_train_steps", config.max_train_steps))
    # 75 is sd-scripts' default and not one of its choices (None, 150, 225); FLUX/SD3 ignore it
    if config.max_token_length != 75 and not flow:
        steps += _option("max_token_length", config.max_token_length)
    return steps


def noise_args(config: TrainConfig) -> list[str]:
    args = _option("noise_offset", config.noise_offset or None)
    if config.noise_offset:
        args += _option("noise_offset_random_strength", config.noise_offset_random_strength)
        args += _option("adaptive_noise_scale", config.adaptive_noise_scale)
    if config.multires_noise_iterations:
        args += _option("multires_noise_iterations", config.multires_noise_iterations)
        args += _option("multires_noise_discount", config.multires_noise_discount)
    return args


def sample_args(config: TrainConfig) -> list[str]:
    if not config.sample_prompts:
        return []
    return ["--sample_prompts", str(Path(config.sample_prompts).absolute()),
            *_option("sample_every_n_steps", config.sample_every_n_steps),
            *_option("sample_every_n_epochs", config.sample_every_n_epochs),
            "--sample_sampler", config.sample_sampler]


def resume_args(resume: Path | None) -> list[str]:
    if resume is None:
        return []
    if (resume / "state.json").is_file() and (resume / "optimizer.pt").is_file():
        raise CurateError(f"{resume}: a state folder of curate's builtin trainer; sd-scripts resumes only "
                          "from its own (written with save_state), so resume it with --backend builtin")
    return ["--resume", str(resume.absolute())]


def unknown_settings(config: TrainConfig) -> list[str]:
    """A warning for every set TrainConfig key this backend cannot pass on."""
    known = set(SAME) | TRANSLATED | DATASET | SKIPPED
    return [f"train.{name} = {value!r} has no sd-scripts option in this backend: sd-scripts trains without it"
            for name, value in changed_settings(config, known)]


def run(plan: Plan, *, on_step: StepCallback | None = None,
        sink: Callable[[bytes], None] | None = None) -> RunResult:
    """Run the planned command in the sd-scripts folder (kohya_run.py)."""
    from curate.trainer.backends.kohya_run import run_plan

    return run_plan(plan, on_step=on_step, sink=sink)
