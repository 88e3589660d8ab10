"""Files beside the sd-scripts command that make it train what the builtin trainer trains, offline.

- The iA3 targets. LyCORIS' kohya wrapper adapts what its preset names: with none, its `full`
  preset (133 modules on the tiny SD model, 41 for the builtin iA3); its built-in `ia3`
  preset names `to_k`, ... as regular expressions matched from the start of the module path, so
  in lycoris-lora 4.1.3 it matches nothing; and it ignores the `train_on_input` network arg.
  So the plan writes OUT/lycoris-ia3-preset.toml (a LyCORIS preset file: fnmatch patterns of the
  builtin's targets, and per-name train_on_input as the builtin sets it) and passes
  `preset=PATH` in --network_args. tests/test_kohya_options.py builds the network with
  LyCORIS' own create_network from that file and compares the module set with the builtin's.
- The tokenizers. sd-scripts loads its CLIP tokenizers from the Hub by id unless
  --tokenizer_cache_dir names a folder holding `ID.replace("/", "_")` (library/strategy_base.py
  `_load_tokenizer`); the plan fills OUT/tokenizer-cache from the base model's own tokenizer
  folders, so the command runs on a machine without Hub access (FLUX.1 and SD3 add T5-XXL's,
  `google/t5-v1_1-xxl`, from a diffusers folder's tokenizer_2/ or tokenizer_3/).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from curate.config import toml_value

if TYPE_CHECKING:
    from curate.trainer.backends.kohya_model import BaseModel
    from curate.trainer.config import TrainConfig

PRESET_NAME = "lycoris-ia3-preset.toml"
CACHE_NAME = "tokenizer-cache"
# the builtin iA3's targets (curate.trainer.networks.ia3), as fnmatch patterns of module paths
UNET_TARGETS = ("*.to_k", "*.to_v", "*.ff.net.2")
TE_TARGETS = ("*.self_attn.k_proj", "*.self_attn.v_proj", "*.mlp.fc2")
FEED_FORWARD = ("*.ff.net.2", "*.mlp.fc2")
# sd-scripts' tokenizer ids (library/strategy_sd.py, strategy_sdxl.py) -> the model's folder
SD1_IDS = {"openai/clip-vit-large-patch14": "tokenizer"}
SD2_IDS = {"stabilityai/stable-diffusion-2": "tokenizer"}
SDXL_IDS = {
    "openai/clip-vit-large-patch14": "tokenizer", "laion/CLIP-ViT-bigG-14-laion2B-39B-b160k": "tokenizer_2",
}
# strategy_flux.py / strategy_sd3.py: CLIP-L, (CLIP-G,) T5-XXL from a diffusers folder's tokenizer*/
T5_ID = "google/t5-v1_1-xxl"
FLUX_IDS = {"openai/clip-vit-large-patch14": "tokenizer", T5_ID: "tokenizer_2"}
SD3_IDS = {**SDXL_IDS, T5_ID: "tokenizer_3"}
MAX_FILE = 64 * 1024 * 1024  # a tokenizer file is a few MB; anything larger is not one


def ia3_preset(config: TrainConfig) -> str:
    """The LyCORIS preset TOML for the builtin iA3's modules and on_input choices."""
    feed_forward = config.ia3_train_on_input
    lines = [
        "# Written by `curate train --backend kohya`: the modules curate's builtin iA3 adapts,",
        "# for LyCORIS (network_args preset=THIS FILE). Feed-forward layers scale their input "
        "when train_on_input.", "enable_conv = false", "use_fnmatch = true", "unet_target_module = []",
        f"unet_target_name = {toml_value(list(UNET_TARGETS))}",
        "text_encoder_target_module = []",
        f"text_encoder_target_name = {toml_value(list(TE_TARGETS))}",
        "",
    ]
    for name in (*UNET_TARGETS, *TE_TARGETS):
        lines += [
            f"[name_algo_map.{toml_value(name)}]",
            f"train_on_input = {toml_value(feed_forward and name in FEED_FORWARD)}",
            "",
        ]
    return "\n".join(lines)


def tokenizer_folders(base: BaseModel, config: TrainConfig) -> tuple[dict[str, Path], list[str]]:
    """sd-scripts' tokenizer id -> the model's tokenizer folder holding it, and a warning for
    each one the model cannot supply (the command then needs the Hub for it)."""
    ids = {"sdxl": SDXL_IDS, "sd2": SD2_IDS, "flux": FLUX_IDS, "sd3": SD3_IDS}.get(str(base.family), SD1_IDS)
    root = (
        base.path
        if base.path.is_dir()
        else Path(config.model_config).expanduser()
        if config.model_config
        else None
    )
    found: dict[str, Path] = {}
    missing = []
    for model_id, sub in ids.items():
        folder = root / sub if root is not None else None
        if folder is not None and folder.is_dir() and any(folder.iterdir()):
            found[model_id] = folder
        else:
            missing.append(model_id)
    warnings = []
    if missing:
        warnings.append(
            f"no tokenizer folder for {', '.join(missing)} in the base model (a single file: set "
            "model_config to its diffusers folder): sd-scripts will download it from the Hub"
        )
    return found, warnings


def tokenizer_files(folders: dict[str, Path], cache: Path) -> dict[Path, bytes]:
    """The files to write under `cache`: each tokenizer folder's files at ID.replace("/", "_")."""
    files: dict[Path, bytes] = {}
    for model_id, folder in folders.items():
        for path in sorted(folder.iterdir()):
            if path.is_file() and path.stat().st_size <= MAX_FILE:
                files[cache / model_id.replace("/", "_") / path.name] = path.read_bytes()
    return files
