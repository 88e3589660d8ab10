"""Loading a vision-language model through transformers: `load_local` and `doctor`.

`AutoProcessor` + `AutoModelForImageTextToText` (the family's own class when the auto class
does not map it), safetensors only, never remote code. On CUDA in bfloat16 (float16 where the
GPU has no bfloat16), else on CPU in float32. torch and transformers are imported here lazily,
so `curate check` and `curate doctor` start without them.
"""

from __future__ import annotations

from importlib import metadata
from pathlib import Path
from typing import Any

from curate.errors import CurateError
from curate.paths import first_line
from curate.tagging.vlm.captioner import LocalCaptioner
from curate.tagging.vlm.files import ModelFolder, read_json, resolve

INSTALL_HINT = "pip install torch transformers (and huggingface_hub to name models by repo id)"
# config.json's model_type -> (family, the model class when AutoModelForImageTextToText lacks it)
FAMILIES: dict[str, tuple[str, str]] = {
    "florence2": ("florence2", "Florence2ForConditionalGeneration"),
    "qwen2_vl": ("qwen2_vl", "Qwen2VLForConditionalGeneration"),
    "qwen2_5_vl": ("qwen2_5_vl", "Qwen2_5_VLForConditionalGeneration"),
    "llava": ("llava", "LlavaForConditionalGeneration"),
    "smolvlm": ("smolvlm", "SmolVLMForConditionalGeneration"),
    "idefics3": ("smolvlm", "Idefics3ForConditionalGeneration"),  # SmolVLM v1 ships as Idefics3
}
DTYPES = ("auto", "bfloat16", "float16", "float32")


def load_local(model: str, *, device: str = "auto", dtype: str = "auto", revision: str | None = None,
               max_new_tokens: int = 256, cache_dir: Path | None = None) -> LocalCaptioner:
    """A captioner for a local model folder or a Hub repo id (downloaded when online)."""
    files, model_type = identify(model, revision, cache_dir)
    family, class_name = FAMILIES[model_type]
    torch, transformers = _imports()
    where, torch_dtype = pick_device(torch, device, dtype)
    processor = _processor(transformers, files.folder, model_type, files.name)
    network = _model(transformers, files.folder, class_name, torch_dtype, files.name)
    try:
        network.to(where)
    except (RuntimeError, ValueError) as exc:  # out of memory, a device that is not there
        raise CurateError(f"{files.name}: cannot move the model to {where} ({first_line(exc, 200)}); "
                          "try --device cpu or a smaller model") from exc
    network.eval()
    return LocalCaptioner(network, processor, name=files.name, revision=files.revision, family=family,
                          device=where, dtype=str(torch_dtype).removeprefix("torch."),
                          max_new_tokens=max_new_tokens)


def identify(model: str, revision: str | None = None,
             cache_dir: Path | None = None) -> tuple[ModelFolder, str]:
    """The model's files and its config.json model_type (a family curate runs), without torch:
    what a driver keys captions on before workers load the weights."""
    files = resolve(model, revision, cache_dir)
    config = read_json(files.folder / "config.json")
    model_type = config.get("model_type")
    if model_type not in FAMILIES:
        remote = " (it needs trust_remote_code, which curate never enables)" if "auto_map" in config else ""
        raise CurateError(f"{files.name}: model type {model_type!r} is not a caption family curate runs"
                          f"{remote}; supported: {', '.join(sorted(FAMILIES))} (e.g. "
                          "florence-community/Florence-2-base, Qwen/Qwen2.5-VL-3B-Instruct)")
    return files, str(model_type)


def _imports() -> tuple[Any, Any]:
    try:
        import torch
        import transformers
    except ImportError as exc:
        raise CurateError(f"local captioning needs torch and transformers ({first_line(exc)}): "
                          f"{INSTALL_HINT}") from None
    return torch, transformers


def pick_device(torch: Any, device: str, dtype: str) -> tuple[str, Any]:
    """(device, torch dtype): "auto" is CUDA in bfloat16 (float16 without bf16 support) when a
    GPU is there, else CPU in float32 (CPUs run bf16 matmuls slowly, and tiny ones in error)."""
    if dtype not in DTYPES:
        raise CurateError(f"dtype {dtype!r} is not one of {', '.join(DTYPES)}")
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    elif device.startswith("cuda") and not torch.cuda.is_available():
        raise CurateError(f"device {device}: this torch ({torch.__version__}) sees no CUDA GPU; "
                          "use --device cpu")
    if dtype != "auto":
        return device, getattr(torch, dtype)
    if device.startswith("cuda"):
        return device, torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return device, torch.float32


def _processor(transformers: Any, folder: Path, model_type: str, name: str) -> Any:
    from transformers.models.auto.processing_auto import PROCESSOR_MAPPING_NAMES

    extra = {}
    processor_class = getattr(transformers, PROCESSOR_MAPPING_NAMES.get(model_type) or "", None)
    if processor_class is not None and "video_processor" in processor_class.get_attributes() \
            and not transformers.utils.is_torchvision_available():
        extra["video_processor"] = video_stand_in(transformers)
    try:
        return transformers.AutoProcessor.from_pretrained(folder, trust_remote_code=False, **extra)
    except Exception as exc:  # transformers raises OSError, ValueError, KeyError, TypeError...
        raise CurateError(f"{name}: cannot load its processor ({first_line(exc, 200)}); the tokenizer or "
                          "processor files are missing or from another model: re-download them") from exc


def video_stand_in(transformers: Any) -> Any:
    """A bare VideoProcessorMixin for a processor's `video_processor` slot, where torchvision is
    missing: transformers 5's Qwen2-VL and SmolVLM processors insist on a video processor, and
    its video processors need torchvision; captions use images only, so a placeholder does."""
    from transformers import processing_utils, video_processing_utils

    # the class exists; transformers exports it only with torchvision, and the processors look
    # their slot's class up by name in a module object of their own
    for module in (transformers, processing_utils.transformers_module):
        if not hasattr(module, "VideoProcessorMixin"):
            module.VideoProcessorMixin = video_processing_utils.VideoProcessorMixin
    return video_processing_utils.VideoProcessorMixin()


def _model(transformers: Any, folder: Path, class_name: str, dtype: Any, name: str) -> Any:
    options = {"dtype": dtype, "use_safetensors": True, "trust_remote_code": False}
    try:
        return transformers.AutoModelForImageTextToText.from_pretrained(folder, **options)
    except ValueError as exc:
        if "Unrecognized configuration class" not in str(exc):
            raise CurateError(f"{name}: cannot load the model ({first_line(exc, 200)})") from exc
    except Exception as exc:
        raise CurateError(f"{name}: cannot load the model ({first_line(exc, 200)}); the weights are damaged "
                          "or from another model: re-download them") from exc
    try:  # the auto class does not map this config (older transformers): the family's own class
        return getattr(transformers, class_name).from_pretrained(folder, **options)
    except Exception as exc:
        raise CurateError(f"{name}: cannot load the model with {class_name} ({first_line(exc, 200)}); "
                          "upgrade transformers or re-download the model") from exc


def doctor() -> list[tuple[str, bool, str]]:
    """(check, ok, detail) lines for `curate doctor`: which local caption backends work here."""
    versions = {name: _version(name) for name in ("torch", "transformers", "torchvision")}
    lines = []
    for name in ("torch", "transformers"):
        lines.append((f"caption: {name}", versions[name] is not None,
                      versions[name] or f"not installed: local captioning needs it ({INSTALL_HINT})"))
    if versions["torch"] is None or versions["transformers"] is None:
        return lines
    try:
        torch, transformers = _imports()
    except CurateError as exc:
        return [*lines, ("caption: import", False, str(exc))]
    lines.append(("caption: families", True, ", ".join(_families(transformers))))
    if torch.cuda.is_available():
        bf16 = torch.cuda.is_bf16_supported()
        lines.append(("caption: device", True, f"CUDA: {torch.cuda.get_device_name(0)}"))
        lines.append(("caption: bfloat16", bf16, "supported: models run in bfloat16" if bf16 else
                      "not supported by this GPU: models run in float16 (some overflow to empty text)"))
    else:
        lines.append(("caption: device", False, f"no CUDA GPU for torch {versions['torch']}: models run on "
                      "CPU in float32 (slow for anything but small models)"))
    detail = versions["torchvision"] or "not installed: image processors use PIL (slower, same captions)"
    lines.append(("caption: torchvision", True, detail))
    return lines


def _families(transformers: Any) -> list[str]:
    """The families whose model class this transformers has."""
    return sorted({family for family, class_name in FAMILIES.values() if hasattr(transformers, class_name)})


def _version(distribution: str) -> str | None:
    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return None
