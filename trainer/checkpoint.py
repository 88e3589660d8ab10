"""What a run writes: network files named as sd-scripts names them, and resumable state folders.

Names (REFERENCE §7): `NAME.safetensors` at the end, `NAME-step00000500.safetensors` every N
steps, `NAME-000001.safetensors` every N epochs; with save_state a `...-state` folder beside
each holds the network in full precision, the optimizer and LR-scheduler state and the step
counter. Every random draw of step k is seeded by (seed, k), so the step counter is the whole
RNG state: a run resumed any number of times takes the same steps as one that never stopped.
A state folder is written under a temp name and renamed into place, so it is whole or absent.
"""

from __future__ import annotations

import io
import json
import shutil
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from curate.atomic import TMP_PREFIX, atomic_write_bytes
from curate.errors import CurateError
from curate.trainer.config import TrainConfig
from curate.trainer.data import Dataset, bucket_info
from curate.trainer.formats import as_metadata, modelspec, save_dtype, save_network
from curate.trainer.metadata import dataset_fields
from curate.trainer.networks import AdapterNetwork
from curate.trainer.optim import OPTIMIZER_NAMES

# settings a resumed run must share with the run that saved the state
RESUME_KEYS = ("network", "network_dim", "network_alpha", "conv_dim", "conv_alpha", "factor",
               "ia3_train_on_input", "train_unet", "train_text_encoder", "optimizer", "lr_scheduler", "seed",
               "gradient_accumulation_steps")


SDXL_VERSION = "sdxl_base_v1-0"  # ss_base_model_version of an SDXL network


BLOCK_KEYS = ("down_lr_weight", "mid_lr_weight", "up_lr_weight", "block_lr_weights",
              "block_lr_zero_threshold")


def step_name(name: str, step: int) -> str:
    return f"{name}-step{step:08d}"


def epoch_name(name: str, epoch: int) -> str:
    return f"{name}-{epoch:06d}"


def training_metadata(config: TrainConfig, dataset: Dataset, network: AdapterNetwork, model: Path,
                      started_at: float, total_steps: int, *, v2: bool = False,
                      v_parameterization: bool = False, sdxl: bool = False,
                      processes: int = 1) -> dict[str, Any]:
    """The ss_* fields sd-scripts' train_network.py records, from this run's values (a value
    left unset, None, is left out of the file, where sd-scripts writes "None")."""
    resolution, buckets = dataset.buckets.resolution, dataset.buckets
    # sd-scripts' get_model_version_str_for_sd1_sd2: sd_v1, sd_v2, sd_v2_v; sdxl_train_network's constant
    version = SDXL_VERSION if sdxl else ("sd_v2" if v2 else "sd_v1") + ("_v" if v_parameterization else "")
    run = {
        **dataset_fields(dataset, model, total_steps, config.gradient_accumulation_steps, processes),
        "output_name": config.output_name, "training_started_at": started_at, "base_model_version": version,
        "v2": v2, "v_parameterization": v_parameterization, "sd_model_name": model.name,
        "resolution": f"({resolution[0]}, {resolution[1]})",
        "clip_skip": config.clip_skip, "num_train_images": dataset.num_train_images,
        "num_reg_images": dataset.num_reg_images,
        "batch_size_per_device": dataset.batch_size, "max_train_steps": total_steps, "seed": config.seed,
        "learning_rate": config.learning_rate, "unet_lr": config.unet_lr,
        "text_encoder_lr": config.text_encoder_lr, "optimizer": OPTIMIZER_NAMES[config.optimizer],
        "lr_scheduler": config.lr_scheduler, "lr_warmup_steps": config.lr_warmup_steps,
        "min_snr_gamma": config.min_snr_gamma, "zero_terminal_snr": config.zero_terminal_snr,
        "scale_v_pred_loss_like_noise_pred": config.scale_v_pred_loss_like_noise_pred,
        "v_pred_like_loss": config.v_pred_like_loss, "debiased_estimation": config.debiased_estimation_loss,
        "noise_offset": config.noise_offset,
        "adaptive_noise_scale": config.adaptive_noise_scale, "prior_loss_weight": config.prior_loss_weight,
        "max_grad_norm": config.max_grad_norm, "scale_weight_norms": config.scale_weight_norms,
        "mixed_precision": config.mixed_precision, "enable_bucket": buckets.enable_bucket,
        "bucket_no_upscale": buckets.bucket_no_upscale, "min_bucket_reso": buckets.min_bucket_reso,
        "max_bucket_reso": buckets.max_bucket_reso, "dataset_dirs": dataset.dataset_dirs(),
        "reg_dataset_dirs": dataset.dataset_dirs(reg=True), "tag_frequency": dataset.tag_frequency(),
        "bucket_info": bucket_info(dataset),
        "gradient_accumulation_steps": config.gradient_accumulation_steps,
        "gradient_checkpointing": config.gradient_checkpointing, "max_token_length": config.max_token_length,
        "multires_noise_iterations": config.multires_noise_iterations,
        "multires_noise_discount": config.multires_noise_discount, "cache_latents": config.cache_latents,
    }
    meta = network.metadata()
    blocks = {k: str(getattr(config, k)) for k in BLOCK_KEYS if getattr(config, k) not in (None, 0.0)}
    if blocks:  # sd-scripts takes its block learning rates as network_args and records them there
        meta["ss_network_args"] = json.dumps({**json.loads(meta.get("ss_network_args", "{}")), **blocks})
    return {**meta, **{f"ss_{k}": v for k, v in run.items()}}


def save_network_file(path: Path, network: AdapterNetwork, config: TrainConfig, base: dict[str, Any],
                      step: int, epoch: int) -> Path:
    now = time.time()
    values = {**base, "ss_steps": step, "ss_epoch": epoch, "ss_training_finished_at": now}
    resolution = tuple(int(v) for v in str(base["ss_resolution"]).strip("()").split(","))
    spec = modelspec(config.output_name, (resolution[0], resolution[1]), clip_skip=config.clip_skip,
                     timestamp=float(base["ss_training_started_at"]), v2=base.get("ss_v2") is True,
                     v_parameterization=base.get("ss_v_parameterization") is True,
                     sdxl=base.get("ss_base_model_version") == SDXL_VERSION)
    tensors = network.kohya_state_dict(save_dtype(config.save_precision))
    save_network(path, tensors, {**as_metadata(values), **spec})
    return path


def save_state(folder: Path, network: AdapterNetwork, optimizer: Any, lr_scheduler: Any, step: int,
               config: TrainConfig, world: int = 1) -> Path:
    """A resumable state folder, swapped in whole."""
    tmp = folder.with_name(f"{TMP_PREFIX}{folder.name}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    save_file(network.kohya_state_dict(torch.float32), str(tmp / "network.safetensors"))
    buffer = io.BytesIO()
    torch.save({"optimizer": optimizer.state_dict(), "lr_scheduler": lr_scheduler.state_dict()}, buffer)
    atomic_write_bytes(tmp / "optimizer.pt", buffer.getvalue())
    state = {"step": step, "world_size": world, "config": asdict(config)}
    atomic_write_bytes(tmp / "state.json", json.dumps(state, indent=2).encode("utf-8"))
    old = folder.with_name(f"{TMP_PREFIX}old-{folder.name}")
    if folder.exists():
        folder.rename(old)
    tmp.rename(folder)
    shutil.rmtree(old, ignore_errors=True)
    return folder


def load_state(folder: Path, network: AdapterNetwork, optimizer: Any, lr_scheduler: Any,
               config: TrainConfig, world: int = 1) -> int:
    """Restore a state folder into freshly built objects; returns the step to continue from."""
    try:
        state = json.loads((folder / "state.json").read_text(encoding="utf-8"))
        saved = torch.load(folder / "optimizer.pt", map_location="cpu", weights_only=True)
        tensors = load_file(str(folder / "network.safetensors"))
    except (OSError, ValueError, RuntimeError) as exc:
        raise CurateError(f"{folder}: not a resumable state folder ({exc})") from exc
    differ = [k for k in RESUME_KEYS if state["config"].get(k) != getattr(config, k)]
    if differ:
        raise CurateError(f"{folder}: saved with other settings ({', '.join(differ)}); "
                          "resume with the same ones")
    if state.get("world_size", 1) != world:
        raise CurateError(f"{folder}: saved by a run of {state.get('world_size', 1)} processes; resume with "
                          f"as many (this run has {world}), since each step's batches depend on it")
    network.load_kohya_state_dict(tensors)
    optimizer.load_state_dict(saved["optimizer"])
    lr_scheduler.load_state_dict(saved["lr_scheduler"])
    return int(state["step"])
