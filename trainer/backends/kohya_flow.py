"""FLUX.1 and SD3/3.5 through sd-scripts: `flux_train_network.py` and `sd3_train_network.py`.

kohya_model.py tells the family from the base model; this module finds the files those scripts
load besides it and writes their own options. What the loaders accept (sd-scripts' source):

- FLUX.1 (library/flux_utils.py): the transformer as one .safetensors file in BFL layout
  (`double_blocks.*`, flux1-dev.safetensors) or diffusers layout, or a diffusers folder whose
  transformer is exactly `diffusion_pytorch_model-0000N-of-00003.safetensors`
  (analyze_checkpoint_state); `--clip_l`, `--t5xxl` and `--ae` are each ONE .safetensors file
  (load_safetensors; no folder, no shards): CLIP-L in transformers layout (`text_model.*`, as
  ComfyUI's clip_l.safetensors and a diffusers text_encoder/model.safetensors), T5-XXL in
  transformers layout (`encoder.block.*`), and the autoencoder in BFL layout (`encoder.down.*`,
  ae.safetensors; a diffusers vae/ is another layout, loaded with strict=False, so refused here).
- SD3/3.5 (library/sd3_utils.py): one .safetensors file with the MMDiT under
  `model.diffusion_model.` (Stability AI's single files); never a diffusers folder. CLIP-L,
  CLIP-G, T5-XXL and the VAE are read from the checkpoint when it holds them
  (`text_encoders.clip_l.*`, ..., `first_stage_model.*`), else from `--clip_l`, `--clip_g`,
  `--t5xxl` (all three are needed: the trainer calls .eval() on each) and `--vae`.

Each file comes from the TrainConfig key of the same name (`ae` is SD3's --vae), else from the
base model itself (a diffusers folder's single-file text_encoder*/), else from a file beside it:
the model's folder and, in a ComfyUI tree (models/diffusion_models, unet, checkpoints), its
sibling text_encoders/, clip/ and vae/ folders. Files are recognised by their tensor names and
shapes (header only, nothing loaded), so a wrong file is refused with a reason here instead of
half-loading in sd-scripts. Anything still missing is one CurateError naming the key to set and
the file to fetch.

Options: `networks.lora_flux` / `networks.lora_sd3` (iA3 has no LyCORIS mapping onto these
transformers here: refused); FLUX adds what docs/flux_train_network.md recommends for LoRA
(`--guidance_scale 1.0 --timestep_sampling flux_shift --model_prediction_type raw`), SD3 the
guide's `--weighting_scheme uniform`. Settings of the SD noise schedule that these trainers do
not read (their post_process_loss returns the loss unchanged; the noise is sampled without
offsets) are not written: each one set becomes a warning. Every option written is in the
script's own parser (tests/data/sd_scripts_train_network_args.json, flux_options / sd3_options).
"""

from __future__ import annotations

import re
from dataclasses import fields
from pathlib import Path
from typing import Any

from curate.errors import CurateError
from curate.trainer.backends.kohya_model import PREFIX, BaseModel, safetensors_header
from curate.trainer.config import TrainConfig

SCRIPTS = {"flux": "flux_train_network.py", "sd3": "sd3_train_network.py"}
NETWORKS = {"flux": "networks.lora_flux", "sd3": "networks.lora_sd3"}
NAMES = {"flux": "FLUX.1", "sd3": "SD3"}
NEEDS = {"flux": ("clip_l", "t5xxl", "ae"), "sd3": ("clip_l", "clip_g", "t5xxl")}
WHAT = {"clip_l": "the CLIP-L text encoder", "clip_g": "the CLIP-G text encoder",
        "t5xxl": "the T5-XXL text encoder", "ae": "the autoencoder"}
FETCH = {
    "flux": {"clip_l": "clip_l.safetensors from comfyanonymous/flux_text_encoders",
             "t5xxl": "t5xxl_fp16.safetensors from comfyanonymous/flux_text_encoders",
             "ae": "ae.safetensors from black-forest-labs/FLUX.1-dev"},
    "sd3": {key: f"text_encoders/{key}{'_fp16' if key == 't5xxl' else ''}.safetensors from "
            "stabilityai/stable-diffusion-3.5-large" for key in ("clip_l", "clip_g", "t5xxl")}
    | {"ae": "an original-layout 16-channel VAE (--vae), or pass a checkpoint that holds its VAE "
              "(first_stage_model.*: sd3.5_large.safetensors from stabilityai/stable-diffusion-3.5-large)"},
}
FILE_KEYS = ("clip_l", "clip_g", "t5xxl", "ae")
# a diffusers folder's component holding each file
COMPONENTS = {"flux": {"clip_l": "text_encoder", "t5xxl": "text_encoder_2", "ae": "vae"},
              "sd3": {"clip_l": "text_encoder", "clip_g": "text_encoder_2", "t5xxl": "text_encoder_3"}}
# what sd3_utils looks for inside the checkpoint before it reads --clip_l, ...
SD3_INSIDE = {"clip_l": "text_encoders.clip_l.transformer.text_model.embeddings.position_embedding.weight",
              "clip_g": "text_encoders.clip_g.transformer.text_model.embeddings.position_embedding.weight",
              "t5xxl": "text_encoders.t5xxl.transformer.encoder.block.0.layer.0.SelfAttention.k.weight"}
SD3_VAE = "first_stage_model."
COMFY_MODEL_DIRS = ("diffusion_models", "unet", "checkpoints")
COMFY_SIDE_DIRS = ("text_encoders", "clip", "vae")
FLUX_DIFFUSERS = "transformer/diffusion_pytorch_model-00001-of-00003.safetensors"
SHARD = re.compile(r"-\d+-of-\d+\.safetensors$")
CLIP_KEY = "text_model.embeddings.position_embedding.weight"
T5_KEY = "encoder.block.0.layer.0.SelfAttention.k.weight"
AE_KEY = "decoder.conv_in.weight"  # original layout: its input channels are the latent channels
# the trainers' own defaults for what the guides recommend (docs/flux_train_network.md, sd3_...)
FAMILY_OPTIONS = {"flux": ["--guidance_scale", "1.0", "--timestep_sampling", "flux_shift",
                           "--model_prediction_type", "raw"],
                  "sd3": ["--weighting_scheme", "uniform"]}
# TrainConfig keys of the SD noise schedule and text encoder these trainers do not read
UNREAD = ("clip_skip", "min_snr_gamma", "zero_terminal_snr", "scale_v_pred_loss_like_noise_pred",
          "v_pred_like_loss", "debiased_estimation_loss", "noise_offset", "adaptive_noise_scale",
          "noise_offset_random_strength", "multires_noise_iterations", "v_parameterization",
          "max_token_length", "down_lr_weight", "mid_lr_weight", "up_lr_weight", "block_lr_weights")


def file_kind(path: Path, header: dict[str, list[int]]) -> str | None:
    """What a .safetensors file is, from its tensor names: a TrainConfig key, or another kind."""
    if CLIP_KEY in header:
        name = path.name.lower()
        if re.search(r"clip[_-]?g|bigg", name):
            return "clip_g"
        if re.search(r"clip[_-]?l", name):
            return "clip_l"
        return {768: "clip_l", 1280: "clip_g"}.get((header[CLIP_KEY] or [0])[-1], "clip")
    if T5_KEY in header:
        return "t5xxl"
    if AE_KEY in header and "encoder.down.0.block.0.conv1.weight" in header:
        shape = header[AE_KEY]
        return "ae" if len(shape) == 4 and shape[1] == 16 else "sd_vae"
    if any(k.startswith("decoder.up_blocks.") for k in header):
        return "diffusers_vae"
    return None


def _fits(key: str, kind: str | None) -> bool:
    return kind == key or (kind == "clip" and key in ("clip_l", "clip_g"))


def _describe(kind: str | None) -> str:
    return {"clip_l": "a CLIP-L text encoder", "clip_g": "a CLIP-G text encoder",
            "clip": "a CLIP text encoder", "t5xxl": "a T5-XXL text encoder", "ae": "a 16-channel autoencoder",
            "sd_vae": "a 4-channel Stable Diffusion VAE",
            "diffusers_vae": "a diffusers-layout VAE (sd-scripts reads the original layout, e.g. "
                             "ae.safetensors)",
            }.get(kind or "", "none of the files sd-scripts reads (no CLIP, T5 or autoencoder tensors)")


def _header(path: Path) -> dict[str, list[int]]:
    if path.suffix.lower() != ".safetensors":
        raise CurateError(f"{path}: sd-scripts loads these files as .safetensors only; convert it or "
                          "download the .safetensors release")
    return safetensors_header(path)


def given_file(key: str, value: str, family: str) -> Path:
    """The file a TrainConfig key names, checked to be one file of the right kind."""
    path = Path(value).expanduser().absolute()
    fetch = FETCH[family][key]
    if path.is_dir():
        raise CurateError(f"train.{key} = {value}: a folder; sd-scripts loads {WHAT[key]} from one "
                          f".safetensors file (e.g. {fetch})")
    if not path.is_file():
        raise CurateError(f"train.{key} = {value}: no such file; set it to {WHAT[key]} ({fetch})")
    if SHARD.search(path.name):
        raise CurateError(f"train.{key} = {value}: one shard of a split model; sd-scripts loads one file "
                          f"(e.g. {fetch})")
    kind = file_kind(path, _header(path))
    if not _fits(key, kind):
        raise CurateError(f"train.{key} = {value}: this file is {_describe(kind)}, not {WHAT[key]} "
                          f"(e.g. {fetch})")
    return path


def component_file(folder: Path, key: str) -> tuple[Path | None, str]:
    """A diffusers component's one weights file, or None and why it cannot be passed."""
    if not folder.is_dir():
        return None, ""
    files = sorted(p for p in folder.glob("*.safetensors") if p.is_file())
    whole = [p for p in files if not SHARD.search(p.name)]
    for path in whole:
        if _fits(key, file_kind(path, safetensors_header(path))):
            return path, ""
    if files and not whole:
        return None, f"{folder.name}/ is split into shards, and sd-scripts loads one file"
    if files:
        return None, f"{folder.name}/ holds {_describe(file_kind(files[0], safetensors_header(files[0])))}"
    return None, ""


def _kind_or_none(path: Path) -> str | None:
    """A neighbour's kind; an unreadable file beside the model is not one of its files."""
    try:
        return file_kind(path, safetensors_header(path))
    except CurateError:
        return None


def side_files(model: Path) -> list[Path]:
    """.safetensors files beside a single-file model, and in a ComfyUI tree's sibling folders."""
    folders = [model.parent]
    if model.parent.name in COMFY_MODEL_DIRS:
        folders += [model.parent.parent / name for name in COMFY_SIDE_DIRS]
    found = []
    for folder in folders:
        if folder.is_dir():
            found += sorted(p for p in folder.glob("*.safetensors")
                            if p.is_file() and p != model and not SHARD.search(p.name))
    return found


def model_files(base: BaseModel, config: TrainConfig, notes: list[str],
                warnings: list[str]) -> dict[str, Path]:
    """TrainConfig key -> the file passed for it (see the module docstring); missing: CurateError."""
    family = str(base.family)
    header = check_model(base, notes)
    inside = {key for key, name in SD3_INSIDE.items() if name in header} if family == "sd3" else set()
    needs = [k for k in NEEDS[family] if k not in inside]
    if family == "sd3" and not any(k.startswith(SD3_VAE) for k in header):
        needs.append("ae")  # the checkpoint has no VAE: --vae is needed
    chosen: dict[str, Path] = {}
    for key in FILE_KEYS:
        value = getattr(config, key)
        if value is not None:
            if key not in NEEDS[family] and not (family == "sd3" and key == "ae"):
                warnings.append(f"train.{key} = {value}: {SCRIPTS[family]} has no use for it; not passed")
                continue
            chosen[key] = given_file(key, value, family)
            if key in inside and key != "clip_l":  # sd3_utils reads clip_g and t5xxl from the file first
                warnings.append(f"train.{key}: the checkpoint holds its own {WHAT[key]}, which "
                                f"{SCRIPTS[family]} uses instead of {value}")
                del chosen[key]
    why: dict[str, str] = {}
    candidates = side_files(base.path) if base.path.is_file() else []
    kinds = {path: _kind_or_none(path) for path in candidates}
    for key in needs:
        if key in chosen:
            continue
        if base.path.is_dir():
            found, why[key] = component_file(base.path / COMPONENTS[family][key], key)
            if found is not None:
                chosen[key] = found
            continue
        fits = [p for p in candidates if _fits(key, kinds[p])]
        if fits:
            chosen[key] = fits[0]
            if len(fits) > 1:
                names = ", ".join(p.name for p in fits)
                notes.append(f"{key}: several files beside the model fit ({names}); using {fits[0].name} "
                             f"(set {key} to choose)")
    missing = [k for k in needs if k not in chosen]
    if missing:
        raise CurateError(missing_text(base, family, missing, why))
    return chosen


def missing_text(base: BaseModel, family: str, missing: list[str], why: dict[str, str]) -> str:
    parts = []
    for key in missing:
        reason = f" ({why[key]})" if why.get(key) else ""
        parts.append(f"set {key} = PATH (--set {key}=PATH): {WHAT[key]}, e.g. {FETCH[family][key]}{reason}")
    return f"{base.path}: {SCRIPTS[family]} needs files the base model does not bring: {'; '.join(parts)}"


def check_model(base: BaseModel, notes: list[str]) -> dict[str, list[int]]:
    """Refuse a base model the script cannot load; its header (empty for a folder)."""
    family, path = base.family, base.path
    script = SCRIPTS[str(family)]
    if path.is_dir():
        if family == "sd3":
            raise CurateError(f"{path}: {script} loads one .safetensors file, not a diffusers folder; pass "
                              f"--model sd3.5_large.safetensors (or medium) from stabilityai's repo, whose "
                              "text_encoders/ hold clip_l, clip_g and t5xxl")
        if not (path / FLUX_DIFFUSERS).is_file():
            raise CurateError(f"{path}: {script} reads a diffusers folder only as {FLUX_DIFFUSERS} (and its "
                              "2 other shards); pass --model flux1-dev.safetensors instead")
        notes.append(f"{path}: sd-scripts' guide names diffusers folders unsupported, but its loader "
                     "(flux_utils.analyze_checkpoint_state) reads the three transformer shards and "
                     "converts them")
        return {}
    header = safetensors_header(path)
    if family == "sd3" and not any(k.startswith(PREFIX + "joint_blocks.") for k in header):
        raise CurateError(f"{path}: an SD3 MMDiT without the {PREFIX} prefix, which {script} needs "
                          "(sd3_utils.load_mmdit); pass Stability AI's single file (sd3.5_large.safetensors)")
    return header


def flow_only_settings(config: TrainConfig, script: str) -> list[str]:
    """A warning for each FLUX.1/SD3 file key set for another family's script."""
    return [f"train.{key} = {getattr(config, key)}: used for FLUX.1/SD3 only; {script} does not read it"
            for key in FILE_KEYS if getattr(config, key) is not None]


def unread_settings(config: TrainConfig, family: str) -> list[str]:
    """A warning for each set TrainConfig key that the family's script does not read."""
    defaults = {f.name: f.default for f in fields(config)}
    warnings = []
    for key in UNREAD:
        value = getattr(config, key)
        if value != defaults[key] and value is not None:
            warnings.append(f"train.{key} = {value!r}: {SCRIPTS[family]} does not use it ({NAMES[family]} "
                            "trains with flow matching and its own LoRA module); not passed")
    return warnings


def flow_args(base: BaseModel, config: TrainConfig, files: dict[str, Path], notes: list[str],
              warnings: list[str]) -> list[str]:
    """The model, its files, the network and the family's own options."""
    family = str(base.family)
    if config.network != "lora":
        raise CurateError(f"network {config.network!r}: --backend kohya trains {NAMES[family]} with "
                          f"{NETWORKS[family]} (network = \"lora\"); use the aitoolkit backend for others")
    args = ["--pretrained_model_name_or_path", str(base.path)]
    for key in FILE_KEYS:
        if key in files:
            option = "--vae" if family == "sd3" and key == "ae" else f"--{key}"
            args += [option, str(files[key])]
    args += ["--network_module", NETWORKS[family], "--network_dim", str(config.network_dim),
             "--network_alpha", _number(float(config.network_alpha))]
    if config.network_dropout:
        args += ["--network_dropout", _number(config.network_dropout)]
    if config.conv_dim:  # both modules read conv_dim / conv_alpha from network_args; unset alpha: 1.0
        alpha = 1.0 if config.conv_alpha is None else config.conv_alpha
        args += ["--network_args", f"conv_dim={config.conv_dim}", f"conv_alpha={_number(alpha)}"]
    if config.scale_weight_norms:
        args += ["--scale_weight_norms", _number(config.scale_weight_norms)]
    if not config.train_text_encoder:
        args.append("--network_train_unet_only")
    elif not config.train_unet:
        args.append("--network_train_text_encoder_only")
    else:
        notes.append(f"{NAMES[family]}: the LoRA trains the CLIP text encoder(s) too, never T5-XXL; "
                     "sd-scripts' guide trains the transformer only (train_text_encoder = false)")
    if config.cache_text_encoder_outputs:
        if config.train_text_encoder:
            raise CurateError("cache_text_encoder_outputs needs frozen text encoders: set "
                              "train_text_encoder = false, or turn the cache off")
        args.append("--cache_text_encoder_outputs")
    if config.mixed_precision == "no":
        notes.append(f"mixed_precision = \"no\": {NAMES[family]} then trains in float32 (FLUX.1 alone is 12B "
                     "parameters); sd-scripts' guide uses bf16 or fp16")
    warnings += unread_settings(config, family)
    return args + FAMILY_OPTIONS[family]


def _number(value: Any) -> str:
    value = float(value)
    return str(int(value)) if value.is_integer() and abs(value) < 1e15 else repr(value)
