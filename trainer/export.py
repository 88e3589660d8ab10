"""Exporting an iA3 file as an exact LoRA, which ComfyUI, diffusers, Forge and sd-scripts load.

iA3 (REFERENCE §6) scales a base weight W by a learnt vector w: W' = diag(1 + m*w) W on the
output rows, or W' = W diag(1 + m*w) on the input columns (`on_input`). The change
dW = diag(w) W (or W diag(w)) is linear in the multiplier m, as a LoRA's m * (alpha/r) up @ down
is, so a LoRA with (alpha/r) up @ down = dW gives the same model at every multiplier. No rank
below that of dW can do this, so the export is a factorisation, not an approximation; it costs
size: each layer stores about r * (in + out) numbers instead of one vector. Per layer the
cheaper of two exact factorisations is written (k = number of non-zero scales):
- out-scaling: up = diag(w)[:, nz] (out x k), down = W[nz] (k x in), rank k; or
  up = diag(w) W (out x in), down = I (in x in), rank in;
- input-scaling: up = W[:, nz] (out x k), down = diag(w)[nz] (k x in), rank k; or
  up = I (out x out), down = W diag(w) (out x in), rank out.
A layer whose scales are all zero changes nothing and is left out. Conv layers are flattened
to out x (in*kh*kw); with a kernel larger than 1x1 only the factorisations whose up is a plain
out x r matrix exist (a LoRA's up is always 1x1), so those use the first form for out-scaling
and the second for input-scaling.

Every layer gets the same alpha A (the largest rank), its up multiplied by r/A (at most one
rounding step, none for power-of-two ratios): with alphas that differ by layer, diffusers 0.42 drops
the per-layer alphas of kohya UNet attention keys (its alpha_pattern names do not match) and
scales those layers wrongly; one alpha needs no pattern. For the same loader, a text encoder
whose attention LoRAs include no out_proj gets a zero rank-1 out_proj LoRA (`_diffusers_markers`;
SDXL's two encoders are loaded apart, so each gets its own).

The base weights come from the diffusers folder the iA3 was trained on; layers are found by
the same kohya names the trainer gives them (`curate.trainer.networks.base.find_targets`): for SDXL,
sd-scripts' original-layout UNet names and `lora_te1_` / `lora_te2_` for the two encoders,
which diffusers' StableDiffusionXLPipeline.load_lora_weights reads.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from curate.errors import CurateError
from curate.trainer.formats import load_network, save_dtype, save_network
from curate.trainer.model import load_models
from curate.trainer.networks.base import (
    TE_BLOCKS,
    UNET_BLOCKS,
    UNET_CONV_BLOCKS,
    UNET_PREFIX,
    find_targets,
    te_prefixes,
    te_root_path,
)

# source metadata that describes the iA3 network, not the training run: replaced, not copied
NETWORK_FIELDS = ("ss_network_module", "ss_network_dim", "ss_network_alpha", "ss_network_args",
                  "ss_network_dropout", "sshs_model_hash", "sshs_legacy_hash")


@dataclass
class LayerExport:
    name: str
    shape: tuple[int, ...]  # the base weight's shape
    on_input: bool
    rank: int
    bytes: int  # of its lora_down, lora_up and alpha tensors


@dataclass
class ExportResult:
    source: Path
    output: Path
    model: Path
    precision: str
    ia3_bytes: int
    lora_bytes: int
    layers: list[LayerExport] = field(default_factory=list)
    skipped_zero: list[str] = field(default_factory=list)  # layers whose scales are all zero
    markers: list[str] = field(default_factory=list)  # the zero out_proj LoRAs added for diffusers

    @property
    def marker(self) -> str | None:
        """The first (SD 1.x/2.x: the only) marker LoRA."""
        return self.markers[0] if self.markers else None

    @property
    def ratio(self) -> float:
        return self.lora_bytes / self.ia3_bytes if self.ia3_bytes else 0.0

    def as_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data |= {"source": str(self.source), "output": str(self.output), "model": str(self.model),
                 "ratio": round(self.ratio, 2), "marker": self.marker,
                 "max_rank": max((x.rank for x in self.layers), default=0)}
        return data


def read_ia3(path: Path) -> tuple[dict[str, tuple[torch.Tensor, bool]], dict[str, str]]:
    """kohya name -> (scale vector, on_input) of an iA3 file, and its metadata."""
    tensors, metadata = load_network(path)
    if any(".lora_down." in key or ".lora_up." in key for key in tensors):
        raise CurateError(f"{path}: already a LoRA (lora_down/lora_up keys); only iA3 files need exporting")
    lycoris = {"LoHa" if ".hada_" in key else "LoKr" for key in tensors if ".hada_" in key or ".lokr_" in key}
    if lycoris:
        # a LoHa's dW has rank up to dim^2, a LoKr's up to rank(w1) * rank(w2): no small exact LoRA
        raise CurateError(f"{path}: a {'+'.join(sorted(lycoris))} (LyCORIS) file; export turns iA3 into LoRA "
                          "only. A1111, ComfyUI and Forge load it as it is; for a LoRA, bake it in with "
                          "`curate lora merge` and take the difference with `curate lora extract`")
    layers: dict[str, tuple[torch.Tensor, bool]] = {}
    for key in sorted(tensors):
        name, _, kind = key.rpartition(".")
        if kind == "weight" and f"{name}.on_input" in tensors and tensors[key].dim() == 1:
            layers[name] = (tensors[key].float(), bool(tensors[f"{name}.on_input"].item()))
        elif not (kind == "on_input" and f"{name}.weight" in tensors):
            raise CurateError(f"{path}: not an iA3 file (key {key!r}; iA3 files hold NAME.weight vectors "
                              "and NAME.on_input only); export files trained with --network ia3")
    if not layers:
        raise CurateError(f"{path}: not an iA3 file (no NAME.weight / NAME.on_input pairs)")
    return layers, metadata


def base_layers(model_dir: Path, allow_pickle: bool = False) -> dict[str, nn.Module]:
    """Every Linear / Conv2d of the model an adapter may target, by kohya name."""
    models = load_models(model_dir, torch.device("cpu"), allow_pickle=allow_pickle)
    layers = find_targets(models.unet, UNET_PREFIX, UNET_BLOCKS + UNET_CONV_BLOCKS, lambda _n, _layer: True)
    encoders = models.text_encoders
    for prefix, encoder in zip(te_prefixes(len(encoders)), encoders, strict=True):
        layers |= find_targets(encoder, prefix, TE_BLOCKS, lambda _n, _layer: True, te_root_path(encoder))
    return layers


def factorise(weight: torch.Tensor, scale: torch.Tensor, on_input: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """(up, down) with up @ down = diag(scale) W (or W diag(scale) on_input), of the smallest rank
    among the exact factorisations this module's docstring lists; shaped as kohya stores them."""
    out_dim, in_dim = weight.shape[:2]
    kernel = weight.shape[2:]
    pointwise = all(k == 1 for k in kernel)
    flat = weight.reshape(out_dim, -1).float()
    nz = torch.nonzero(scale).flatten()
    if not on_input:
        if pointwise and in_dim < len(nz):
            up, down = scale[:, None] * flat, torch.eye(in_dim)
        else:
            up, down = torch.diag(scale)[:, nz], flat[nz]
    elif pointwise and len(nz) <= out_dim:
        up, down = flat[:, nz], torch.diag(scale)[nz]
    else:
        per_column = scale.repeat_interleave(flat.shape[1] // in_dim)  # each input channel's kernel taps
        up, down = torch.eye(out_dim), flat * per_column
    rank = up.shape[1]
    if kernel:
        return up.reshape(out_dim, rank, 1, 1), down.reshape(rank, in_dim, *kernel)
    return up, down


def _check_fits(path: Path, model_dir: Path, name: str, layer: nn.Module | None, scale: torch.Tensor,
                on_input: bool) -> torch.Tensor:
    if layer is None:
        raise CurateError(f"{path}: {name} is no layer of {model_dir}; pass the base model the iA3 was "
                          "trained on (its diffusers folder)")
    weight: torch.Tensor = layer.weight.detach()
    want = weight.shape[1] if on_input else weight.shape[0]
    if scale.numel() != want:
        raise CurateError(f"{path}: {name} has {scale.numel()} scales but the layer in {model_dir} has "
                          f"{want} {'inputs' if on_input else 'outputs'}; pass the model it was trained on")
    return weight


def _metadata(source: dict[str, str], ia3_path: Path, ranks: list[int]) -> dict[str, str]:
    meta = {k: v for k, v in source.items() if k not in NETWORK_FIELDS}
    # sd-scripts' resize_lora writes "Dynamic" when ranks differ by layer
    dim = str(ranks[0]) if len(set(ranks)) == 1 else "Dynamic"
    meta |= {"ss_network_module": "networks.lora", "ss_network_dim": dim,
             "ss_network_alpha": str(float(max(ranks))),
             "curate_exported_from": "ia3", "curate_export_source": ia3_path.name}
    if "ss_network_args" in source:
        meta["curate_ia3_network_args"] = source["ss_network_args"]
    return meta


def _diffusers_markers(tensors: dict[str, torch.Tensor], layers: dict[str, nn.Module], alpha: float,
                       dtype: torch.dtype) -> list[str]:
    """Add a zero LoRA (rank 1, up = 0: it changes nothing anywhere) on one out_proj of each text
    encoder whose attention LoRAs include no out_proj: diffusers tells kohya text-encoder keys
    apart by a `to_out_lora` key, and without one silently drops k/q/v_proj (diffusers 0.42
    `convert_state_dict_to_peft`, run per encoder). Returns the added names."""
    added = []
    for prefix in ("lora_te_", "lora_te1_", "lora_te2_"):
        attention = sorted(k.split(".")[0] for k in tensors if k.startswith(prefix) and "_self_attn_" in k)
        if not attention or any(name.endswith("_self_attn_out_proj") for name in attention):
            continue
        name = attention[0].rsplit("_self_attn_", 1)[0] + "_self_attn_out_proj"
        if name not in layers:
            continue
        out_dim, in_dim = layers[name].weight.shape
        tensors |= {f"{name}.lora_down.weight": torch.zeros(1, in_dim, dtype=dtype),
                    f"{name}.lora_up.weight": torch.zeros(out_dim, 1, dtype=dtype),
                    f"{name}.alpha": torch.tensor(alpha, dtype=dtype)}
        added.append(name)
    return added


def _tensor_bytes(*tensors: torch.Tensor) -> int:
    return sum(t.numel() * t.element_size() for t in tensors)


def export_ia3_to_lora(ia3_path: Path, model_dir: Path, out_path: Path,
                       save_precision: str = "fp16", *, allow_pickle: bool = False) -> ExportResult:
    """Write OUT, a kohya LoRA equal to the iA3 file on MODEL at every multiplier."""
    dtype = save_dtype(save_precision)
    if out_path.resolve() == ia3_path.resolve():
        raise CurateError(f"{out_path}: the LoRA would overwrite the iA3 file; choose another --out")
    ia3, source_meta = read_ia3(ia3_path)
    layers = base_layers(model_dir, allow_pickle)
    result = ExportResult(ia3_path, out_path, model_dir, save_precision, ia3_path.stat().st_size, 0)
    factors: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
    for name, (scale, on_input) in ia3.items():
        weight = _check_fits(ia3_path, model_dir, name, layers.get(name), scale, on_input)
        if bool(scale.any()):
            factors[name] = factorise(weight, scale, on_input)
            rank = factors[name][0].shape[1]
            result.layers.append(LayerExport(name, tuple(weight.shape), on_input, rank, 0))
        else:
            result.skipped_zero.append(name)
    if not factors:
        raise CurateError(f"{ia3_path}: every scale is zero (an untrained iA3); there is nothing to export")
    alpha = float(max(x.rank for x in result.layers))
    tensors: dict[str, torch.Tensor] = {}
    for layer in result.layers:
        up, down = factors.pop(layer.name)  # free each float32 pair once cast: SD 1.5's are ~0.8 GB
        entry = {f"{layer.name}.lora_down.weight": down.to(dtype).contiguous(),
                 f"{layer.name}.lora_up.weight": (up * (layer.rank / alpha)).to(dtype).contiguous(),
                 f"{layer.name}.alpha": torch.tensor(alpha, dtype=dtype)}
        layer.bytes = _tensor_bytes(*entry.values())
        tensors |= entry
    result.markers = _diffusers_markers(tensors, layers, alpha, dtype)
    save_network(out_path, tensors, _metadata(source_meta, ia3_path, [x.rank for x in result.layers]))
    result.lora_bytes = out_path.stat().st_size
    return result


def describe(result: ExportResult) -> str:
    """One line for people: the size cost."""
    ranks = sorted({x.rank for x in result.layers})
    return (f"{len(result.layers)} layers, rank {ranks[0]}-{ranks[-1]}; "
            f"{result.lora_bytes:,} bytes against the iA3's {result.ia3_bytes:,} ({result.ratio:.1f}x)")

