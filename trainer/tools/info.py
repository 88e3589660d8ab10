"""What a network file is, read from its safetensors header: `lora_info(path) -> LoraInfo`.

The kind comes from the key suffixes, which every trainer writes the same way (kohya and
LyCORIS, REFERENCE §5/§6): `.lora_down/.lora_up` LoRA (LoCon when a down is a conv with a
kernel above 1x1), `.dora_scale` DoRA, `.hada_*` LoHa, `.lokr_*` LoKr, `.weight` + `.on_input`
iA3, `.diff` a full difference, PEFT's `.lora_A/.lora_B` LoRA too. Ranks and conv kernels are
read from tensor shapes, which the header holds, so a 2 GB file costs a few KiB of reading;
only the 0-d `.alpha` tensors are read, being the one number a shape cannot give. Everything
else (base model, training settings, tag frequencies) is the `ss_*` / `modelspec.*` metadata
sd-scripts writes, and all of it is optional: files from other tools often carry none, and
then the report says so rather than failing. Pickles (.ckpt/.pt) are never opened: loading
one runs code from the file. Every string taken from the file (metadata values, folder names,
tags) passes curate.paths.printable: a header can hold terminal escapes.
"""

from __future__ import annotations

import datetime
import json
import re
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from safetensors import SafetensorError, safe_open

from curate.errors import CurateError
from curate.paths import display, printable

PICKLE_SUFFIXES = (".ckpt", ".pt", ".pth", ".bin")
# key suffix -> the family it marks; longest first, so `.lora_down.weight` wins over `.weight`
SUFFIXES: tuple[tuple[str, str], ...] = (
    (".lora_down.weight", "lora"), (".lora_up.weight", "lora"), (".lora_mid.weight", "lora"),
    (".lora_A.weight", "lora"), (".lora_B.weight", "lora"), (".dora_scale", "dora"),
    (".hada_w1_a", "loha"), (".hada_w1_b", "loha"), (".hada_w2_a", "loha"), (".hada_w2_b", "loha"),
    (".hada_t1", "loha"), (".hada_t2", "loha"),
    (".lokr_w1_a", "lokr"), (".lokr_w1_b", "lokr"), (".lokr_w2_a", "lokr"), (".lokr_w2_b", "lokr"),
    (".lokr_w1", "lokr"), (".lokr_w2", "lokr"), (".lokr_t2", "lokr"),
    (".on_input", "ia3"), (".diff_b", "full"), (".diff", "full"), (".alpha", ""), (".weight", ""),
)
KIND_NAMES = {"dora": "DoRA", "loha": "LoHa", "lokr": "LoKr", "ia3": "iA3", "full": "Full"}
# the suffix whose first dimension is the module's rank, in order of preference
RANK_KEYS = (".lora_down.weight", ".lora_A.weight", ".hada_w1_b", ".lokr_w2_b", ".lokr_w1_b")
BASE_FIELDS = ("ss_base_model_version", "ss_sd_model_name", "ss_sd_model_hash", "ss_new_sd_model_hash",
               "ss_v2", "ss_v_parameterization", "modelspec.architecture", "modelspec.title",
               "modelspec.prediction_type", "modelspec.resolution", "sshs_model_hash", "sshs_legacy_hash")
TRAINING_FIELDS = (
    "ss_network_module", "ss_network_dim", "ss_network_alpha", "ss_network_args", "ss_network_dropout",
    "ss_optimizer", "ss_learning_rate", "ss_unet_lr", "ss_text_encoder_lr", "ss_lr_scheduler",
    "ss_lr_warmup_steps", "ss_steps", "ss_max_train_steps", "ss_epoch", "ss_num_epochs",
    "ss_num_batches_per_epoch", "ss_batch_size_per_device", "ss_total_batch_size",
    "ss_gradient_accumulation_steps",
    "ss_num_train_images", "ss_num_reg_images", "ss_resolution", "ss_clip_skip", "ss_max_token_length",
    "ss_mixed_precision", "ss_seed", "ss_min_snr_gamma", "ss_noise_offset", "ss_adaptive_noise_scale",
    "ss_multires_noise_iterations", "ss_max_grad_norm", "ss_scale_weight_norms",
    "ss_caption_dropout_rate", "ss_caption_dropout_every_n_epochs", "ss_caption_tag_dropout_rate",
    "ss_output_name", "ss_training_comment", "ss_training_started_at", "ss_training_finished_at",
)
EMPTY_VALUES = ("", "None", "null")
# the 3x3 convolutions of SD UNets by kohya name (diffusers and sd-scripts' SDXL layouts): LyCORIS
# stores a LoHa's or a decomposed LoKr's conv factors flattened, so their shapes cannot tell
CONV_NAME = re.compile(r"lora_unet_(.*_(conv[12]?|in_layers_2|out_layers_3|op)|conv_in|conv_out|"
                       r"input_blocks_0_0|out_2)$")


@dataclass
class RankSummary:
    """Ranks of a set of modules: the most common one and the range."""

    mode: int | None = None
    min: int | None = None
    max: int | None = None
    count: int = 0

    @classmethod
    def of(cls, ranks: list[int]) -> RankSummary:
        if not ranks:
            return cls()
        counts = Counter(ranks)
        mode = max(counts, key=lambda r: (counts[r], r))
        return cls(mode, min(ranks), max(ranks), len(ranks))

    def text(self) -> str:
        if self.mode is None:
            return "-"
        spread = "" if self.min == self.max else f" ({self.min}-{self.max})"
        return f"{self.mode}{spread}"


@dataclass
class LoraInfo:
    path: Path
    size: int
    kind: str
    modules: dict[str, int]  # per part: unet, te, te1, te2, other
    dims: RankSummary  # Linear and 1x1 conv modules
    conv_dims: RankSummary  # conv modules with a larger kernel
    alphas: list[tuple[float, int]]  # (alpha, modules), most common first
    parameters: int
    dtypes: list[str]
    has_metadata: bool
    base_model: dict[str, str] = field(default_factory=dict)
    training: dict[str, str] = field(default_factory=dict)
    folders: dict[str, Any] = field(default_factory=dict)  # ss_dataset_dirs
    tags: list[tuple[str, int]] = field(default_factory=list)  # merged over folders, most frequent first
    other_keys: int = 0  # tensors that belong to no known family
    warnings: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["path"] = display(self.path)
        data["tags"] = [{"tag": t, "count": n} for t, n in self.tags]
        data["alphas"] = [{"alpha": a, "modules": n} for a, n in self.alphas]
        return data


def split_key(key: str) -> tuple[str, str]:
    """(module name, suffix) of a tensor key, by the families this module's docstring lists."""
    for suffix, _family in SUFFIXES:
        if key.endswith(suffix):
            return key[: -len(suffix)], suffix
    name, dot, rest = key.rpartition(".")
    return (name, dot + rest) if dot else (key, "")


def module_part(name: str) -> str:
    """unet / te / te1 / te2 from a kohya (or PEFT) module name, else other."""
    for prefix, part in (("lora_unet_", "unet"), ("lora_te1_", "te1"), ("lora_te2_", "te2"),
                         ("lora_te_", "te"), ("unet.", "unet"), ("text_encoder.", "te"),
                         ("text_encoder_2.", "te2")):
        if name.startswith(prefix):
            return part
    return "other"


def network_kind(families: set[str], has_conv: bool) -> str:
    named = sorted(KIND_NAMES[f] for f in families if f in KIND_NAMES and f != "dora")
    if "dora" in families:
        return "DoRA"
    if "lora" in families:
        named.append("LoCon" if has_conv else "LoRA")
    return "+".join(sorted(named)) or "unknown"


def _open(path: Path) -> Any:
    if path.suffix.lower() in PICKLE_SUFFIXES:
        raise CurateError(f"{path}: a pickle file, which curate never opens (loading one runs code from "
                          "it); convert it to .safetensors first")
    try:
        return safe_open(str(path), framework="pt")
    except (OSError, SafetensorError) as exc:
        raise CurateError(f"{path}: not a readable safetensors file ({exc})") from exc


def _shapes(fh: Any) -> tuple[dict[str, tuple[int, ...]], set[str]]:
    shapes, dtypes = {}, set()
    for key in fh.keys():  # noqa: SIM118 (safe_open has keys(), not iteration)
        piece = fh.get_slice(key)
        shapes[key] = tuple(piece.get_shape())
        dtypes.add(str(piece.get_dtype()))
    return shapes, dtypes


def _modules(fh: Any, shapes: dict[str, tuple[int, ...]], info: LoraInfo) -> None:
    """Fill kind, per-part counts, ranks and alphas from the tensor keys and shapes."""
    families_of = dict(SUFFIXES)
    suffixes: dict[str, set[str]] = {}
    for key in shapes:
        name, suffix = split_key(key)
        suffixes.setdefault(name, set()).add(suffix)
    families: set[str] = set()
    ranks, conv_ranks, alphas = [], [], Counter()
    parts: Counter[str] = Counter()
    for name, found in suffixes.items():
        fam = {families_of.get(s, "") for s in found} - {""}
        if ".weight" in found and ".on_input" in found:
            fam.add("ia3")
        if not fam:
            info.other_keys += len(found)
            continue
        families |= fam
        parts[module_part(name)] += 1
        rank_key = next((name + s for s in RANK_KEYS if s in found), None)
        if rank_key is not None:
            shape = shapes[rank_key]
            conv = _is_conv(name, found, shapes, shape)
            (conv_ranks if conv else ranks).append(shape[0])
        if ".alpha" in found:
            alphas[round(float(fh.get_tensor(name + ".alpha").float()), 6)] += 1
    info.kind = network_kind(families, bool(conv_ranks))
    info.modules = dict(sorted(parts.items()))
    info.dims, info.conv_dims = RankSummary.of(ranks), RankSummary.of(conv_ranks)
    info.alphas = alphas.most_common()


def _is_conv(name: str, found: set[str], shapes: dict[str, tuple[int, ...]],
             rank_shape: tuple[int, ...]) -> bool:
    """A module on a convolution larger than 1x1: by a 4-D factor's kernel, a Tucker core, else (LoHa and
    LoKr store conv factors flattened) by the layer's name."""
    if (len(rank_shape) == 4 and rank_shape[2:] != (1, 1)) or ".hada_t1" in found or ".lokr_t2" in found:
        return True
    whole = shapes.get(name + ".lokr_w2", ())
    if len(whole) == 4 and whole[2:] != (1, 1):
        return True
    lycoris = any(s.startswith((".hada_", ".lokr_")) for s in found)
    return lycoris and CONV_NAME.match(name) is not None


def _timestamp(value: str) -> str:
    try:
        return datetime.datetime.fromtimestamp(float(value), datetime.UTC).isoformat(timespec="seconds")
    except (ValueError, OverflowError, OSError):
        return value


def _json_field(meta: dict[str, str], key: str, info: LoraInfo) -> Any:
    if meta.get(key, "") in EMPTY_VALUES:
        return None
    try:
        return json.loads(meta[key])
    except json.JSONDecodeError:
        info.warnings.append(f"{key} is not valid JSON; left out")
        return None


def tag_table(frequency: Any) -> list[tuple[str, int]]:
    """ss_tag_frequency ({folder: {tag: count}}) merged over folders, most frequent first."""
    merged: Counter[str] = Counter()
    for tags in (frequency or {}).values():
        if isinstance(tags, dict):
            for tag, count in tags.items():
                if isinstance(count, int | float):
                    merged[printable(str(tag).strip())] += int(count)
    return sorted(merged.items(), key=lambda item: (-item[1], item[0]))


def _clean(value: Any) -> Any:
    """JSON from a file's header with every string made printable, keys included."""
    if isinstance(value, str):
        return printable(value)
    if isinstance(value, dict):
        return {printable(str(k)): _clean(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_clean(v) for v in value]
    return value


def _metadata(raw: dict[str, str], info: LoraInfo) -> None:
    meta = _clean(raw)
    info.base_model = {k: meta[k] for k in BASE_FIELDS if meta.get(k, "") not in EMPTY_VALUES}
    training = {k: meta[k] for k in TRAINING_FIELDS if meta.get(k, "") not in EMPTY_VALUES}
    training |= {k: v for k, v in sorted(meta.items()) if k.startswith("curate_")}
    for key in ("ss_training_started_at", "ss_training_finished_at"):
        if key in training:
            training[key] = _timestamp(training[key])
    info.training = {k.removeprefix("ss_"): v for k, v in training.items()}
    info.folders = _clean(_json_field(raw, "ss_dataset_dirs", info)) or {}
    info.tags = tag_table(_json_field(raw, "ss_tag_frequency", info))


def lora_info(path: Path) -> LoraInfo:
    """Kind, modules, ranks, alphas, base model, training settings and tag table of a network file."""
    with _open(path) as fh:
        meta = fh.metadata() or {}
        shapes, dtypes = _shapes(fh)
        info = LoraInfo(path=path, size=path.stat().st_size, kind="unknown", modules={}, dims=RankSummary(),
                        conv_dims=RankSummary(), alphas=[], parameters=0, dtypes=sorted(dtypes),
                        has_metadata=bool(meta))
        info.parameters = sum(_numel(s) for s in shapes.values())
        _modules(fh, shapes, info)
    _metadata(meta, info)
    if not shapes:
        info.warnings.append("the file holds no tensors")
    elif info.kind == "unknown":
        info.warnings.append("no LoRA / LyCORIS / iA3 keys: probably not a network file (a checkpoint?)")
    return info


def _numel(shape: tuple[int, ...]) -> int:
    n = 1
    for d in shape:
        n *= d
    return n
