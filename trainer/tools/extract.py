"""A LoRA from the difference of two checkpoints: `extract_lora(base, tuned, out, dim, ...)`.

For every layer curate's LoRA trainer would adapt (the same `LoRANetwork` target finding, so
names match what `curate train` writes; with conv_dim the ResNet / resampling convs too),
dW = W_tuned - W_base (a conv flattened to out x in*kh*kw) is factorised by its SVD
U S Vh truncated to rank k = min(dim, out, in*kh*kw) (conv_dim for kernels above 1x1):
up = U_k S_k, down = Vh_k, which is the best rank-k approximation (Eckart-Young); the energy
kept is sum_{i<=k} s_i^2 / ||dW||_F^2. As sd-scripts' extract_lora_from_models.py does, the
entries of up and down are then clamped to the `clamp_quantile` quantile of their absolute
values (sd-scripts takes the signed quantile; with absolute values 1.0 means no clamping),
which trims a few outliers that fp16 files and loaders handle badly; the reported error is
the one of the written factors, clamping included.

Which layers: the text encoder is extracted only if some weight in it moved by more than
`min_diff` (sd-scripts' rule: fine-tunes often leave it as it was, and an fp16 round trip alone
makes tiny differences not worth a LoRA); a UNet or text-encoder layer whose weights are
identical is left out. Every module gets alpha = dim (sd-scripts gives alpha = rank; a layer
capped below dim has its up scaled by rank / dim instead, so that one alpha serves all modules,
which diffusers needs, see trainer/export.py). Both models are loaded with
`curate.trainer.model.load_models`, so either may be a diffusers folder or a single-file checkpoint.

SDXL: the targets are those of `curate train` on SDXL, so the file has sd-scripts' SDXL names
(original-layout `lora_unet_input_blocks_4_1_...`, `lora_te1_` / `lora_te2_`) and SDXL metadata;
the text-encoder rule looks at both encoders together, as sd-scripts' SDXL extraction does.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from curate.errors import CurateError
from curate.trainer.checkpoint import SDXL_VERSION
from curate.trainer.export import _diffusers_markers
from curate.trainer.formats import as_metadata, modelspec, save_dtype, save_network
from curate.trainer.model import Models, load_models
from curate.trainer.networks import LoRANetwork, create_network


@dataclass
class LayerExtract:
    name: str
    shape: tuple[int, ...]  # the base weight's
    rank: int
    energy: float  # fraction of ||dW||_F^2 the rank-k SVD keeps
    error: float  # ||dW - up @ down||_F / ||dW||_F of the written factors (clamping included)
    norm: float  # ||dW||_F
    max_diff: float  # max |dW|


@dataclass
class ExtractResult:
    base: Path
    tuned: Path
    output: Path
    dim: int
    conv_dim: int | None
    precision: str
    clamp_quantile: float
    layers: list[LayerExtract] = field(default_factory=list)
    identical: list[str] = field(default_factory=list)  # layers left out: no difference at all
    text_encoder_skipped: bool = False
    text_encoder_max_diff: float = 0.0
    markers: list[str] = field(default_factory=list)  # the zero out_proj LoRAs added for diffusers

    @property
    def marker(self) -> str | None:
        return self.markers[0] if self.markers else None

    @property
    def energy(self) -> float:
        """Energy kept over all extracted layers (weighted by ||dW||_F^2)."""
        total = sum(x.norm ** 2 for x in self.layers)
        return sum(x.energy * x.norm ** 2 for x in self.layers) / total if total else 1.0

    def as_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data |= {"base": str(self.base), "tuned": str(self.tuned), "output": str(self.output),
                 "energy": self.energy, "marker": self.marker}
        return data


def _targets(models: Models, conv_dim: int | None) -> tuple[LoRANetwork, dict[str, nn.Module]]:
    """The layers a curate LoRA (LoCon with conv_dim) adapts, by kohya name."""
    net = create_network("lora", models.unet, models.text_encoders, dim=1, conv_dim=1 if conv_dim else None)
    assert isinstance(net, LoRANetwork)
    return net, {m.kohya_name: m.layer for m in net.adapters()}


def _quantile(values: torch.Tensor, q: float) -> torch.Tensor:
    """torch.quantile, which refuses more than 2**24 values (a rank-1024 LoCon on SD's widest
    conv comes close): above that the nearest-rank value, within one entry of it."""
    if values.numel() <= 2 ** 24:
        return torch.quantile(values, q)
    return values.kthvalue(max(1, math.ceil(q * values.numel()))).values


def factorise(diff: torch.Tensor, rank: int,
              clamp_quantile: float) -> tuple[torch.Tensor, torch.Tensor, float, float]:
    """(up, down, energy, error) of the rank-`rank` SVD of diff (out x n), clamped as sd-scripts."""
    mat = diff.reshape(diff.shape[0], -1).float()
    u, s, vh = torch.linalg.svd(mat, full_matrices=False)
    rank = min(rank, len(s))
    up, down = u[:, :rank] * s[:rank], vh[:rank]
    if clamp_quantile < 1.0:
        hi = _quantile(torch.cat([up.flatten(), down.flatten()]).abs(), clamp_quantile)
        up, down = up.clamp(-hi, hi), down.clamp(-hi, hi)
    sq = s.pow(2)
    total = float(sq.sum())
    energy = float(sq[:rank].sum()) / total if total else 1.0
    error = float(torch.linalg.matrix_norm(mat - up @ down)) / math.sqrt(total) if total else 0.0
    return up, down, energy, error


def _check(dim: int, conv_dim: int | None, clamp_quantile: float, out: Path, *models: Path) -> None:
    if dim < 1 or (conv_dim is not None and conv_dim < 1):
        raise CurateError(f"--dim {dim} / --conv-dim {conv_dim}: ranks must be at least 1")
    if not 0 < clamp_quantile <= 1:
        raise CurateError(f"--clamp-quantile {clamp_quantile}: must be in (0, 1]; 1 turns clamping off")
    for model in models:
        if out.resolve() == model.resolve():
            raise CurateError(f"{out}: the LoRA would overwrite a model; choose another --out")


def _differences(base: Models, tuned: Models, conv_dim: int | None, min_diff: float,
                 result: ExtractResult) -> tuple[dict[str, torch.Tensor], dict[str, nn.Module]]:
    """kohya name -> dW of the layers to extract (in the trainer's key order), and all base layers."""
    base_net, base_layers = _targets(base, conv_dim)
    _tuned_net, tuned_layers = _targets(tuned, conv_dim)
    if base_layers.keys() != tuned_layers.keys():
        missing = sorted(base_layers.keys() ^ tuned_layers.keys())[:3]
        raise CurateError(f"{result.base} and {result.tuned} are different architectures (layers {missing} "
                          "exist in one only); extract needs a model and a fine-tune of it")
    diffs: dict[str, torch.Tensor] = {}
    for name in base_net.unet_names + base_net.te_names:
        w_base, w_tuned = base_layers[name].weight, tuned_layers[name].weight
        if w_base.shape != w_tuned.shape:
            raise CurateError(f"{result.tuned}: {name} is {tuple(w_tuned.shape)}, in {result.base} "
                              f"{tuple(w_base.shape)}; extract needs a model and a fine-tune of it")
        diffs[name] = (w_tuned.detach().float() - w_base.detach().float()).cpu()
    te = [diffs[n] for n in base_net.te_names]
    result.text_encoder_max_diff = max((float(d.abs().max()) for d in te), default=0.0)
    if result.text_encoder_max_diff <= min_diff:
        result.text_encoder_skipped = True
        for name in base_net.te_names:
            del diffs[name]
    for name in [n for n, d in diffs.items() if not bool(d.any())]:
        result.identical.append(name)
        del diffs[name]
    return diffs, base_layers


def _metadata(base: Path, tuned: Path, out: Path, models: Models, dim: int,
              conv_dim: int | None) -> dict[str, str]:
    sdxl = models.sdxl
    v2 = not sdxl and getattr(models.text_encoder.config, "hidden_size", 768) == 1024
    v_pred = models.v_parameterization
    args = {"conv_dim": str(conv_dim), "conv_alpha": str(float(dim))} if conv_dim else {}
    size = 1024 if sdxl else 768 if v_pred else 512
    version = SDXL_VERSION if sdxl else ("sd_v2" if v2 else "sd_v1") + ("_v" if v_pred else "")
    return as_metadata({
        "ss_network_module": "networks.lora", "ss_network_dim": dim, "ss_network_alpha": float(dim),
        "ss_network_args": args, "ss_v2": v2, "ss_v_parameterization": v_pred,
        "ss_base_model_version": version,
        "ss_sd_model_name": base.name,
        "ss_training_comment": f"extracted by curate: {tuned.name} - {base.name}",
        "curate_extracted_from": {"base": base.name, "tuned": tuned.name},
        **modelspec(out.stem, (size, size), timestamp=time.time(), v2=v2, v_parameterization=v_pred,
                    sdxl=sdxl),
    })


def extract_lora(base: Path, tuned: Path, out: Path, dim: int, conv_dim: int | None = None, *,
                 clamp_quantile: float = 0.99, min_diff: float = 0.01, save_precision: str = "fp16",
                 device: str = "cpu", model_config: str | None = None,
                 allow_pickle: bool = False) -> ExtractResult:
    """Write OUT, a kohya LoRA (LoCon with conv_dim) approximating TUNED - BASE at rank dim."""
    _check(dim, conv_dim, clamp_quantile, out, base, tuned)
    dtype = save_dtype(save_precision)
    result = ExtractResult(base, tuned, out, dim, conv_dim, save_precision, clamp_quantile)
    cpu = torch.device("cpu")
    base_models = load_models(base, cpu, model_config=model_config, allow_pickle=allow_pickle)
    tuned_models = load_models(tuned, cpu, model_config=model_config, allow_pickle=allow_pickle)
    diffs, layers = _differences(base_models, tuned_models, conv_dim, min_diff, result)
    del tuned_models
    if not diffs:
        raise CurateError(f"{tuned}: no layer differs from {base}; there is nothing to extract")
    tensors: dict[str, torch.Tensor] = {}
    with torch.no_grad():
        for name in list(diffs):
            diff = diffs.pop(name).to(device)
            pointwise = diff.dim() == 2 or diff.shape[2:] == (1, 1)
            want = dim if pointwise or conv_dim is None else conv_dim
            up, down, energy, error = factorise(diff, want, clamp_quantile)
            rank = up.shape[1]
            result.layers.append(LayerExtract(name, tuple(diff.shape), rank, energy, error,
                                              float(torch.linalg.vector_norm(diff)), float(diff.abs().max())))
            # alpha = dim everywhere: (dim / rank) up @ down must be dW, so up carries rank / dim
            up = up * (rank / dim)
            kernel = diff.shape[2:]
            tensors |= {
                f"{name}.lora_down.weight": down.reshape(rank, *diff.shape[1:]).to("cpu", dtype).contiguous(),
                f"{name}.lora_up.weight": up.reshape(diff.shape[0], rank, *((1, 1) if kernel else ()))
                .to("cpu", dtype).contiguous(),
                f"{name}.alpha": torch.tensor(float(dim), dtype=dtype),
            }
    result.markers = _diffusers_markers(tensors, layers, float(dim), dtype)
    save_network(out, tensors, _metadata(base, tuned, out, base_models, dim, conv_dim))
    return result


def describe(result: ExtractResult) -> str:
    """One line for people."""
    ranks = sorted({x.rank for x in result.layers})
    te = "text encoder left out (unchanged)" if result.text_encoder_skipped else "UNet and text encoder"
    span = f"{ranks[0]}" if len(ranks) == 1 else f"{ranks[0]}-{ranks[-1]}"
    return (f"{len(result.layers)} layers at rank {span}, {te}; energy kept {result.energy:.2%}, "
            f"worst layer error {max(x.error for x in result.layers):.2%}")
