"""Loading the frozen base model and turning captions into UNet conditioning, as sd-scripts does.

A base model is a diffusers folder (`model_index.json`, `unet/`, `vae/`, `text_encoder/`,
`tokenizer/`), read offline. The noise schedule is sd-scripts' DDPMScheduler (REFERENCE §7),
whatever sampler the folder names; the prediction type (epsilon or v) comes from the folder's
scheduler config. Single-file checkpoints are refused with what to do: a `.ckpt` is a pickle
that can run code when loaded.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from curate.errors import CurateError

NOISE_SCHEDULE: dict[str, Any] = {
    "beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear",
    "num_train_timesteps": 1000, "clip_sample": False,
}


@dataclass
class Models:
    unet: nn.Module
    vae: nn.Module
    text_encoder: nn.Module
    tokenizer: Any
    noise_scheduler: Any
    vae_scale: float
    v_parameterization: bool


def _check_model_path(path: Path) -> None:
    if path.suffix.lower() in (".ckpt", ".pt", ".pth", ".bin"):
        raise CurateError(f"{path}: a pickle checkpoint can run code when loaded; convert it to a "
                          "diffusers folder with a tool you trust, then pass that folder")
    if path.is_file():
        raise CurateError(f"{path}: single-file checkpoints are not read yet; pass a diffusers folder "
                          "(diffusers' StableDiffusionPipeline.from_single_file(...).save_pretrained(DIR))")
    if not (path / "model_index.json").is_file():
        raise CurateError(f"{path}: not a diffusers model folder (no model_index.json)")


def load_models(path: Path, device: torch.device, dtype: torch.dtype = torch.float32) -> Models:
    """The UNet, VAE, text encoder, tokenizer and noise scheduler of a diffusers folder, frozen."""
    _check_model_path(path)
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # curate prints its own progress; a second bar is noise

    try:
        unet = UNet2DConditionModel.from_pretrained(path / "unet", local_files_only=True)
        vae = AutoencoderKL.from_pretrained(path / "vae", local_files_only=True)
        text_encoder = CLIPTextModel.from_pretrained(path / "text_encoder", local_files_only=True)
        tokenizer = CLIPTokenizer.from_pretrained(path / "tokenizer", local_files_only=True)
    except (OSError, ValueError) as exc:
        raise CurateError(f"{path}: cannot load the model ({exc})") from exc
    scheduler_config = path / "scheduler" / "scheduler_config.json"
    prediction = "epsilon"
    if scheduler_config.is_file():
        saved = json.loads(scheduler_config.read_text(encoding="utf-8"))
        prediction = saved.get("prediction_type", prediction)
    for module in (unet, vae, text_encoder):
        module.requires_grad_(False)
        module.eval()
        module.to(device)
    if dtype != torch.float32:  # the VAE stays in float32: SD's overflows in fp16
        unet.to(dtype=dtype)
        text_encoder.to(dtype=dtype)
    return Models(unet=unet, vae=vae, text_encoder=text_encoder, tokenizer=tokenizer,
                  noise_scheduler=DDPMScheduler(**NOISE_SCHEDULE, prediction_type=prediction),
                  vae_scale=float(getattr(vae.config, "scaling_factor", 0.18215)),
                  v_parameterization=prediction == "v_prediction")


def _final_layer_norm(text_encoder: nn.Module) -> nn.Module:
    inner = getattr(text_encoder, "text_model", text_encoder)  # transformers 4 wraps, 5 does not
    norm: nn.Module = inner.final_layer_norm
    return norm


def encode_prompts(models: Models, captions: list[str], clip_skip: int | None = None) -> torch.Tensor:
    """CLIP hidden states for the UNet; clip_skip k takes hidden_states[-k], then the final norm."""
    device = next(models.text_encoder.parameters()).device
    tokenizer = models.tokenizer
    ids = tokenizer(captions, padding="max_length", max_length=tokenizer.model_max_length, truncation=True,
                    return_tensors="pt").input_ids.to(device)
    if clip_skip is None or clip_skip <= 1:
        hidden: torch.Tensor = models.text_encoder(ids).last_hidden_state
        return hidden
    states = models.text_encoder(ids, output_hidden_states=True).hidden_states
    out: torch.Tensor = _final_layer_norm(models.text_encoder)(states[-clip_skip])
    return out
