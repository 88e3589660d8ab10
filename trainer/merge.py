"""Baking LoRA / LoCon / iA3 networks into a base checkpoint (`curate lora merge`).

Each network is applied to the base weights in the order given, at its strength s times the
block weight b of the layer's block (curate.trainer.blocks), m = s * b:
- LoRA / LoCon (REFERENCE §5): W += m * (alpha / r) * up @ down, with conv weights flattened to
  out x (in*kh*kw); a 3x3 LoCon layer's 1x1 up composed with its 3x3 down is exactly that
  product reshaped, so every kernel size takes the one formula. A file without `.alpha` has
  alpha = r, as sd-scripts reads it;
- iA3 (REFERENCE §6): W *= 1 + m*w on the output rows (on_input 0) or input columns (1); the bias
  is not scaled, as A1111 merges it.
- LoHa / LoKr (LyCORIS, REFERENCE §7): W += m * dW with LyCORIS' dense update
  (curate.trainer.networks.loha / lokr): (alpha / dim) * (w1_a @ w1_b) * (w2_a @ w2_b) for LoHa,
  (alpha / dim) * kron(w1, w2) for LoKr, each half whole or a rank-dim product (or Tucker, with
  hada_t1/t2, lokr_t2), dim read from the `_b` factors; no `.alpha`, or a LoKr with both halves
  whole, means scale 1, as A1111 and LyCORIS read them.
iA3 multiplies what LoRAs before it added, so order matters when both kinds are merged.

Keys of a kind this does not know (DoRA's dora_scale, full `.diff`, ...) and modules the
base lacks are reported in `MergeResult.unknown`, never dropped silently: a module with any
unknown key is left unmerged as a whole (merging half of it would be wrong), and `strict` turns
any unknown key into an error. A network none of whose modules fit the base is an error.

The base is loaded by curate.trainer.model.load_models (diffusers folder or single-file checkpoint);
the math runs in float32 on CPU. An SDXL base's layers carry sd-scripts' SDXL names (UNet in
the original SGM layout, `lora_te1_` / `lora_te2_` for its two text encoders, as the trainer
names them), its block weights are SDXL's (curate.trainer.blocks, 12 / 20 values), and its output
holds text_encoder_2 / tokenizer_2 too. Output is a diffusers folder (every component's
save_pretrained; model_index.json, the scheduler and any other component folders copied from a
folder base) or one original-layout `.safetensors` (curate.trainer.convert; SDXL's SGM layout),
both written under a temporary name and renamed into place, so a killed merge leaves no half-written model.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn

from curate.atomic import TMP_PREFIX, UMASK
from curate.errors import CurateError
from curate.paths import first_line
from curate.trainer.blocks import block_weight, parse_block_weights
from curate.trainer.formats import load_network, save_dtype
from curate.trainer.model import Models, load_models
from curate.trainer.networks.base import UNET_PREFIX, kohya_name, te_prefixes, te_root_path, unet_renamer
from curate.trainer.networks.loha import loha_diff
from curate.trainer.networks.lokr import lokr_diff, tucker_w2
from curate.trainer.single_file import CONFIGS

LORA_SUFFIXES = ("lora_down.weight", "lora_up.weight", "alpha")
IA3_SUFFIXES = ("weight", "on_input")
LOHA_KEYS = frozenset({"hada_w1_a", "hada_w1_b", "hada_w2_a", "hada_w2_b", "hada_t1", "hada_t2", "alpha"})
LOKR_KEYS = frozenset({"lokr_w1", "lokr_w1_a", "lokr_w1_b", "lokr_w2", "lokr_w2_a", "lokr_w2_b", "lokr_t2",
                       "alpha"})
WRITTEN = ("unet", "vae", "text_encoder", "tokenizer", "text_encoder_2", "tokenizer_2")
# SDXL's UNet layers outside the down / mid / up blocks, under their SGM names (sd-scripts' SDXL UNet)
SGM_TOP = {"conv_in": "input_blocks.0.0", "time_embedding.linear_1": "time_embed.0",
           "time_embedding.linear_2": "time_embed.2", "add_embedding.linear_1": "label_emb.0.0",
           "add_embedding.linear_2": "label_emb.0.2", "conv_out": "out.2"}


@dataclass
class NetworkMerge:
    path: Path
    strength: float
    lora_layers: int = 0
    ia3_layers: int = 0
    loha_layers: int = 0
    lokr_layers: int = 0
    unknown: list[str] = field(default_factory=list)  # keys not merged: unknown kinds or layers


@dataclass
class MergeResult:
    base: Path
    output: Path
    format: str
    precision: str
    block_weights: dict[str, float] | None
    networks: list[NetworkMerge]

    @property
    def unknown(self) -> list[str]:
        return [f"{n.path.name}: {key}" for n in self.networks for key in n.unknown]

    def as_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data |= {"base": str(self.base), "output": str(self.output), "unknown": self.unknown}
        for net in data["networks"]:
            net["path"] = str(net["path"])
        return data


def model_layers(models: Models) -> dict[str, nn.Module]:
    """Every Linear / Conv2d of the UNet and text encoder(s) by its kohya name: a superset of what
    the trainer adapts, so networks from other trainers (conv_in, time embedding) fit too."""
    layers: dict[str, nn.Module] = {}
    rename = unet_renamer(models.unet)
    encoders = models.text_encoders
    roots = [(UNET_PREFIX, models.unet, "")]
    roots += [(prefix, enc, te_root_path(enc)) for prefix, enc in zip(te_prefixes(len(encoders)), encoders,
                                                                       strict=True)]
    for prefix, root, root_path in roots:
        for path, module in root.named_modules():
            if path and isinstance(module, nn.Linear | nn.Conv2d):
                if rename is not None and root is models.unet:
                    path = SGM_TOP.get(path, rename(path))
                layers[kohya_name(prefix, *([root_path] if root_path else []), path)] = module
    return layers


def group_modules(tensors: dict[str, torch.Tensor]) -> dict[str, dict[str, torch.Tensor]]:
    """kohya module name -> {key suffix: tensor} (`lora_up.weight`, `alpha`, `on_input`...)."""
    modules: dict[str, dict[str, torch.Tensor]] = {}
    for key, value in tensors.items():
        name, _, suffix = key.partition(".")
        modules.setdefault(name, {})[suffix] = value
    return modules


def lora_delta(parts: dict[str, torch.Tensor], shape: torch.Size) -> torch.Tensor:
    """(alpha / r) * up @ down, shaped like the base weight."""
    down, up = parts["lora_down.weight"].float(), parts["lora_up.weight"].float()
    rank = down.shape[0]
    alpha = float(parts["alpha"]) if "alpha" in parts else float(rank)
    return (up.flatten(1) @ down.flatten(1)).reshape(shape) * (alpha / rank)


def ia3_scaled(parts: dict[str, torch.Tensor], weight: torch.Tensor, m: float) -> torch.Tensor:
    """W * (1 + m*w) over the input columns (on_input) or the output rows."""
    w = parts["weight"].float()
    if bool(parts["on_input"].item()):
        return weight * (1 + m * w).reshape(1, -1, *([1] * (weight.dim() - 2)))
    return weight * (1 + m * w).reshape(-1, *([1] * (weight.dim() - 1)))


def _scale(parts: dict[str, torch.Tensor], dim: int | None) -> float:
    """alpha / dim; 1 without an alpha or a dim (both LoKr halves whole), as A1111 and LyCORIS read
    it; an alpha of 0 is dim, as LyCORIS reads it."""
    if dim is None or "alpha" not in parts or float(parts["alpha"]) == 0:
        return 1.0
    return float(parts["alpha"]) / dim


def loha_delta(parts: dict[str, torch.Tensor], shape: torch.Size) -> torch.Tensor:
    """LyCORIS' LoHa dW from a file's tensors (plain or Tucker), shaped like the base weight."""
    p = {k: v.float() for k, v in parts.items()}
    scale = _scale(parts, p["hada_w1_b"].shape[0])
    out_axis = 1 if "hada_t1" in p else 0  # Tucker stores the out factors as [dim, out]
    if p["hada_w1_a"].shape[out_axis] != shape[0]:
        raise ValueError(f"hada_w1_a is {tuple(p['hada_w1_a'].shape)}")
    return loha_diff(p["hada_w1_a"], p["hada_w1_b"], p["hada_w2_a"], p["hada_w2_b"], scale, tuple(shape),
                     p.get("hada_t1"), p.get("hada_t2"))


def lokr_delta(parts: dict[str, torch.Tensor], shape: torch.Size) -> torch.Tensor:
    """LyCORIS' LoKr dW from a file's tensors (each half whole, a product or Tucker)."""
    p = {k: v.float() for k, v in parts.items()}
    w1 = p["lokr_w1"] if "lokr_w1" in p else p["lokr_w1_a"] @ p["lokr_w1_b"]
    if "lokr_w2" in p:
        w2 = p["lokr_w2"]
    elif "lokr_t2" in p:
        w2 = tucker_w2(p["lokr_t2"], p["lokr_w2_a"], p["lokr_w2_b"])
    else:
        w2 = p["lokr_w2_a"] @ p["lokr_w2_b"].flatten(1)
    # LyCORIS takes dim from the first factored half: w1's, else w2's
    dim = next((p[k].shape[0] for k in ("lokr_w1_b", "lokr_w2_b") if k in p), None)
    w1_rows, w2_rows = w1.shape[0], w2.shape[0]
    if w1_rows * w2_rows != shape[0] or w1.numel() * w2.numel() != shape.numel():
        raise ValueError(f"kron of {tuple(w1.shape)} and {tuple(w2.shape)}")
    return lokr_diff(w1, w2, _scale(parts, dim), tuple(shape))


def _kind(parts: dict[str, torch.Tensor]) -> str | None:
    keys = set(parts)
    if keys in ({"lora_down.weight", "lora_up.weight", "alpha"}, {"lora_down.weight", "lora_up.weight"}):
        return "lora"
    if keys == {"weight", "on_input"} and parts["weight"].dim() == 1:
        return "ia3"
    if keys <= LOHA_KEYS and {"hada_w1_a", "hada_w1_b", "hada_w2_a", "hada_w2_b"} <= keys \
            and ("hada_t1" in keys) == ("hada_t2" in keys):
        return "loha"
    halves = [{f"lokr_w{i}"} <= keys or {f"lokr_w{i}_a", f"lokr_w{i}_b"} <= keys for i in (1, 2)]
    if keys <= LOKR_KEYS and all(halves):
        return "lokr"
    return None


DELTAS = {"loha": loha_delta, "lokr": lokr_delta}


def _lycoris_delta(path: Path, name: str, kind: str, parts: dict[str, torch.Tensor],
                   weight: torch.Tensor) -> torch.Tensor:
    """A LoHa / LoKr module's dW for this base layer; factors that cannot make its shape are an error."""
    try:
        delta = DELTAS[kind](parts, weight.shape)
    except (RuntimeError, ValueError, IndexError) as exc:
        raise CurateError(f"{path}: {name} does not fit the base layer of shape {tuple(weight.shape)} "
                          f"({first_line(exc)}); merge networks trained on this base model's architecture"
                          ) from None
    return delta


def _check_shape(path: Path, name: str, kind: str, parts: dict[str, torch.Tensor],
                 weight: torch.Tensor) -> None:
    if kind == "lora":
        down, up = parts["lora_down.weight"], parts["lora_up.weight"]
        fits = up.shape[0] == weight.shape[0] and down[0].numel() == weight[0].numel()
    else:
        axis = 1 if bool(parts["on_input"].item()) else 0
        fits = parts["weight"].numel() == weight.shape[axis]
    if not fits:
        raise CurateError(f"{path}: {name} does not fit the base layer of shape {tuple(weight.shape)}; "
                          "merge networks trained on this base model's architecture")


def apply_network(layers: dict[str, nn.Module], path: Path, strength: float,
                  weights: dict[str, float] | None) -> NetworkMerge:
    """Merge one network file into `layers` in place; returns what was merged and what was not."""
    tensors, _ = load_network(path)
    report = NetworkMerge(path, strength)
    for name, parts in sorted(group_modules(tensors).items()):
        kind, layer = _kind(parts), layers.get(name)
        if kind is None or layer is None:
            report.unknown += [f"{name}.{suffix}" for suffix in sorted(parts)]
            continue
        weight = layer.weight
        m = strength * block_weight(weights, name)
        with torch.no_grad():
            base = weight.float()
            if kind in DELTAS:
                merged = base + m * _lycoris_delta(path, name, kind, parts, weight)
            elif kind == "lora":
                _check_shape(path, name, kind, parts, weight)
                merged = base + m * lora_delta(parts, weight.shape)
            else:
                _check_shape(path, name, kind, parts, weight)
                merged = ia3_scaled(parts, base, m)
            weight.copy_(merged.to(weight.dtype))
        setattr(report, f"{kind}_layers", getattr(report, f"{kind}_layers") + 1)
    if not (report.lora_layers or report.ia3_layers or report.loha_layers or report.lokr_layers):
        raise CurateError(f"{path}: none of its {len(tensors)} keys fit the base model (LoRA lora_down/"
                          "lora_up/alpha, iA3 weight/on_input, LoHa hada_* or LoKr lokr_* on its layers); "
                          "is it for another model?")
    return report


def _temp_sibling(out: Path) -> Path:
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f"{TMP_PREFIX}{out.name}-", dir=out.parent))
    tmp.chmod(0o777 & ~UMASK)  # mkdtemp's 0700 would hide the merged model from other users
    return tmp


def _pipeline_files(models: Models, base: Path, model_config: str | None) -> Path:
    """Where model_index.json and the scheduler come from: the base folder, else model_config's
    folder, else the configs shipped for single-file loading (trainer/configs)."""
    if base.is_dir():
        return base
    if model_config is not None and (Path(model_config) / "model_index.json").is_file():
        return Path(model_config)
    if models.sdxl:
        return CONFIGS / "sdxl"
    return CONFIGS / ("sd2" if models.v_parameterization else "sd1")


def save_diffusers(models: Models, source: Path, out: Path, dtype: torch.dtype) -> None:
    """Each component's save_pretrained; model_index.json, the scheduler and components this does
    not rewrite (safety checker, feature extractor) copied from `source`, so the output loads as
    the base did."""
    tmp = _temp_sibling(out)
    try:
        sdxl = ("text_encoder_2",) if models.sdxl else ()
        for name in ("unet", "vae", "text_encoder", *sdxl):
            module = getattr(models, name)
            # nn.Module.to: diffusers' override warns about fp32-only modules SD's models lack
            nn.Module.to(module, dtype)
            module.save_pretrained(tmp / name, safe_serialization=True)
        models.tokenizer.save_pretrained(tmp / "tokenizer")
        if models.tokenizer_2 is not None:
            models.tokenizer_2.save_pretrained(tmp / "tokenizer_2")
        shutil.copy2(source / "model_index.json", tmp / "model_index.json")
        for entry in source.iterdir():
            if entry.is_dir() and entry.name not in WRITTEN:
                shutil.copytree(entry, tmp / entry.name)
        _replace(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def save_single_file(models: Models, out: Path, dtype: torch.dtype) -> None:
    from safetensors.torch import save_file

    from curate.trainer.convert import ldm_checkpoint, sgm_checkpoint

    if models.text_encoder_2 is not None:
        raw = sgm_checkpoint(models.unet, models.vae, models.text_encoder, models.text_encoder_2)
    else:
        raw = ldm_checkpoint(models.unet, models.vae, models.text_encoder)
    state = {k: v.detach().to("cpu", dtype if v.is_floating_point() else v.dtype).contiguous()
             for k, v in sorted(raw.items())}
    tmp = _temp_sibling(out)
    try:
        save_file(state, str(tmp / out.name), metadata={"format": "pt"})
        _replace(tmp / out.name, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _replace(new: Path, out: Path) -> None:
    """Rename `new` to `out`; an existing output is moved aside first and deleted after."""
    old = None
    if out.exists():
        old = out.with_name(f"{TMP_PREFIX}{out.name}-old")
        shutil.rmtree(old, ignore_errors=True)
        os.replace(out, old)
    os.replace(new, out)
    if old is not None:
        shutil.rmtree(old) if old.is_dir() else old.unlink()


def merge_networks(base: Path, networks: list[tuple[Path, float]], out: Path, *,
                   block_weights: str | None = None, save_precision: str = "fp16",
                   out_format: Literal["diffusers", "single-file"] = "diffusers",
                   model_config: str | None = None, strict: bool = False,
                   allow_pickle: bool = False) -> MergeResult:
    """Write OUT: BASE with each (network file, strength) baked in, optionally per-block weighted."""
    dtype = save_dtype(save_precision)
    if out_format not in ("diffusers", "single-file"):
        raise CurateError(f"merge format {out_format!r}: choose diffusers or single-file")
    if not networks:
        raise CurateError("merge: give at least one network file (NET[:STRENGTH])")
    if out.resolve() == base.resolve() or any(out.resolve() == p.resolve() for p, _ in networks):
        raise CurateError(f"{out}: the output would overwrite an input; choose another --out")
    for path, _ in networks:
        if not path.is_file():
            raise CurateError(f"{path}: no such network file")
    models = load_models(base, torch.device("cpu"), model_config=model_config, allow_pickle=allow_pickle)
    # SD 1.x and SDXL number their blocks differently, so the spec is read for the loaded base
    weights = parse_block_weights(block_weights, sdxl=models.sdxl) if block_weights is not None else None
    layers = model_layers(models)
    reports = [apply_network(layers, path, strength, weights) for path, strength in networks]
    result = MergeResult(base, out, out_format, save_precision, weights, reports)
    if strict and result.unknown:
        raise CurateError(f"merge: {len(result.unknown)} keys not merged (first: {result.unknown[0]}); "
                          "drop strict to merge the rest")
    if out_format == "diffusers":
        save_diffusers(models, _pipeline_files(models, base, model_config), out, dtype)
    else:
        save_single_file(models, out, dtype)
    return result


def parse_network_arg(text: str) -> tuple[Path, float]:
    """`NET[:STRENGTH]` as the CLI takes it; a Windows drive letter is not a strength."""
    path, sep, strength = text.rpartition(":")
    if not sep or not path or "/" in strength or "\\" in strength:
        return Path(text), 1.0
    try:
        return Path(path), float(strength)
    except ValueError:
        raise CurateError(f"{text}: write NET or NET:STRENGTH with a number, "
                          "e.g. style.safetensors:0.7") from None


def describe(result: MergeResult) -> str:
    """One line per network for people; unknown keys are counted (the JSON lists them)."""
    lines = [f"{n.path.name} x{n.strength:g}: {n.lora_layers} LoRA + {n.ia3_layers} iA3 layers"
             + "".join(f" + {count} {label} layers" for count, label in ((n.loha_layers, "LoHa"),
                                                                          (n.lokr_layers, "LoKr")) if count)
             + (f", {len(n.unknown)} keys NOT merged (first: {n.unknown[0]})" if n.unknown else "")
             for n in result.networks]
    return "\n".join([*lines, f"wrote {result.output} ({result.format}, {result.precision})"])
