"""The base model as sd-scripts needs to be told about it: which script, --v2, --v_parameterization.

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

Family = Literal["sd1", "sd2", "sdxl"]
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


def _json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def folder_family(model: Path) -> Family:
    index = _json(model / "model_index.json")
    width = _json(model / "unet" / "config.json").get("cross_attention_dim")
    if index.get("_class_name") in SDXL_PIPELINES or (model / "text_encoder_2").is_dir() or width == 2048:
        if (index.get("text_encoder") or [None])[0] is None and "text_encoder" in index:
            raise CurateError(f"{model}: an SDXL model without its first text encoder (an SDXL refiner?); "
                              "only SDXL base models train")
        return "sdxl"
    return "sd2" if width == 1024 else "sd1"


def safetensors_keys(path: Path) -> list[str]:
    """The tensor names of a .safetensors file, from its JSON header alone (no weights read)."""
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
    return [k for k in header if k != "__metadata__"]


def file_family(model: Path, allow_pickle: bool) -> Family | None:
    from curate.trainer.single_file import detect_family, read_checkpoint

    if model.suffix.lower() == ".safetensors":
        # detect_family only asks which names are present, so the values can stay unread
        names = cast("dict[str, torch.Tensor]", dict.fromkeys(safetensors_keys(model)))
        return detect_family(names, model)
    if not allow_pickle:
        return None
    return detect_family(read_checkpoint(model, allow_pickle=True), model)


def base_model(model: Path, config: TrainConfig) -> BaseModel:
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
