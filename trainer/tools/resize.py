"""Lowering a LoRA's rank by SVD: `resize_lora(path, out, new_dim, ...) -> ResizeResult`.

Per module the change the file makes is dW = (alpha/r) up @ down (a conv's down flattened to
r x in*kh*kw; its up is always 1x1). Its best rank-k approximation in the Frobenius norm is the
SVD truncated to the k largest singular values (Eckart-Young), so the relative error is
sqrt(sum_{i>k} s_i^2) / ||dW||_F and the energy kept sum_{i<=k} s_i^2 / ||dW||_F^2. dW has rank
at most r, so it is never formed: with up = Qu Ru and down^T = Qd Rd (thin QR), dW's SVD is
that of the r x r matrix Ru Rd^T, turned back by Qu and Qd (float64, so resizing to the same
rank returns the same dW to float precision).

The new rank is `new_dim` (3x3 convs: `conv_dim`, default new_dim), or with `dynamic` the
smallest rank that meets the target, capped at new_dim: `sv_ratio` X keeps the singular values
>= s_max / X; `sv_fro` X the fewest whose root-sum-square reaches X of ||dW||_F; `sv_cumulative`
X the fewest whose sum reaches X of sum(s). (sd-scripts' resize_lora.py keeps one value more
than the smallest such rank in all three; ours is the rank that meets the target.) A rank is
never raised: a module already at or below the target keeps its rank, losslessly.

Alpha: like sd-scripts, the file keeps its alpha/rank ratio (alpha = ratio * new_dim), so the
learning-rate scale a user or trainer read off the old file still holds. Unlike sd-scripts,
every module gets that one alpha, also with dynamic ranks: the factor (ratio_module * k) / alpha
goes into up instead (1 for every module of a plain resize of a uniform file). diffusers 0.42
ignores per-module alphas on kohya UNet attention keys (see trainer/export.py), so only one
alpha is read the same by every loader. Metadata is kept, except the network fields this
changes: ss_network_dim (new_dim, or "Dynamic" as sd-scripts writes), ss_network_alpha,
conv_dim/conv_alpha in ss_network_args, the hashes; ss_training_comment says what was done.
"""

from __future__ import annotations

import json
import math
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from curate.errors import CurateError
from curate.trainer.formats import load_network, save_dtype, save_network
from curate.trainer.tools.info import lora_info

DYNAMIC_METHODS = ("sv_ratio", "sv_fro", "sv_cumulative")
ZERO_SV = 1e-12  # a largest singular value below this is a module that changes nothing


@dataclass
class LayerResize:
    name: str
    conv: bool  # a conv with a kernel above 1x1 (resized to conv_dim)
    old_rank: int
    new_rank: int
    energy: float  # fraction of ||dW||_F^2 kept
    error: float  # ||dW - dW_new||_F / ||dW||_F
    norm: float  # ||dW||_F


@dataclass
class ResizeResult:
    source: Path
    output: Path
    new_dim: int
    conv_dim: int
    dynamic: str | None
    param: float | None
    precision: str
    alpha: float
    layers: list[LayerResize] = field(default_factory=list)

    @property
    def energy(self) -> float:
        """Energy kept over the whole file (modules weighted by their ||dW||_F^2)."""
        total = sum(x.norm ** 2 for x in self.layers)
        return sum(x.energy * x.norm ** 2 for x in self.layers) / total if total else 1.0

    @property
    def max_error(self) -> float:
        return max((x.error for x in self.layers), default=0.0)

    def as_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data |= {"source": str(self.source), "output": str(self.output), "energy": self.energy,
                 "max_error": self.max_error,
                 "ranks": dict(sorted(Counter(x.new_rank for x in self.layers).items()))}
        return data


def low_rank_svd(up: torch.Tensor, down: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(U, S, Vh) of up @ down (out x r times r x n) without forming it: thin SVD, float64."""
    qu, ru = torch.linalg.qr(up.double())
    qd, rd = torch.linalg.qr(down.double().T)
    a, s, bh = torch.linalg.svd(ru @ rd.T, full_matrices=False)
    return qu @ a, s, bh @ qd.T


def pick_rank(s: torch.Tensor, cap: int, dynamic: str | None, param: float | None) -> int:
    """The new rank for singular values `s` (descending), as the module docstring defines it."""
    if float(s[0]) <= ZERO_SV:
        return 1
    if dynamic is None:
        return max(1, min(cap, len(s)))
    assert param is not None
    eps = 1e-12  # a target met exactly must not miss by a rounding step
    if dynamic == "sv_ratio":
        k = int((s >= s[0] / param - eps).sum())
    else:
        values = s.pow(2) if dynamic == "sv_fro" else s
        target = param ** 2 if dynamic == "sv_fro" else param
        reached = torch.cumsum(values, 0) / values.sum() >= target - eps
        k = int(torch.nonzero(reached)[0]) + 1 if bool(reached.any()) else len(s)
    return max(1, min(cap, k))


def check_options(new_dim: int, conv_dim: int | None, dynamic: str | None, param: float | None) -> None:
    if new_dim < 1 or (conv_dim is not None and conv_dim < 1):
        raise CurateError(f"--dim {new_dim} / --conv-dim {conv_dim}: ranks must be at least 1")
    if dynamic is None:
        if param is not None:
            raise CurateError("--param needs --dynamic sv_ratio|sv_fro|sv_cumulative")
        return
    if dynamic not in DYNAMIC_METHODS:
        raise CurateError(f"--dynamic {dynamic}: choose one of {', '.join(DYNAMIC_METHODS)}")
    if param is None:
        raise CurateError(f"--dynamic {dynamic} needs --param (e.g. 0.9 for sv_fro, 10 for sv_ratio)")
    if dynamic == "sv_ratio" and param < 1:
        raise CurateError(f"--param {param}: sv_ratio is s_max / s_min to keep, at least 1")
    if dynamic != "sv_ratio" and not 0 < param <= 1:
        raise CurateError(f"--param {param}: {dynamic} is a fraction in (0, 1]")


Modules = dict[str, tuple[torch.Tensor, torch.Tensor, float]]  # name -> (up, down, alpha)


def read_lora(path: Path) -> tuple[Modules, dict[str, str], torch.dtype]:
    """name -> (up, down, alpha) of a kohya LoRA / LoCon file, its metadata and its weights' dtype."""
    kind = lora_info(path).kind
    if kind not in ("LoRA", "LoCon"):
        raise CurateError(f"{path}: a {kind} file; resize works on kohya LoRA / LoCon files "
                          "(lora_down / lora_up / alpha keys)")
    tensors, metadata = load_network(path)
    modules: Modules = {}
    for key in sorted(tensors):
        if not key.endswith(".lora_down.weight"):
            continue
        name = key.removesuffix(".lora_down.weight")
        down, up = tensors[key], tensors.get(f"{name}.lora_up.weight")
        if up is None:
            raise CurateError(f"{path}: {name} has a lora_down but no lora_up; the file is damaged")
        alpha = tensors.get(f"{name}.alpha")
        rank = down.shape[0]
        # sd-scripts: no alpha (or 0) means alpha = rank
        modules[name] = (up, down, float(alpha) if alpha is not None and float(alpha) else float(rank))
    if any(k.split(".")[0] not in modules for k in tensors):
        extra = next(k for k in tensors if k.split(".")[0] not in modules)
        raise CurateError(f"{path}: key {extra!r} is no LoRA triple; resize writes "
                          "lora_down/lora_up/alpha only")
    return modules, metadata, tensors[next(iter(tensors))].dtype


def _metadata(meta: dict[str, str], source: Path, result: ResizeResult,
              old_dims: list[int]) -> dict[str, str]:
    out = {k: v for k, v in meta.items() if not k.startswith("sshs_")}
    if result.dynamic:
        out["ss_network_dim"] = "Dynamic"
        what = f"dynamic resize with {result.dynamic} {result.param} (at most {result.new_dim})"
    else:
        out["ss_network_dim"] = str(result.new_dim)
        what = f"dimension is resized to {result.new_dim}"
    out["ss_network_alpha"] = str(result.alpha)
    comment = meta.get("ss_training_comment", "")
    old = f"{min(old_dims)}" if min(old_dims) == max(old_dims) else f"{min(old_dims)}-{max(old_dims)}"
    out["ss_training_comment"] = f"{what} from {old} by curate; {comment}".rstrip("; ")
    out["curate_resized_from"] = source.name
    if meta.get("ss_network_args"):
        try:
            args = json.loads(meta["ss_network_args"])
        except json.JSONDecodeError:
            args = None
        if isinstance(args, dict) and "conv_dim" in args:
            args |= {"conv_dim": str(result.conv_dim), "conv_alpha": str(result.alpha)}
            out["ss_network_args"] = json.dumps(args)
    return out


def _flat(up: torch.Tensor, down: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return up.reshape(up.shape[0], -1).float(), down.reshape(down.shape[0], -1).float()


def resize_lora(path: Path, out: Path, new_dim: int, *, conv_dim: int | None = None,
                dynamic: str | None = None, param: float | None = None,
                save_precision: str | None = None, device: str = "cpu") -> ResizeResult:
    """Write OUT, the LoRA at PATH with every module's rank lowered to new_dim by SVD."""
    check_options(new_dim, conv_dim, dynamic, param)
    if out.resolve() == path.resolve():
        raise CurateError(f"{out}: resizing would overwrite the source; choose another --out")
    modules, meta, source_dtype = read_lora(path)
    dtype = save_dtype(save_precision) if save_precision else source_dtype
    precision = save_precision or {torch.float16: "fp16", torch.bfloat16: "bf16"}.get(source_dtype, "float")
    ratios = Counter(alpha / down.shape[0] for _up, down, alpha in modules.values())
    ratio = max(ratios, key=lambda r: (ratios[r], r))  # the file's usual alpha/rank
    alpha = ratio * new_dim
    result = ResizeResult(path, out, new_dim, conv_dim or new_dim, dynamic, param, precision, alpha)
    tensors: dict[str, torch.Tensor] = {}
    with torch.no_grad():
        for name, (up, down, module_alpha) in modules.items():
            conv = down.dim() == 4 and down.shape[2:] != (1, 1)
            u, s, vh = low_rank_svd(*(t.to(device) for t in _flat(up, down)))
            rank = pick_rank(s, result.conv_dim if conv else new_dim, dynamic, param)
            rank = min(rank, down.shape[0], len(s))
            sq = s.pow(2)
            total = float(sq.sum())
            energy = float(sq[:rank].sum()) / total if total else 1.0
            scale = module_alpha / down.shape[0]
            result.layers.append(LayerResize(name, conv, down.shape[0], rank, energy,
                                             math.sqrt(max(0.0, 1.0 - energy)), scale * math.sqrt(total)))
            # up' @ down' * alpha / rank = scale * U_k S_k Vh_k: all of S on up, as sd-scripts
            new_up = u[:, :rank] * (s[:rank] * (scale * rank / alpha))
            new_down = vh[:rank].reshape(rank, *down.shape[1:])
            new_up = new_up.reshape(up.shape[0], rank, *up.shape[2:])
            tensors |= {f"{name}.lora_down.weight": new_down.to("cpu", dtype).contiguous(),
                        f"{name}.lora_up.weight": new_up.to("cpu", dtype).contiguous(),
                        f"{name}.alpha": torch.tensor(alpha, dtype=dtype)}
    old_dims = [x.old_rank for x in result.layers]
    save_network(out, tensors, _metadata(meta, path, result, old_dims))
    return result


def describe(result: ResizeResult) -> str:
    """One line for people."""
    ranks = sorted({x.new_rank for x in result.layers})
    span = f"{ranks[0]}" if len(ranks) == 1 else f"{ranks[0]}-{ranks[-1]}"
    return (f"{len(result.layers)} modules to rank {span} (alpha {result.alpha:g}); energy kept "
            f"{result.energy:.2%}, worst module error {result.max_error:.2%}")
