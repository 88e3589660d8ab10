"""The network file: safetensors with sd-scripts' training metadata (REFERENCE §5).

- `ss_*` fields as sd-scripts' train_network.py writes them (all values strings, JSON for the
  nested ones: ss_tag_frequency, ss_dataset_dirs, ss_bucket_info, ss_network_args), which
  A1111 shows in its UI and other tools read back;
- `sshs_model_hash` / `sshs_legacy_hash`, the hashes sd-webui-additional-networks indexes by,
  computed as sd-scripts precomputes them: the file is serialised with the `ss_*` fields only;
  the model hash is sha256 of everything after the header (the tensor bytes, which more
  metadata does not change), the legacy hash the first 8 hex digits of sha256 of the 64 KiB at
  offset 1 MiB (of the empty string for files smaller than that, as sd-scripts does too);
- `modelspec.*` (Stability AI's ModelSpec 1.0.1) as sd-scripts fills it for an SD 1.x/2.x/XL LoRA.
The file goes to disk through a temp file and a rename: a killed run never leaves half a file.
"""

from __future__ import annotations

import datetime
import hashlib
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, safe_open
from safetensors.torch import save as save_bytes

from curate import __version__
from curate.atomic import atomic_write_bytes
from curate.errors import CurateError

SAVE_DTYPES: dict[str, torch.dtype] = {"fp16": torch.float16, "bf16": torch.bfloat16, "float": torch.float32}
LEGACY_OFFSET, LEGACY_SIZE = 0x100000, 0x10000
SDXL_IMPLEMENTATION = "https://github.com/Stability-AI/generative-models"


def save_dtype(name: str) -> torch.dtype:
    try:
        return SAVE_DTYPES[name]
    except KeyError:
        raise CurateError(f"save precision {name!r}: choose one of {', '.join(SAVE_DTYPES)}") from None


def _after_header(data: bytes) -> bytes:
    header_size = int.from_bytes(data[:8], "little")
    return data[8 + header_size:]


def addnet_hashes(tensors: Mapping[str, torch.Tensor], metadata: Mapping[str, str]) -> tuple[str, str]:
    """(sshs_model_hash, sshs_legacy_hash) for these tensors, as sd-scripts precomputes them."""
    training = {k: v for k, v in metadata.items() if k.startswith("ss_")}
    data = save_bytes(dict(tensors), training or None)
    model_hash = hashlib.sha256(_after_header(data)).hexdigest()
    legacy_hash = hashlib.sha256(data[LEGACY_OFFSET:LEGACY_OFFSET + LEGACY_SIZE]).hexdigest()[:8]
    return model_hash, legacy_hash


def tensor_hash(path: Path) -> str:
    """sha256 of a safetensors file's tensor bytes: what sshs_model_hash must equal."""
    return hashlib.sha256(_after_header(path.read_bytes())).hexdigest()


def modelspec(title: str, resolution: tuple[int, int], *, clip_skip: int | None = None,
              timestamp: float, v2: bool = False, v_parameterization: bool = False,
              sdxl: bool = False) -> dict[str, str]:
    """ModelSpec fields sd-scripts writes for an SD 1.x / 2.x / SDXL LoRA-type network
    (sai_model_spec.py: v2 is stable-diffusion-v2-512, or -768-v with v-prediction; an SDXL
    LoRA names Stability AI's generative-models as its implementation)."""
    arch = ("stable-diffusion-v2-768-v" if v_parameterization else "stable-diffusion-v2-512") if v2 \
        else "stable-diffusion-v1"
    if sdxl:
        arch = "stable-diffusion-xl-v1-base"
    spec = {
        "modelspec.sai_model_spec": "1.0.1",
        "modelspec.architecture": f"{arch}/lora",
        "modelspec.implementation": SDXL_IMPLEMENTATION if sdxl else "diffusers",
        "modelspec.implementation_version": f"curate/{__version__}",
        "modelspec.title": title,
        "modelspec.resolution": f"{resolution[0]}x{resolution[1]}",
        "modelspec.date": datetime.datetime.fromtimestamp(int(timestamp)).isoformat(),
        "modelspec.prediction_type": "v" if v_parameterization else "epsilon",
    }
    if clip_skip is not None:
        spec["modelspec.encoder_layer"] = str(clip_skip)
    return spec


def as_metadata(values: Mapping[str, Any]) -> dict[str, str]:
    """Metadata values as safetensors stores them: strings, dicts and lists as JSON, None left out."""
    out = {}
    for key, value in values.items():
        if value is None:
            continue
        nested = isinstance(value, dict | list | tuple)
        out[key] = json.dumps(value, ensure_ascii=False) if nested else str(value)
    return out


def save_network(path: Path, tensors: Mapping[str, torch.Tensor],
                 metadata: Mapping[str, str]) -> dict[str, str]:
    """Write a network file atomically with the addnet hashes added; returns the metadata written."""
    metadata = dict(metadata)
    metadata["sshs_model_hash"], metadata["sshs_legacy_hash"] = addnet_hashes(tensors, metadata)
    atomic_write_bytes(path, save_bytes(dict(tensors), metadata))
    return metadata


def load_network(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """(tensors, metadata) of a safetensors network file."""
    try:
        with safe_open(str(path), framework="pt") as fh:
            metadata = fh.metadata() or {}
        return load_file(str(path)), metadata
    except (OSError, SafetensorError) as exc:
        raise CurateError(f"{path}: not a readable safetensors file ({exc})") from exc
