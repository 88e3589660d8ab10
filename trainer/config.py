"""Options of `curate train`: a --preset, the `[train]` table of a TOML file, `--set key=value`, then flags.

Names follow sd-scripts' arguments (network_dim, min_snr_gamma, save_every_n_steps, ...) so
that a guide's settings carry over. Dataset settings (resolution, batch size, repeats, caption
options) come from the dataset's own dataset.toml when it has one; the fields here marked
"folder mode" apply to plain `N_name` folders and override dataset.toml only when set.
`version` numbers the file format; `MIGRATIONS[v]` turns a version-v table into version v+1.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Literal

from buckets.assign import derived_bucket_reso
from curate.config import apply_overrides, build, check_ranges, load_toml, option, toml_value
from curate.errors import CurateError
from curate.paths import check_name

VERSION = 1
MIGRATIONS: dict[int, Callable[[dict[str, Any]], dict[str, Any]]] = {}


@dataclass(frozen=True)
class TrainConfig:
    version: int = VERSION
    network: Literal["lora", "ia3"] = "lora"
    network_dim: int = option(8, ge=1, le=1024)
    network_alpha: float = option(1.0, ge=0)
    network_dropout: float | None = option(None, ge=0, lt=1)
    conv_dim: int | None = option(None, ge=1, le=1024)
    conv_alpha: float | None = option(None, ge=0)
    ia3_train_on_input: bool = True
    train_unet: bool = True
    train_text_encoder: bool = True
    learning_rate: float = option(1e-4, gt=0)
    unet_lr: float | None = option(None, ge=0)
    text_encoder_lr: float | None = option(None, ge=0)
    optimizer: Literal["adamw", "adamw8bit", "prodigy", "dadaptadam"] = "adamw"
    optimizer_args: dict[str, Any] = field(default_factory=dict)
    # per-block learning rates (SD 1.x/2.x UNets): sd-scripts' down/mid/up lists ("sine", "cosine",
    # "linear", "reverse_linear", "zeros" [+N], or 12 / 1 / 12 comma values), or one block-weight
    # spec as `curate lora blocks` shows ("OUTALL", 17 or 26 values, "IN=0,MID=0,OUT=1"); blocks at
    # or below block_lr_zero_threshold are not trained (e.g. OUT blocks only, for a "skin" LoRA)
    down_lr_weight: str | None = None
    mid_lr_weight: str | None = None
    up_lr_weight: str | None = None
    block_lr_weights: str | None = None
    block_lr_zero_threshold: float = option(0.0, ge=0)
    # diffusers' schedules by sd-scripts' names, plus torch's CosineAnnealingWarmRestarts
    # ("cosine_annealing_warm_restarts", stepped once per optimiser step) as the iA3 guide uses it
    lr_scheduler: Literal["constant", "constant_with_warmup", "linear", "cosine", "cosine_with_restarts",
                          "polynomial", "cosine_annealing_warm_restarts"] = "constant"
    lr_warmup_steps: int = option(0, ge=0)
    lr_scheduler_num_cycles: int = option(1, ge=1)  # cosine_with_restarts: hard restarts over the run
    lr_scheduler_power: float = option(1.0, gt=0)  # polynomial: 1 = linear decay
    T_0: int = option(160, ge=1)  # cosine_annealing_warm_restarts: steps of the first cycle (the guide's)
    T_mult: int = option(1, ge=1)  # each later cycle is T_mult times longer
    eta_min: float = option(0.0, ge=0)  # the learning rate at the bottom of each cycle
    max_grad_norm: float = option(1.0, ge=0)
    gradient_accumulation_steps: int = option(1, ge=1, le=1024)
    gradient_checkpointing: bool = False
    max_train_steps: int = option(1600, ge=1)  # sd-scripts' default
    max_train_epochs: int | None = option(None, ge=1)  # when set, wins over max_train_steps
    seed: int = option(42, ge=0, le=2**32 - 1)
    noise_offset: float = option(0.0, ge=0, le=1)
    adaptive_noise_scale: float | None = option(None, ge=-1, le=1)
    # pyramid noise (sd-scripts' multires noise)
    multires_noise_iterations: int | None = option(None, ge=1, le=32)
    multires_noise_discount: float = option(0.3, ge=0, le=1)
    # None: from the model folder's scheduler config (prediction_type); true/false forces it
    v_parameterization: bool | None = None
    min_snr_gamma: float | None = option(None, gt=0)
    # v-prediction models (sd-scripts' names): rescale the schedule to zero terminal SNR,
    # weight the v loss like an eps loss (SNR/(SNR+1)), add a v-like term, debiased estimation
    zero_terminal_snr: bool = False
    scale_v_pred_loss_like_noise_pred: bool = False
    v_pred_like_loss: float | None = option(None, ge=0)
    debiased_estimation_loss: bool = False
    prior_loss_weight: float = option(1.0, ge=0)
    clip_skip: int | None = option(None, ge=1, le=24)
    max_token_length: Literal[75, 150, 225] = 75  # CLIP tokens per caption, in chunks of 75 as sd-scripts
    cache_latents: bool = False  # encode every image once before training (disables flip_aug's randomness)
    cache_latents_to_disk: bool = False  # ... and keep them in IMAGE.npz beside each image between runs
    # encode each caption once before training (text encoders frozen, no caption shuffle or dropout)
    cache_text_encoder_outputs: bool = False
    scale_weight_norms: float | None = option(None, gt=0)
    output_name: str = "last"
    save_every_n_steps: int | None = option(None, ge=1)
    save_every_n_epochs: int | None = option(None, ge=1)
    save_state: bool = False
    save_last_n_steps: int | None = option(None, ge=1)  # keep only the step saves of the last N steps
    save_last_n_epochs: int | None = option(None, ge=1)  # keep only the last N epoch saves
    sample_prompts: str | None = None  # a prompt file in sd-scripts syntax (--n --w --h --d --l --s)
    sample_every_n_steps: int | None = option(None, ge=1)
    sample_every_n_epochs: int | None = option(None, ge=1)
    sample_sampler: str = "ddim"
    logging_dir: str | None = None  # TensorBoard event files go to logging_dir/[log_prefix]TIMESTAMP
    log_prefix: str | None = None
    # single-file base models: a diffusers folder (or Hub repo id, cached) with the configs and
    # tokenizer; None: the configs shipped for SD1.x/2.x
    model_config: str | None = None
    allow_pickle: bool = False  # read a .ckpt (pickle) base model, with torch.load(weights_only=True)
    backend: Literal["builtin", "kohya"] = "builtin"
    save_precision: Literal["fp16", "bf16", "float"] = "fp16"
    mixed_precision: Literal["no", "fp16", "bf16"] = "no"
    # CPU intra-op threads; None = auto: 1 when os.cpu_count() <= 2, else torch's default; 0 = torch's
    # default. Measured on the tiny model, 2 cores, 64 px, batch 4 (docs/benchmarks.md): idle,
    # 1 thread 0.060 s/step against 2 threads' 0.069; with 3 busy processes, 0.28 against 0.49, and
    # the test suite saw 20-50x at load 5.6 (two threads spin-waiting for a core). Ignored on CUDA.
    threads: int | None = option(None, ge=0, le=1024)
    # folder mode (and overrides of dataset.toml when set)
    resolution: int | None = option(None, ge=64, le=8192)
    batch_size: int | None = option(None, ge=1, le=1024)
    enable_bucket: bool | None = None
    min_bucket_reso: int | None = option(None, ge=8, le=8192)
    max_bucket_reso: int | None = option(None, ge=8, le=16384)
    bucket_reso_steps: int | None = option(None, ge=8, le=1024)
    caption_extension: str = ".txt"
    shuffle_caption: bool | None = None
    keep_tokens: int | None = option(None, ge=0)
    caption_dropout_rate: float | None = option(None, ge=0, le=1)
    caption_tag_dropout_rate: float | None = option(None, ge=0, le=1)

    def check(self) -> None:
        if self.version != VERSION:
            raise CurateError(f"train.version = {self.version}: this curate reads version {VERSION}")
        check_ranges(self, "train")
        if not (self.train_unet or self.train_text_encoder):
            raise CurateError("train.train_unet and train.train_text_encoder are both false: "
                              "nothing to train")
        # the saves are OUT/NAME.safetensors, NAME-step00000010.safetensors, ...
        check_name(self.output_name, "train.output_name")

    def network_options(self) -> dict[str, Any]:
        common = {"train_unet": self.train_unet, "train_text_encoder": self.train_text_encoder}
        if self.network == "ia3":
            return {**common, "train_on_input": self.ia3_train_on_input}
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


def train_config(config_file: Path | None, overrides: Iterable[str] = (),
                 flags: dict[str, Any] | None = None, preset: str | None = None) -> TrainConfig:
    """Defaults < preset < [train] in the file < --set (`key=v` or `train.key=v`) < flags (None = unset)."""
    from trainer.presets import preset_table

    base = preset_table(preset)
    data = load_toml(config_file) if config_file else {}
    if config_file and not config_file.is_file():
        raise CurateError(f"{config_file}: no such config file")
    qualified = [item if item.startswith("train.") else f"train.{item}" for item in overrides]
    table = apply_overrides(data, qualified).get("train", {})
    if not isinstance(table, dict):
        raise CurateError("train in the config file must be a table ([train])")
    merged = {**base, **migrate(table), **{k: v for k, v in (flags or {}).items() if v is not None}}
    given = [k for k, v in (flags or {}).items() if v is not None]
    config = build(TrainConfig, "train", merged, source="the config file, --preset or --set", flags=given)
    return with_bucket_bounds(config)


def with_bucket_bounds(config: TrainConfig) -> TrainConfig:
    """A resolution given without min/max_bucket_reso brings its own bounds (see
    `buckets.assign.derived_bucket_reso`: 256/1024 at 512 px, 64/256 at 128): a dataset.toml's
    bounds were made for its own resolution, so `--set resolution=128` alone would fail there."""
    if config.resolution is None or None not in (config.min_bucket_reso, config.max_bucket_reso):
        return config
    low, high = derived_bucket_reso(config.resolution, config.bucket_reso_steps or 64)
    return replace(config, min_bucket_reso=config.min_bucket_reso or low,
                   max_bucket_reso=config.max_bucket_reso or high)
