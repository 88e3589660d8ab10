"""Loading the frozen base model and turning captions into UNet conditioning, as sd-scripts does.

A base model is a diffusers folder (`model_index.json`, `unet/`, `vae/`, `text_encoder/`,
`tokenizer/`) or a single-file SD 1.x/2.x checkpoint (curate.trainer.single_file: `.safetensors`, or a
`.ckpt` pickle only with allow_pickle and then tensors only), read offline. The noise schedule is
sd-scripts' DDPMScheduler (REFERENCE §7), whatever sampler the model names; the prediction type
(epsilon or v) comes from the scheduler config. Captions become CLIP states in curate.trainer.tokens,
75/150/225 tokens as sd-scripts' max_token_length. A folder's weights are read from
`.safetensors` only unless allow_pickle, and any file of it that fails to load stops the run
with one line naming it (curate.trainer.loading).

SDXL (a folder whose model_index.json names a `text_encoder_2`, or an SDXL single file) adds
the second text encoder and tokenizer; its captions become the concatenated states of both
encoders plus the pooled embedding (curate.trainer.tokens), and its UNet also takes the size numbers
(curate.trainer.data.size_conditioning). With cache_text_encoder_outputs, the conditioning of every
caption is computed once before training and looked up (`Models.text_cache`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from curate.errors import CurateError
from curate.paths import display
from curate.trainer.config import TrainConfig
from curate.trainer.data import Dataset, cacheable_captions, check_sdxl_dataset
from curate.trainer.loading import (
    loading,
    prediction_type,
    read_json_object,
    refuse_pickle_only,
    safetensors_only,
)
from curate.trainer.single_file import SingleFileParts, load_single_file
from curate.trainer.tokens import encode_captions, encode_captions_sdxl

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
    text_encoder_2: nn.Module | None = None  # SDXL's OpenCLIP bigG (CLIPTextModelWithProjection)
    tokenizer_2: Any = None
    # cache_text_encoder_outputs: caption -> (context, pooled or None), on the CPU
    text_cache: dict[str, tuple[torch.Tensor, torch.Tensor | None]] | None = None

    @property
    def sdxl(self) -> bool:
        return self.text_encoder_2 is not None

    @property
    def text_encoders(self) -> list[nn.Module]:
        second = [] if self.text_encoder_2 is None else [self.text_encoder_2]
        return [self.text_encoder, *second]


def _check_model_path(path: Path) -> None:
    if not path.exists():
        raise CurateError(f"{display(path)}: no such model folder or checkpoint file")
    if path.is_dir() and not (path / "model_index.json").is_file():
        raise CurateError(f"{display(path)}: not a diffusers model folder (no model_index.json)")


def _component(root: Path, name: str, cls: Any, allow_pickle: bool) -> Any:
    """One component folder of a diffusers model, read offline; a pickle only with allow_pickle."""
    folder = root / name
    refuse_pickle_only(folder, allow_pickle)
    weights = safetensors_only(allow_pickle) if name.startswith(("unet", "vae", "text_encoder")) else {}
    with loading(folder, {"unet": "UNet", "vae": "VAE"}.get(name, name.replace("_", " "))):
        return cls.from_pretrained(folder, local_files_only=True, **weights)


def _load_folder(path: Path, allow_pickle: bool) -> SingleFileParts:
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

    index = read_json_object(path / "model_index.json", "model index")
    entry = index.get("text_encoder_2")
    sdxl = isinstance(entry, list) and bool(entry) and entry[0] is not None
    prediction = prediction_type(path)  # read first: a broken small file fails before the slow loads
    unet = _component(path, "unet", UNet2DConditionModel, allow_pickle)
    vae = _component(path, "vae", AutoencoderKL, allow_pickle)
    text_encoder = _component(path, "text_encoder", CLIPTextModel, allow_pickle)
    tokenizer = _component(path, "tokenizer", CLIPTokenizer, allow_pickle)
    text_encoder_2 = tokenizer_2 = None
    if sdxl:
        text_encoder_2 = _component(path, "text_encoder_2", CLIPTextModelWithProjection, allow_pickle)
        tokenizer_2 = _component(path, "tokenizer_2", CLIPTokenizer, allow_pickle)
    return SingleFileParts(unet=unet, vae=vae, text_encoder=text_encoder, tokenizer=tokenizer,
                           prediction_type=prediction, text_encoder_2=text_encoder_2, tokenizer_2=tokenizer_2)


def load_models(path: Path, device: torch.device, dtype: torch.dtype = torch.float32, *,
                model_config: str | None = None, allow_pickle: bool = False) -> Models:
    """The UNet, VAE, text encoder, tokenizer and noise scheduler of a base model, frozen.

    `path` is a diffusers folder or a single-file checkpoint (curate.trainer.single_file), which reads
    its configs and tokenizer from `model_config` and opens a pickle only with `allow_pickle`.
    """
    _check_model_path(path)
    from diffusers import DDPMScheduler
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # curate prints its own progress; a second bar is noise
    parts = (load_single_file(path, model_config, allow_pickle) if path.is_file()
             else _load_folder(path, allow_pickle))
    unet, vae, text_encoder = parts.unet, parts.vae, parts.text_encoder
    encoders = [text_encoder] if parts.text_encoder_2 is None else [text_encoder, parts.text_encoder_2]
    for module in (unet, vae, *encoders):
        module.requires_grad_(False)
        module.eval()
        module.to(device)
    if dtype != torch.float32:  # the VAE stays in float32: SD's and SDXL's overflow in fp16
        for module in (unet, *encoders):
            module.to(dtype=dtype)
    if parts.tokenizer_2 is not None and parts.tokenizer_2.pad_token_id != 0:
        # sd-scripts pads SDXL's second tokenizer with id 0 ("!") whatever its files say
        parts.tokenizer_2.pad_token = parts.tokenizer_2.convert_ids_to_tokens(0)
    prediction = parts.prediction_type
    return Models(unet=unet, vae=vae, text_encoder=text_encoder, tokenizer=parts.tokenizer,
                  noise_scheduler=DDPMScheduler(**NOISE_SCHEDULE, prediction_type=prediction),
                  vae_scale=float(getattr(vae.config, "scaling_factor", 0.18215)),
                  v_parameterization=prediction == "v_prediction",
                  text_encoder_2=parts.text_encoder_2, tokenizer_2=parts.tokenizer_2)


def encode_prompts(models: Models, captions: list[str], clip_skip: int | None = None, *,
                   max_token_length: int = 75) -> torch.Tensor:
    """CLIP hidden states for the UNet (curate.trainer.tokens): 77 positions, or 152/227 for long captions."""
    return encode_captions(models.text_encoder, models.tokenizer, captions, clip_skip, max_token_length)


def encode_conditioning(models: Models, captions: list[str], clip_skip: int | None = None, *,
                        max_token_length: int = 75) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(UNet context, pooled embedding or None for SD 1.x/2.x), from the text cache when it has
    every caption."""
    cache = models.text_cache
    if cache is not None and all(c in cache for c in captions):
        device = next(models.unet.parameters()).device
        context = torch.stack([cache[c][0] for c in captions]).to(device)
        pooled = [p for c in captions if (p := cache[c][1]) is not None]
        return context, torch.stack(pooled).to(device) if pooled else None
    if models.text_encoder_2 is None:
        return encode_prompts(models, captions, clip_skip, max_token_length=max_token_length), None
    return encode_captions_sdxl((models.text_encoder, models.text_encoder_2),
                                (models.tokenizer, models.tokenizer_2), captions, max_token_length)


def cache_conditioning(models: Models, captions: list[str], max_token_length: int = 75,
                       clip_skip: int | None = None, batch_size: int = 8) -> int:
    """cache_text_encoder_outputs: encode each distinct caption once; returns how many."""
    unique = [c for c in dict.fromkeys(captions) if models.text_cache is None or c not in models.text_cache]
    cache = models.text_cache if models.text_cache is not None else {}
    models.text_cache = None  # encode for real below, not from a half-filled cache
    with torch.no_grad():
        for start in range(0, len(unique), batch_size):
            chunk = unique[start:start + batch_size]
            context, pooled = encode_conditioning(models, chunk, clip_skip, max_token_length=max_token_length)
            for k, caption in enumerate(chunk):
                cache[caption] = (context[k].cpu(), None if pooled is None else pooled[k].cpu())
    models.text_cache = cache
    return len(unique)


def prepare_text(models: Models, dataset: Dataset, where: Path, config: TrainConfig) -> None:
    """Before training: SDXL's bucket-step check, then cache_text_encoder_outputs' encoding."""
    if models.sdxl:
        check_sdxl_dataset(dataset, where)
    if config.cache_text_encoder_outputs:
        captions = cacheable_captions(dataset, where, config.train_text_encoder)
        cache_conditioning(models, captions, config.max_token_length, config.clip_skip)
