"""Options of `curate train`: a --preset, the `[train]` table of a TOML file, `--set key=value`, then flags.

Names follow sd-scripts' arguments (network_dim, min_snr_gamma, save_every_n_steps, ...) so
that a guide's settings carry over. Dataset settings (resolution, batch size, repeats, caption
options) come from the dataset's own dataset.toml when it has one; the fields here marked
"folder mode" apply to plain `N_name` folders and override dataset.toml only when set.
`version` numbers the file format; `MIGRATIONS[v]` turns a version-v table into version v+1.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Literal

from curate.config import apply_overrides, build, load_toml, toml_value
from curate.errors import CurateError

VERSION = 1
MIGRATIONS: dict[int, Callable[[dict[str, Any]], dict[str, Any]]] = {}


@dataclass(frozen=True)
class TrainConfig:
    version: int = VERSION
    network: Literal["lora", "ia3"] = "lora"
    network_dim: int = 8
    network_alpha: float = 1.0
    network_dropout: float | None = None
    conv_dim: int | None = None
    conv_alpha: float | None = None
    ia3_train_on_input: bool = True
    train_unet: bool = True
    train_text_encoder: bool = True
    learning_rate: float = 1e-4
    unet_lr: float | None = None
    text_encoder_lr: float | None = None
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
    block_lr_zero_threshold: float = 0.0
    # diffusers' schedules by sd-scripts' names, plus torch's CosineAnnealingWarmRestarts
    # ("cosine_annealing_warm_restarts", stepped once per optimiser step) as the iA3 guide uses it
    lr_scheduler: Literal["constant", "constant_with_warmup", "linear", "cosine", "cosine_with_restarts",
                          "polynomial", "cosine_annealing_warm_restarts"] = "constant"
    lr_warmup_steps: int = 0
    lr_scheduler_num_cycles: int = 1  # cosine_with_restarts: hard restarts over the run
    lr_scheduler_power: float = 1.0  # polynomial: 1 = linear decay
    T_0: int = 160  # cosine_annealing_warm_restarts: steps of the first cycle (the guide's)
    T_mult: int = 1  # each later cycle is T_mult times longer
    eta_min: float = 0.0  # the learning rate at the bottom of each cycle
    max_grad_norm: float = 1.0
    gradient_accumulation_steps: int = 1
    gradient_checkpointing: bool = False
    max_train_steps: int = 1600  # sd-scripts' default
    max_train_epochs: int | None = None  # when set, wins over max_train_steps
    seed: int = 42
    noise_offset: float = 0.0
    adaptive_noise_scale: float | None = None
    multires_noise_iterations: int | None = None  # pyramid noise (sd-scripts' multires noise)
    multires_noise_discount: float = 0.3
    # None: from the model folder's scheduler config (prediction_type); true/false forces it
    v_parameterization: bool | None = None
    min_snr_gamma: float | None = None
    # v-prediction models (sd-scripts' names): rescale the schedule to zero terminal SNR,
    # weight the v loss like an eps loss (SNR/(SNR+1)), add a v-like term, debiased estimation
    zero_terminal_snr: bool = False
    scale_v_pred_loss_like_noise_pred: bool = False
    v_pred_like_loss: float | None = None
    debiased_estimation_loss: bool = False
    prior_loss_weight: float = 1.0
    clip_skip: int | None = None
    max_token_length: Literal[75, 150, 225] = 75  # CLIP tokens per caption, in chunks of 75 as sd-scripts
    cache_latents: bool = False  # encode every image once before training (disables flip_aug's randomness)
    cache_latents_to_disk: bool = False  # ... and keep them in IMAGE.npz beside each image between runs
    # encode each caption once before training (text encoders frozen, no caption shuffle or dropout)
    cache_text_encoder_outputs: bool = False
    scale_weight_norms: float | None = None
    output_name: str = "last"
    save_every_n_steps: int | None = None
    save_every_n_epochs: int | None = None
    save_state: bool = False
    save_last_n_steps: int | None = None  # keep only the step saves of the last N steps
    save_last_n_epochs: int | None = None  # keep only the last N epoch saves
    sample_prompts: str | None = None  # a prompt file in sd-scripts syntax (--n --w --h --d --l --s)
    sample_every_n_steps: int | None = None
    sample_every_n_epochs: int | None = None
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
    threads: int | None = None
    # folder mode (and overrides of dataset.toml when set)
    resolution: int | None = None
    batch_size: int | None = None
    enable_bucket: bool | None = None
    min_bucket_reso: int | None = None
    max_bucket_reso: int | None = None
    bucket_reso_steps: int | None = None
    caption_extension: str = ".txt"
    shuffle_caption: bool | None = None
    keep_tokens: int | None = None
    caption_dropout_rate: float | None = None
    caption_tag_dropout_rate: float | None = None

    def check(self) -> None:
        if self.version != VERSION:
            raise CurateError(f"train.version = {self.version}: this curate reads version {VERSION}")
        positive = {"network_dim": self.network_dim, "max_train_steps": self.max_train_steps,
                    "max_train_epochs": self.max_train_epochs, "save_every_n_steps": self.save_every_n_steps,
                    "save_every_n_epochs": self.save_every_n_epochs, "batch_size": self.batch_size,
                    "resolution": self.resolution, "conv_dim": self.conv_dim, "clip_skip": self.clip_skip,
                    "lr_scheduler_num_cycles": self.lr_scheduler_num_cycles, "T_0": self.T_0,
                    "T_mult": self.T_mult, "gradient_accumulation_steps": self.gradient_accumulation_steps,
                    "multires_noise_iterations": self.multires_noise_iterations,
                    "save_last_n_steps": self.save_last_n_steps,
                    "save_last_n_epochs": self.save_last_n_epochs,
                    "sample_every_n_steps": self.sample_every_n_steps,
                    "sample_every_n_epochs": self.sample_every_n_epochs}
        for name, value in positive.items():
            if value is not None and value < 1:
                raise CurateError(f"train.{name} = {value}: must be at least 1")
        if self.threads is not None and self.threads < 0:
            raise CurateError(f"train.threads = {self.threads}: must be 0 (torch's default) or more")
        if self.learning_rate <= 0:
            raise CurateError(f"train.learning_rate = {self.learning_rate}: must be positive")
        if not (self.train_unet or self.train_text_encoder):
            raise CurateError("train.train_unet and train.train_text_encoder are both false: "
                              "nothing to train")
        if not self.output_name or "/" in self.output_name:
            raise CurateError(f"train.output_name = {self.output_name!r}: must be a plain file name")

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
    config = build(TrainConfig, "train", merged)
    config.check()
    return config
