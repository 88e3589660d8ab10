"""The base model as sd-scripts needs to be told about it: which script, --v2, --v_parameterization.

FLUX.1 and SD3/3.5 (flux_train_network.py, sd3_train_network.py) are told apart here too and
then handled by kohya_flow.py: a diffusers folder by model_index.json's `_class_name`
(FluxPipeline, StableDiffusion3Pipeline), a single .safetensors file by its tensor names as
sd-scripts reads them (flux_utils.analyze_checkpoint_state: BFL `double_blocks.*` /
`single_blocks.*`, or diffusers' `transformer_blocks.*` with `single_transformer_blocks.*`, with
or without the `model.diffusion_model.` prefix; sd3_utils.load_mmdit: `joint_blocks.*` under
`model.diffusion_model.`).

sd-scripts cannot tell the model family by itself: SD 1.x/2.x train with `train_network.py`
(`--v2` for SD 2.x's OpenCLIP text encoder), SDXL with `sdxl_train_network.py`, and a v-model
needs `--v_parameterization`. This module reads what curate's builtin trainer reads, without
loading any weights:

- a diffusers folder: SDXL when model_index.json's `_class_name` is an SDXL pipeline, when it
  has a `text_encoder_2/` folder (as curate.trainer.model decides), or when the UNet's
  cross_attention_dim is SDXL's 2048; SD 2.x when that width is 1024. The prediction type is
  the scheduler config's.
- a single `.safetensors` file: only its header (the tensor names) is read, and
  curate.trainer.single_file.detect_family names the family from the text encoders' keys, as the
  builtin trainer does when it loads the file. A pickle (`.ckpt`) cannot be listed without
  unpickling it: with allow_pickle its tensors are read (torch.load weights_only), without it
  the family stays unknown and the plan warns that train_network.py (SD 1.x/2.x) is assumed.
  A single file never says whether it predicts v: the scheduler config of `model_config` (a
  folder) says it, as for the builtin trainer, else the plan warns.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, cast

from curate.errors import CurateError

if TYPE_CHECKING:
    import torch

    from curate.trainer.config import TrainConfig

Family = Literal["sd1", "sd2", "sdxl", "flux", "sd3"]
FLOW_FAMILIES = ("flux", "sd3")  # flow-matching DiTs: kohya_flow.py
FLOW_PIPELINES: dict[str, Family] = {"FluxPipeline": "flux", "StableDiffusion3Pipeline": "sd3"}
PREFIX = "model.diffusion_model."  # the original (ComfyUI / SAI) checkpoints' prefix
SDXL_PIPELINES = ("StableDiffusionXLPipeline", "StableDiffusionXLImg2ImgPipeline",
                  "StableDiffusionXLInpaintPipeline")
MAX_HEADER = 100_000_000  # safetensors' own limit on the JSON header


@dataclass
class BaseModel:
    """What the command needs to know: family (None: a pickle left unread) and v-prediction."""

    path: Path
    family: Family | None
    v_prediction: bool | None  # None: the file does not say

    @property
    def sdxl(self) -> bool:
        return self.family == "sdxl"

    @property
    def flow(self) -> bool:
        return self.family in FLOW_FAMILIES


def _json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def folder_family(model: Path) -> Family:
    index = _json(model / "model_index.json")
    if index.get("_class_name") in FLOW_PIPELINES:
        return FLOW_PIPELINES[index["_class_name"]]
    width = _json(model / "unet" / "config.json").get("cross_attention_dim")
    if index.get("_class_name") in SDXL_PIPELINES or (model / "text_encoder_2").is_dir() or width == 2048:
        if (index.get("text_encoder") or [None])[0] is None and "text_encoder" in index:
            raise CurateError(f"{model}: an SDXL model without its first text encoder (an SDXL refiner?); "
                              "only SDXL base models train")
        return "sdxl"
    return "sd2" if width == 1024 else "sd1"


def safetensors_keys(path: Path) -> list[str]:
    """The tensor names of a .safetensors file, from its JSON header alone (no weights read)."""
    return list(safetensors_header(path))


def safetensors_header(path: Path) -> dict[str, list[int]]:
    """Tensor name -> shape, from the file's JSON header alone (no weights read)."""
    try:
        with path.open("rb") as f:
            (size,) = struct.unpack("<Q", f.read(8))
            if size > MAX_HEADER:
                raise ValueError(f"header of {size} bytes")
            header = json.loads(f.read(size))
    except (OSError, ValueError, struct.error) as exc:
        raise CurateError(f"{path}: not a readable .safetensors file ({exc}); pass a diffusers folder "
                          "or a Stable Diffusion checkpoint") from exc
    if not isinstance(header, dict):
        raise CurateError(f"{path}: not a readable .safetensors file (its header is not a table)")
    return {k: list(v.get("shape", [])) if isinstance(v, dict) else [] for k, v in header.items()
            if k != "__metadata__"}


def flow_family(keys: list[str] | dict[str, list[int]]) -> Family | None:
    """FLUX.1 or SD3 from a single file's tensor names, as sd-scripts' loaders read them."""
    names = {k.removeprefix(PREFIX) for k in keys}
    if any(k.startswith("double_blocks.") for k in names) and any(
            k.startswith("single_blocks.") for k in names):
        return "flux"
    if "transformer_blocks.0.attn.add_k_proj.bias" in names and any(
            k.startswith("single_transformer_blocks.") for k in names):
        return "flux"  # a diffusers-layout FLUX transformer in one file: sd-scripts converts it
    if any(k.startswith("joint_blocks.") for k in names):
        return "sd3"
    return None


def file_family(model: Path, allow_pickle: bool) -> Family | None:
    from curate.trainer.single_file import detect_family, read_checkpoint

    if model.suffix.lower() == ".safetensors":
        keys = safetensors_keys(model)
        flow = flow_family(keys)
        if flow is not None:
            return flow
        # detect_family only asks which names are present, so the values can stay unread
        names = cast("dict[str, torch.Tensor]", dict.fromkeys(keys))
        return detect_family(names, model)
    if not allow_pickle:
        return None
    return detect_family(read_checkpoint(model, allow_pickle=True), model)


def _flow_or_none(path: Path) -> Family | None:
    try:
        return flow_family(safetensors_header(path))
    except CurateError:  # an unreadable file in the folder is not the model
        return None


def folder_transformer(folder: Path) -> Path | None:
    """The one FLUX.1 / SD3 single file in a folder of single files (ComfyUI's models/ or one of its
    diffusion_models/, unet/, checkpoints/): a folder with neither model_index.json nor unet/."""
    if (folder / "model_index.json").is_file() or (folder / "unet").is_dir():
        return None
    places = [folder, *(folder / name for name in ("diffusion_models", "unet", "checkpoints"))]
    files = sorted(p for place in places if place.is_dir()
                   for p in place.glob("*.safetensors") if p.is_file())
    found = [p for p in files if _flow_or_none(p) is not None]
    if len(found) > 1:
        raise CurateError(f"{folder}: several FLUX.1/SD3 models ({', '.join(p.name for p in found)}); pass "
                          "the one to train as --model")
    return found[0] if found else None


def base_model(model: Path, config: TrainConfig) -> BaseModel:
    if model.is_dir() and (single := folder_transformer(model)) is not None:
        return BaseModel(single, flow_family(safetensors_header(single)), None)
    if model.is_dir():
        prediction = _json(model / "scheduler" / "scheduler_config.json").get("prediction_type")
        return BaseModel(model, folder_family(model), prediction == "v_prediction")
    # model_config, when a folder, names the file's prediction type for the builtin trainer too
    folder = Path(config.model_config).expanduser() if config.model_config else None
    scheduler = folder / "scheduler" / "scheduler_config.json" if folder and folder.is_dir() else None
    prediction = _json(scheduler).get("prediction_type") if scheduler and scheduler.is_file() else None
    return BaseModel(model, file_family(model, config.allow_pickle),
                     None if prediction is None else prediction == "v_prediction")


def model_args(base: BaseModel, config: TrainConfig, warnings: list[str]) -> list[str]:
    """The base model, and --v2 / --v_parameterization that sd-scripts cannot tell by itself.

    For SDXL, --v2 never (sdxl_train_network.py asserts it off) and --v_parameterization only for
    a v-predicting SDXL model, which sd-scripts trains with it as the builtin trainer does.
    """
    args = ["--pretrained_model_name_or_path", str(base.path)]
    if base.family == "sd2":
        args.append("--v2")  # SD 2.x: OpenCLIP text encoder
    v_pred = config.v_parameterization if config.v_parameterization is not None else base.v_prediction
    if base.family is None:
        warnings.append(f"{base.path}: a pickle checkpoint is not read without allow_pickle, so its family "
                        "is unknown: train_network.py (SD 1.x/2.x) is assumed; for SDXL set allow_pickle = "
                        "true (curate reads its tensors only) or convert it to .safetensors, and pass --v2 "
                        "yourself for SD 2.x")
    if v_pred is None:
        v_pred = False
        warnings.append(f"{base.path}: a single-file model does not say whether it predicts v; sd-scripts "
                        "assumes epsilon (set v_parameterization = true for a v-model)")
    return args + (["--v_parameterization"] if v_pred else [])
