"""Loading the frozen base model and turning captions into UNet conditioning, as sd-scripts does.

A base model is a diffusers folder (`model_index.json`, `unet/`, `vae/`, `text_encoder/`,
`tokenizer/`) or a single-file SD 1.x/2.x checkpoint (trainer.single_file: `.safetensors`, or a
`.ckpt` pickle only with allow_pickle and then tensors only), read offline. The noise schedule is
sd-scripts' DDPMScheduler (REFERENCE §7), whatever sampler the model names; the prediction type
(epsilon or v) comes from the scheduler config. Captions become CLIP states in trainer.tokens,
75/150/225 tokens as sd-scripts' max_token_length.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from curate.errors import CurateError
from trainer.single_file import SingleFileParts, load_single_file
from trainer.tokens import encode_captions

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
    if not path.exists():
        raise CurateError(f"{path}: no such model folder or checkpoint file")
    if path.is_dir() and not (path / "model_index.json").is_file():
        raise CurateError(f"{path}: not a diffusers model folder (no model_index.json)")


def _load_folder(path: Path) -> SingleFileParts:
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTokenizer

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
    return SingleFileParts(unet=unet, vae=vae, text_encoder=text_encoder, tokenizer=tokenizer,
                           prediction_type=prediction)


def load_models(path: Path, device: torch.device, dtype: torch.dtype = torch.float32, *,
                model_config: str | None = None, allow_pickle: bool = False) -> Models:
    """The UNet, VAE, text encoder, tokenizer and noise scheduler of a base model, frozen.

    `path` is a diffusers folder or a single-file checkpoint (trainer.single_file), which reads
    its configs and tokenizer from `model_config` and opens a pickle only with `allow_pickle`.
    """
    _check_model_path(path)
    from diffusers import DDPMScheduler
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # curate prints its own progress; a second bar is noise
    parts = load_single_file(path, model_config, allow_pickle) if path.is_file() else _load_folder(path)
    unet, vae, text_encoder = parts.unet, parts.vae, parts.text_encoder
    for module in (unet, vae, text_encoder):
        module.requires_grad_(False)
        module.eval()
        module.to(device)
    if dtype != torch.float32:  # the VAE stays in float32: SD's overflows in fp16
        unet.to(dtype=dtype)
        text_encoder.to(dtype=dtype)
    prediction = parts.prediction_type
    return Models(unet=unet, vae=vae, text_encoder=text_encoder, tokenizer=parts.tokenizer,
                  noise_scheduler=DDPMScheduler(**NOISE_SCHEDULE, prediction_type=prediction),
                  vae_scale=float(getattr(vae.config, "scaling_factor", 0.18215)),
                  v_parameterization=prediction == "v_prediction")


def encode_prompts(models: Models, captions: list[str], clip_skip: int | None = None, *,
                   max_token_length: int = 75) -> torch.Tensor:
    """CLIP hidden states for the UNet (trainer.tokens): 77 positions, or 152/227 for long captions."""
    return encode_captions(models.text_encoder, models.tokenizer, captions, clip_skip, max_token_length)
