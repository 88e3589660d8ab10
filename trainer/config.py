"""Options of `curate train`: a --preset, the `[train]` table of a TOML file, `--set key=value`, then flags.

Names follow sd-scripts' arguments (network_dim, min_snr_gamma, save_every_n_steps, ...) so
that a guide's settings carry over. Dataset settings (resolution, batch size, repeats, caption
options) come from the dataset's own dataset.toml when it has one; the fields here marked
"folder mode" apply to plain `N_name` folders and override dataset.toml only when set.
`version` numbers the file format; `MIGRATIONS[v]` turns a version-v table into version v+1.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any, Literal

from curate.buckets.assign import derived_bucket_reso
from curate.config import apply_overrides, build, check_ranges, load_toml, option, toml_value
from curate.errors import CurateError
from curate.paths import check_name

VERSION = 1
MIGRATIONS: dict[int, Callable[[dict[str, Any]], dict[str, Any]]] = {}


@dataclass(frozen=True)
class TrainConfig:
    """Options of `curate train` (and the train stage of `curate run`), with sd-scripts' names."""

    version: int = option(VERSION, help="The format of this table; older ones are migrated when read.")
    network: Literal["lora", "ia3", "loha", "lokr"] = option("lora", help=(
        "The adapter trained: lora (LoCon with conv_dim), ia3, or LyCORIS' loha / lokr."))
    network_dim: int = option(8, ge=1, le=100000, help=(
        "Rank of LoRA / LoHa / LoKr (LoKr: of its second factor, stored whole when dim >= half its size)."))
    network_alpha: float = option(1.0, ge=0, help=(
        "Alpha: the update is scaled by alpha / dim (0: alpha = dim, scale 1)."))
    network_dropout: float | None = option(None, ge=0, lt=1, example=0.1, help=(
        "Dropout on the LoRA down output (LoRA only: LyCORIS' LoHa/LoKr have none)."))
    conv_dim: int | None = option(None, ge=1, le=100000, example=4, help=(
        "Rank on the 3x3 convolutions; unset: none for lora (linear layers and 1x1 convolutions "
        "only), network_dim for loha / lokr (as LyCORIS reads it)."))
    conv_alpha: float | None = option(None, ge=0, example=1.0, help=(
        "Alpha of the convolutions; unset: 1.0 for lora (sd-scripts' default; 0: conv_dim, scale 1), "
        "network_alpha for loha / lokr (as LyCORIS reads it)."))
    factor: int = option(-1, ge=-1, le=100000, help=(
        "LoKr: split each size into two factors, the smaller at most this; -1: the most square split."))
    ia3_train_on_input: bool = option(True, help=(
        "iA3: scale the feed-forward layers' inputs (as the iA3 paper)."))
    train_unet: bool = option(True, help="Train the adapter on the UNet.")
    train_text_encoder: bool = option(True, help="Train the adapter on the text encoder.")
    learning_rate: float = option(1e-4, gt=0, help="Learning rate (of both parts unless set below).")
    unet_lr: float | None = option(None, ge=0, example=1e-4, help="The UNet's learning rate.")
    text_encoder_lr: float | None = option(None, ge=0, example=5e-5, help="The text encoder's learning rate.")
    optimizer: Literal["adamw", "adamw8bit", "prodigy", "dadaptadam"] = option(
        "adamw", help="The optimiser (prodigy and dadaptadam pick their own step size: learning_rate 1).")
    # option() returns a dataclasses.field with this default_factory: no shared dict
    optimizer_args: dict[str, Any] = option(factory=dict, help=(  # noqa: RUF009
        "Keyword arguments of the optimiser, e.g. { weight_decay = 0.01 }."))
    # sd-scripts' down/mid/up lists, or one block-weight spec as `curate lora blocks` shows
    down_lr_weight: str | None = option(None, example="sine", help=(
        "Per-block learning-rate weights of the UNet's down blocks (SD 1.x/2.x): \"sine\", "
        "\"cosine\", \"linear\", \"reverse_linear\", \"zeros\" [+N], or 12 comma values."))
    mid_lr_weight: str | None = option(None, example="1.0", help="The mid block's weight (one value).")
    up_lr_weight: str | None = option(None, example="cosine", help=(
        "The up blocks' weights, as down_lr_weight."))
    block_lr_weights: str | None = option(None, example="OUTALL", help=(
        "One block-weight spec as `curate lora blocks` shows (\"OUTALL\", 17 or 26 values, "
        "\"IN=0,MID=0,OUT=1\")."))
    block_lr_zero_threshold: float = option(0.0, ge=0, help=(
        "Blocks weighted at or below this are not trained (e.g. OUT blocks only, for a \"skin\" LoRA)."))
    lr_scheduler: Literal["constant", "constant_with_warmup", "linear", "cosine", "cosine_with_restarts",
                          "polynomial", "cosine_annealing_warm_restarts"] = option("constant", help=(
        "diffusers' schedules by sd-scripts' names, plus torch's CosineAnnealingWarmRestarts "
        "(stepped once per optimiser step) as the iA3 guide uses it."))
    lr_warmup_steps: int = option(0, ge=0, help="Steps of linear warm-up.")
    lr_scheduler_num_cycles: int = option(1, ge=1, help="cosine_with_restarts: hard restarts over the run.")
    lr_scheduler_power: float = option(1.0, gt=0, help="polynomial: the power (1 = linear decay).")
    T_0: int = option(160, ge=1, help="cosine_annealing_warm_restarts: steps of the first cycle.")
    T_mult: int = option(1, ge=1, help="cosine_annealing_warm_restarts: each cycle is T_mult times longer.")
    eta_min: float = option(0.0, ge=0, help=(
        "cosine_annealing_warm_restarts: the rate at the bottom of a cycle."))
    max_grad_norm: float = option(1.0, ge=0, help="Clip gradients to this norm (0 = no clipping).")
    gradient_accumulation_steps: int = option(1, ge=1, le=1024, help="Batches per optimiser step.")
    gradient_checkpointing: bool = option(False, help=(
        "Recompute activations in backward: far less memory, ~30% slower."))
    max_train_steps: int = option(1600, ge=1, help="Steps to train (sd-scripts' default).")
    max_train_epochs: int | None = option(None, ge=1, example=10, help=(
        "Epochs to train; wins over max_train_steps."))
    seed: int = option(42, ge=0, le=2**32 - 1, help="Random seed.")
    noise_offset: float = option(0.0, ge=0, le=1, help="Noise offset (darker darks, brighter brights).")
    noise_offset_random_strength: bool = option(False, help=(
        "Draw each step's noise offset uniformly from [0, noise_offset) (sd-scripts' option)."))
    adaptive_noise_scale: float | None = option(None, ge=-1, le=1, example=0.0, help=(
        "Add this times the latents' mean to the noise offset."))
    multires_noise_iterations: int | None = option(None, ge=1, le=32, example=6, help=(
        "Pyramid noise (sd-scripts' multires noise): its iterations."))
    multires_noise_discount: float = option(0.3, ge=0, le=1, help="Pyramid noise: the discount per level.")
    v_parameterization: bool | None = option(None, example=False, help=(
        "Train a v-prediction model; unset: what the model's scheduler config says."))
    min_snr_gamma: float | None = option(None, gt=0, example=5.0, help="Min-SNR loss weighting (5 is usual).")
    zero_terminal_snr: bool = option(False, help=(
        "Rescale the noise schedule to zero terminal SNR (v-prediction models)."))
    scale_v_pred_loss_like_noise_pred: bool = option(False, help=(
        "Weight the v-prediction loss like a noise-prediction loss (SNR / (SNR + 1))."))
    v_pred_like_loss: float | None = option(None, ge=0, example=0.1, help=(
        "Add a v-prediction-like loss term of this weight."))
    debiased_estimation_loss: bool = option(False, help="Debiased estimation loss weighting.")
    prior_loss_weight: float = option(1.0, ge=0, help="Loss weight of regularisation images.")
    clip_skip: int | None = option(None, ge=1, le=24, example=2, help=(
        "Use the text encoder's output this many layers from the end."))
    max_token_length: Literal[75, 150, 225] = option(75, help=(
        "CLIP tokens per caption, in chunks of 75 as sd-scripts reads them."))
    cache_latents: bool = option(False, help=(
        "Encode every image once before training, in memory (disables flip_aug's randomness)."))
    cache_latents_to_disk: bool = option(False, help=(
        "... and keep them in IMAGE.npz beside each image between runs."))
    cache_text_encoder_outputs: bool = option(False, help=(
        "Encode each caption once before training (text encoders frozen, no caption shuffle or dropout)."))
    scale_weight_norms: float | None = option(None, gt=0, example=1.0, help=(
        "Scale down LoRA weights whose norm exceeds this."))
    output_name: str = option("last", help="File name stem of the saves (NAME.safetensors).")
    save_every_n_steps: int | None = option(None, ge=1, example=500, help=(
        "Also save NAME-stepNNNNNNNN.safetensors."))
    save_every_n_epochs: int | None = option(None, ge=1, example=1, help=(
        "Also save NAME-NNNNNN.safetensors per epoch."))
    save_state: bool = option(False, help="Write a resumable NAME-...-state folder with each save.")
    save_last_n_steps: int | None = option(None, ge=1, example=1000, help=(
        "Keep only the step saves of the last N steps."))
    save_last_n_epochs: int | None = option(None, ge=1, example=3, help="Keep only the last N epoch saves.")
    sample_prompts: str | None = option(None, example="prompts.txt", help=(
        "Prompt file in sd-scripts syntax (--n --w --h --d --l --s); images go to OUT/sample/."))
    sample_every_n_steps: int | None = option(None, ge=1, example=200, help="Sample images every N steps.")
    sample_every_n_epochs: int | None = option(None, ge=1, example=1, help="Sample images every N epochs.")
    sample_sampler: str = option("ddim", help="The sampler of sample images (sd-scripts' names).")
    logging_dir: str | None = option(None, example="logs", help=(
        "Write TensorBoard logs (loss, lr, d*lr) to logging_dir/[log_prefix]TIMESTAMP."))
    log_prefix: str | None = option(None, example="sks-", help="Prefix of the log folder's name.")
    model_config: str | None = option(None, example="../models/sd15-diffusers", help=(
        "Single-file base models: a diffusers folder (or Hub repo id, cached) with the configs and "
        "tokenizer; unset: the configs shipped for SD 1.x/2.x."))
    allow_pickle: bool = option(False, help=(
        "Read a .ckpt/.pt base model (a pickle; loaded with weights_only, still only from sources "
        "you trust)."))
    # FLUX.1 / SD3 keep their text encoders and autoencoder in separate files, which sd-scripts'
    # flux_train_network.py / sd3_train_network.py take as --clip_l, --clip_g, --t5xxl, --ae / --vae
    clip_l: str | None = option(None, example="models/clip/clip_l.safetensors", help=(
        "FLUX.1/SD3 with --backend kohya: the CLIP-L text encoder (.safetensors); unset: the base "
        "model's own, or a file beside it."))
    clip_g: str | None = option(None, example="models/clip/clip_g.safetensors", help=(
        "SD3 with --backend kohya: the CLIP-G text encoder (.safetensors); unset: the checkpoint's own, "
        "or a file beside it."))
    t5xxl: str | None = option(None, example="models/clip/t5xxl_fp16.safetensors", help=(
        "FLUX.1/SD3 with --backend kohya: the T5-XXL text encoder, one .safetensors file; unset: the "
        "base model's own, or a file beside it."))
    ae: str | None = option(None, example="models/vae/ae.safetensors", help=(
        "FLUX.1 with --backend kohya: the autoencoder (BFL's ae.safetensors); SD3: a VAE file used "
        "instead of the checkpoint's (--vae). Unset: a file beside the model."))
    backend: Literal["builtin", "kohya", "aitoolkit"] = option("builtin", help=(
        "Who trains: curate's own loop (builtin), sd-scripts' train_network.py (kohya; its SDXL, FLUX.1 "
        "and SD3 scripts for those models), or "
        "ostris/ai-toolkit (aitoolkit: FLUX, Qwen-Image, Z-Image, Wan, SD3 from a job file)."))
    save_precision: Literal["fp16", "bf16", "float"] = option("fp16", help="Precision of saved weights.")
    mixed_precision: Literal["no", "fp16", "bf16"] = option("no", help=(
        "Autocast the frozen model (fp16 needs a CUDA GPU)."))
    # Measured on the tiny model, 2 cores, 64 px, batch 4 (docs/benchmarks.md): idle, 1 thread
    # 0.060 s/step against 2 threads' 0.069; with 3 busy processes, 0.28 against 0.49, and the test
    # suite saw 20-50x at load 5.6 (two threads spin-waiting for a core). Ignored on CUDA.
    threads: int | None = option(None, ge=0, le=1024, example=0, help=(
        "CPU threads; unset: 1 on a machine with 2 or fewer cores, else torch's default; "
        "0: torch's default."))
    # sd-scripts' folder-mode paths: curate train's DATASET argument, and regularisation folders
    train_data_dir: str | None = option(None, example="train/img", help=(
        "The dataset (sd-scripts' name) when curate train is given none; it must match a given one."))
    reg_data_dir: str | None = option(None, example="train/reg", help=(
        "Folder mode: a folder of N_name regularisation subfolders (a dataset.toml lists its own)."))
    # folder mode (and overrides of dataset.toml when set)
    resolution: int | None = option(None, ge=64, le=8192, example=512, help=(
        "Training resolution; unset: dataset.toml's (plain N_name folders: 512)."))
    batch_size: int | None = option(None, ge=1, le=1024, example=2, help=(
        "Batch size; unset: dataset.toml's, else 1."))
    enable_bucket: bool | None = option(None, example=True, help=(
        "Aspect-ratio bucketing; unset: dataset.toml's."))
    min_bucket_reso: int | None = option(None, ge=8, le=8192, example=256, help=(
        "Smallest bucket side; unset: dataset.toml's, else from the resolution."))
    max_bucket_reso: int | None = option(None, ge=8, le=16384, example=1024, help=(
        "Largest bucket side; unset: dataset.toml's, else from the resolution."))
    bucket_reso_steps: int | None = option(None, ge=8, le=1024, example=64, help=(
        "Bucket size step; unset: dataset.toml's, else 64."))
    caption_extension: str = option(".txt", help="Caption extension of plain N_name folders.")
    shuffle_caption: bool | None = option(None, example=True, help=(
        "Shuffle the tags after keep_tokens; unset: dataset.toml's."))
    keep_tokens: int | None = option(None, ge=0, example=1, help=(
        "Leading tags never shuffled; unset: dataset.toml's."))
    caption_dropout_rate: float | None = option(None, ge=0, le=1, example=0.05, help=(
        "Share of steps trained with an empty caption."))
    caption_dropout_every_n_epochs: int | None = option(None, ge=0, example=5, help=(
        "Train every Nth epoch (the 5th, 10th, ...) with empty captions; unset: dataset.toml's."))
    caption_tag_dropout_rate: float | None = option(None, ge=0, le=1, example=0.1, help=(
        "Share of tags dropped from each caption."))

    def check(self) -> None:
        if self.version != VERSION:
            raise CurateError(f"train.version = {self.version}: this curate reads version {VERSION}")
        check_ranges(self, "train")
        if not (self.train_unet or self.train_text_encoder):
            raise CurateError("train.train_unet and train.train_text_encoder are both false: "
                              "nothing to train")
        self._check_network()
        # the saves are OUT/NAME.safetensors, NAME-step00000010.safetensors, ...
        check_name(self.output_name, "train.output_name")

    def _check_network(self) -> None:
        if self.network in ("loha", "lokr") and self.network_dropout is not None:
            raise CurateError(f"train.network_dropout is set but {self.network} has no neuron dropout "
                              "(LyCORIS warns and ignores it); unset it")
        if self.network in ("loha", "lokr") and self.scale_weight_norms is not None:
            raise CurateError(f"train.scale_weight_norms: the built-in trainer scales LoRA weight norms "
                              f"only, not {self.network}; unset it or train with --backend kohya")
        if self.factor == 0:
            raise CurateError("train.factor = 0: give -1 (the most square split) or a positive number")
        if self.factor != -1 and self.network != "lokr":
            raise CurateError(f"train.factor = {self.factor} applies to network lokr only, "
                              f"not {self.network}")

    def network_options(self) -> dict[str, Any]:
        common = {"train_unet": self.train_unet, "train_text_encoder": self.train_text_encoder}
        if self.network == "ia3":
            return {**common, "train_on_input": self.ia3_train_on_input}
        if self.network in ("loha", "lokr"):
            lycoris = {**common, "dim": self.network_dim, "alpha": self.network_alpha,
                       "conv_dim": self.conv_dim, "conv_alpha": self.conv_alpha}
            return lycoris | ({"factor": self.factor} if self.network == "lokr" else {})
        return {**common, "dim": self.network_dim, "alpha": self.network_alpha,
                "dropout": self.network_dropout, "conv_dim": self.conv_dim, "conv_alpha": self.conv_alpha}


def to_toml(config: TrainConfig, header: str = "") -> str:
    """The config as a `[train]` table that `curate train --config` reads back; unset keys are
    written as comments so the file also shows what could be set."""
    lines = [f"# {line}" for line in header.splitlines()] + ["[train]"]
    for item in fields(config):
        value = getattr(config, item.name)
        lines.append(f"# {item.name} = (unset)" if value is None else f"{item.name} = {toml_value(value)}")
    return "\n".join(lines) + "\n"


def migrate(table: dict[str, Any]) -> dict[str, Any]:
    """Bring an older `[train]` table up to VERSION, one numbered step at a time."""
    version = table.get("version", VERSION)
    if not isinstance(version, int) or version > VERSION:
        raise CurateError(f"train.version = {version!r}: not a version this curate reads ({VERSION})")
    while version < VERSION:
        table = {**MIGRATIONS[version](table), "version": version + 1}
        version += 1
    return table


def file_table(config_file: Path, messages: list[tuple[str, str]]) -> dict[str, Any]:
    """The `[train]` table of a TOML file, or the settings of a kohya_ss GUI .json (its keys mapped,
    the ignored ones in `messages`), with sd-scripts' spellings read as TrainConfig keys."""
    from curate.trainer.spellings import normalize

    if not config_file.is_file():
        raise CurateError(f"{config_file}: no such config file")
    if config_file.suffix.lower() == ".json":
        from curate.trainer.kohya_ss import read_recipe

        return read_recipe(config_file, messages)
    table = load_toml(config_file).get("train", {})
    if not isinstance(table, dict):
        raise CurateError(f"{config_file}: train must be a table ([train])")
    return normalize(migrate(table))


def train_config(config_file: Path | None, overrides: Iterable[str] = (),
                 flags: dict[str, Any] | None = None, preset: str | None = None,
                 messages: list[tuple[str, str]] | None = None) -> TrainConfig:
    """Defaults < preset < [train] in the file (or a kohya_ss .json) < --set (`key=v` or
    `train.key=v`) < flags (None = unset). sd-scripts' spellings are read in the file and in
    --set (curate.trainer.spellings); `messages` gets (kind, text) notes about the file."""
    from curate.trainer.presets import preset_table
    from curate.trainer.spellings import normalize

    base = preset_table(preset)
    table = file_table(config_file, messages if messages is not None else []) if config_file else {}
    qualified = [item if item.startswith("train.") else f"train.{item}" for item in overrides]
    table = apply_overrides({"train": table}, qualified).get("train", {})
    if not isinstance(table, dict):
        raise CurateError("--set train=...: train is a table; set its keys (--set train.KEY=VALUE)")
    table = normalize(table, later=True)  # spellings given with --set win over the file's keys
    merged = {**base, **table, **{k: v for k, v in (flags or {}).items() if v is not None}}
    given = [k for k, v in (flags or {}).items() if v is not None]
    config = build(TrainConfig, "train", merged, source="the config file, --preset or --set", flags=given)
    return with_bucket_bounds(config)


def with_bucket_bounds(config: TrainConfig) -> TrainConfig:
    """A resolution given without min/max_bucket_reso brings its own bounds (see
    `curate.buckets.assign.derived_bucket_reso`: 256/1024 at 512 px, 64/256 at 128): a dataset.toml's
    bounds were made for its own resolution, so `--set resolution=128` alone would fail there."""
    if config.resolution is None or None not in (config.min_bucket_reso, config.max_bucket_reso):
        return config
    low, high = derived_bucket_reso(config.resolution, config.bucket_reso_steps or 64)
    return replace(config, min_bucket_reso=config.min_bucket_reso or low,
                   max_bucket_reso=config.max_bucket_reso or high)
