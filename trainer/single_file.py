"""Single-file SD 1.x / 2.x / SDXL base checkpoints (`.safetensors`, or `.ckpt` on request), read offline.

A single file holds only weights, in the original CompVis layout. diffusers' single-file loaders
convert them to its UNet, VAE and CLIP text encoder, but need each component's diffusers config
and the CLIP tokenizer files, which they normally fetch from the Hub. Offline they come from:

- `model_config`: a diffusers folder, or the id of a Hub repository already in the local cache;
  its unet/vae/text_encoder configs, tokenizer and scheduler prediction type are used;
- otherwise the configs shipped in `trainer/configs/sd1` (stable-diffusion-v1-5),
  `trainer/configs/sd2` (stable-diffusion-2-1, 768 px, v-prediction) and `trainer/configs/sdxl`
  (stable-diffusion-xl-base-1.0), chosen from the checkpoint's keys as diffusers does: SDXL's
  pair of text encoders (`conditioner.embedders.*`) mean SDXL, OpenCLIP text weights
  (`cond_stage_model.model.*`) SD 2.x, CLIP ones (`cond_stage_model.transformer.*`) SD 1.x.
  The tokenizers' vocabularies (1.6 MB each) are not shipped; they must already be in the
  Hugging Face cache.

The file is read here, not by diffusers, so that a pickle is never opened by accident: `.ckpt`
and friends are refused unless `allow_pickle`, and then read with `torch.load(weights_only=True)`,
which unpickles tensors and plain containers only and refuses any other object instead of
running its code. diffusers gets the resulting state dict.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn

from curate.errors import CurateError
from curate.paths import display
from curate.trainer.loading import PICKLE_SUFFIXES, first_line, loading, pickle_refused, prediction_type

CONFIGS = Path(__file__).parent / "configs"
UNET_KEY = "model.diffusion_model.input_blocks.0.0.weight"
VAE_KEY = "first_stage_model.encoder.conv_in.weight"
CLIP_KEY = "cond_stage_model.transformer.text_model.embeddings.position_embedding.weight"
OPEN_CLIP_KEY = "cond_stage_model.model.token_embedding.weight"
SDXL_KEYS = ("conditioner.embedders.0.transformer.text_model.embeddings.position_embedding.weight",
             "conditioner.embedders.1.model.positional_embedding")
# where the tokenizer of each family lives on the Hub: (repo, subfolder), first one named in errors
TOKENIZER_REPOS: dict[str, list[tuple[str, str]]] = {
    "sd1": [("openai/clip-vit-large-patch14", ""),
            ("stable-diffusion-v1-5/stable-diffusion-v1-5", "tokenizer"),
            ("runwayml/stable-diffusion-v1-5", "tokenizer")],
    "sd2": [("stabilityai/stable-diffusion-2-1", "tokenizer"),
            ("stabilityai/stable-diffusion-2", "tokenizer")],
    "sdxl": [("stabilityai/stable-diffusion-xl-base-1.0", "tokenizer"),
             ("openai/clip-vit-large-patch14", "")],
    "sdxl_2": [("stabilityai/stable-diffusion-xl-base-1.0", "tokenizer_2"),
               ("laion/CLIP-ViT-bigG-14-laion2B-39B-b160k", "")],
}
Family = Literal["sd1", "sd2", "sdxl"]


@dataclass
class SingleFileParts:
    unet: nn.Module
    vae: nn.Module
    text_encoder: nn.Module
    tokenizer: Any
    prediction_type: str
    text_encoder_2: nn.Module | None = None  # SDXL only
    tokenizer_2: Any = None


def _read_pickle(path: Path) -> Any:
    """The tensors of a pickle via torch.load(weights_only=True), which builds no other object."""
    with loading(path, "PyTorch checkpoint"):
        return torch.load(path, map_location="cpu", weights_only=True)


def read_checkpoint(path: Path, allow_pickle: bool = False) -> dict[str, torch.Tensor]:
    """The tensors of a single-file checkpoint, unwrapped from any `state_dict` nesting."""
    suffix = path.suffix.lower()
    if suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            loaded: Any = load_file(str(path))
        except (SafetensorError, OSError, ValueError) as exc:
            raise CurateError(f"{display(path)}: not a readable .safetensors file "
                              f"({first_line(exc)})") from exc
    elif suffix in PICKLE_SUFFIXES:
        if not allow_pickle:
            raise pickle_refused(path)
        loaded = _read_pickle(path)
    else:
        raise CurateError(f"{path}: not a model checkpoint (.safetensors, or .ckpt with --allow-pickle) "
                          "nor a diffusers folder")
    while isinstance(loaded, dict) and isinstance(loaded.get("state_dict"), dict):
        loaded = loaded["state_dict"]
    if not isinstance(loaded, dict):
        raise CurateError(f"{path}: holds a {type(loaded).__name__}, not a state dict of tensors")
    return {k: v for k, v in loaded.items() if isinstance(k, str) and isinstance(v, torch.Tensor)}


def detect_family(state: dict[str, torch.Tensor], path: Path) -> Family:
    """SD 1.x, 2.x or SDXL from the text encoders' layout; anything else is refused."""
    if UNET_KEY not in state or VAE_KEY not in state:
        raise CurateError(f"{path}: not a Stable Diffusion 1.x/2.x checkpoint nor an SDXL one (no {UNET_KEY} "
                          f"or {VAE_KEY}); other models are not supported")
    if any(key in state for key in SDXL_KEYS):
        if not all(key in state for key in SDXL_KEYS):
            raise CurateError(f"{path}: an SDXL checkpoint without both text encoders (an SDXL refiner?); "
                              "only SDXL base models train here")
        return "sdxl"
    if OPEN_CLIP_KEY in state:
        return "sd2"
    if CLIP_KEY in state:
        return "sd1"
    raise CurateError(f"{path}: the checkpoint has no text encoder weights (neither {CLIP_KEY} nor "
                      f"{OPEN_CLIP_KEY}); pass a checkpoint with all of UNet, VAE and text encoder")


def _hub_cache() -> str:
    from huggingface_hub import constants

    return str(constants.HF_HUB_CACHE)  # read at call time: HF_HOME / HF_HUB_CACHE as set now


def _cached_repo(repo_id: str) -> Path | None:
    """The local snapshot folder of a Hub repo already downloaded, or None."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HFValidationError, LocalEntryNotFoundError

    try:
        return Path(snapshot_download(repo_id, cache_dir=_hub_cache(), local_files_only=True))
    except (LocalEntryNotFoundError, HFValidationError, OSError, ValueError):
        return None


def config_folder(model_config: str | None, family: Family) -> Path:
    """The diffusers-layout folder whose configs describe the checkpoint."""
    if model_config is None:
        return CONFIGS / family
    folder = Path(model_config).expanduser()
    if folder.is_dir():
        return folder
    cached = _cached_repo(model_config)
    if cached is None:
        raise CurateError(f"model_config {model_config}: neither a folder nor a Hub repository in the local "
                          f"cache ({_hub_cache()}); pass a diffusers folder")
    return cached


def _load_tokenizer(folder: Path) -> Any | None:
    from transformers import CLIPTokenizer

    slow = (folder / "vocab.json").is_file() and (folder / "merges.txt").is_file()
    if not slow and not (folder / "tokenizer.json").is_file():
        return None
    try:
        return CLIPTokenizer.from_pretrained(folder, local_files_only=True)
    except Exception:  # a broken tokenizer file: the caller says which tokenizer is missing
        return None


def load_tokenizer(path: Path, model_config: str | None, config_dir: Path, family: Family,
                   folder: str = "tokenizer") -> Any:
    """The CLIP tokenizer: model_config's `tokenizer/` folder (SDXL's second: `tokenizer_2/`),
    else the Hugging Face cache."""
    if model_config is not None:
        tokenizer = _load_tokenizer(config_dir / folder)
        if tokenizer is None:
            raise CurateError(f"model_config {model_config}: no CLIP tokenizer ({folder}/tokenizer.json, "
                              "or vocab.json and merges.txt); pass a complete diffusers folder")
        return tokenizer
    repos = TOKENIZER_REPOS[family + folder.removeprefix("tokenizer")]
    for repo, subfolder in repos:
        snapshot = _cached_repo(repo)
        if snapshot is not None and (tokenizer := _load_tokenizer(snapshot / subfolder)) is not None:
            return tokenizer
    repo, subfolder = repos[0]
    command = f"hf download {repo}" + (f" --include '{subfolder}/*'" if subfolder else "")
    raise CurateError(f"{path}: its {family.upper()} CLIP tokenizer is not in the Hugging Face cache "
                      f"({_hub_cache()}); download it with `{command}`, or pass --set model_config=DIR "
                      f"(a diffusers folder with {folder}/)")


def _incomplete(path: Path, name: str, example: str) -> CurateError:
    return CurateError(f"{path}: the {name} weights are incomplete (e.g. {example} is missing); the "
                       "checkpoint does not match its config (--set model_config=DIR)")


def _build(path: Path, name: str, build: Callable[[], nn.Module], config_dir: Path) -> nn.Module:
    """One component; diffusers builds it on the meta device and fills it from the checkpoint."""
    try:
        module = build()
    except (CurateError, MemoryError):
        raise
    except Exception as exc:  # diffusers and transformers raise types of their own on a bad config
        if "meta tensor" in str(exc):  # a tensor the file lacks stayed on meta, then was moved
            raise _incomplete(path, name, "a tensor") from exc
        raise CurateError(f"{display(path)}: cannot build the {name} from this checkpoint with the configs "
                          f"in {display(config_dir)} ({first_line(exc)}); pass --set model_config=DIR "
                          "matching it") from exc
    # the text encoder's loader leaves a missing tensor on meta without complaint
    missing = [n for n, t in [*module.named_parameters(), *module.named_buffers()] if t.is_meta]
    if missing:
        raise _incomplete(path, name, missing[0])
    return module


def _components(path: Path, state: dict[str, torch.Tensor],
                config_dir: Path) -> tuple[nn.Module, nn.Module, nn.Module]:
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from diffusers.loaders.single_file_utils import create_diffusers_clip_model_from_ldm
    from transformers import CLIPTextModel

    offline: dict[str, Any] = {"config": str(config_dir), "local_files_only": True}
    unet = _build(path, "UNet", lambda: UNet2DConditionModel.from_single_file(state, subfolder="unet",
                                                                              **offline), config_dir)
    vae = _build(path, "VAE", lambda: AutoencoderKL.from_single_file(state, subfolder="vae", **offline),
                 config_dir)
    text_encoder = _build(path, "text encoder", lambda: create_diffusers_clip_model_from_ldm(
        CLIPTextModel, state, subfolder="text_encoder", **offline), config_dir)
    return unet, vae, text_encoder


def _text_encoder_2(path: Path, state: dict[str, torch.Tensor], config_dir: Path) -> nn.Module:
    from diffusers.loaders.single_file_utils import create_diffusers_clip_model_from_ldm
    from transformers import CLIPTextModelWithProjection

    return _build(path, "second text encoder", lambda: create_diffusers_clip_model_from_ldm(
        CLIPTextModelWithProjection, state, subfolder="text_encoder_2", config=str(config_dir),
        local_files_only=True), config_dir)


def load_single_file(path: Path, model_config: str | None = None,
                     allow_pickle: bool = False) -> SingleFileParts:
    """UNet, VAE, text encoder, tokenizer and prediction type of a single-file checkpoint, offline."""
    state = read_checkpoint(path, allow_pickle)
    family = detect_family(state, path)
    config_dir = config_folder(model_config, family)
    tokenizer = load_tokenizer(path, model_config, config_dir, family)  # before the slow part: fail fast
    tokenizer_2 = load_tokenizer(path, model_config, config_dir, family, "tokenizer_2") \
        if family == "sdxl" else None
    unet, vae, text_encoder = _components(path, state, config_dir)
    text_encoder_2 = _text_encoder_2(path, state, config_dir) if family == "sdxl" else None
    return SingleFileParts(unet=unet, vae=vae, text_encoder=text_encoder, tokenizer=tokenizer,
                           prediction_type=prediction_type(config_dir), text_encoder_2=text_encoder_2,
                           tokenizer_2=tokenizer_2)
