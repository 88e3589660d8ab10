"""LoHa (LyCORIS `algo=loha`): a low-rank Hadamard product update, as lycoris/modules/loha.py trains it.

dW = (alpha / dim) * (w1_a @ w1_b) * (w2_a @ w2_b)   (element-wise product of two rank-dim
products), reshaped to the layer's weight: w1_a, w2_a are [out, dim], w1_b, w2_b [dim, in*kh*kw]
(a conv is flattened, LyCORIS' default without Tucker). Initialisation as LyCORIS': w1_b and
w2_b normal(std 1), w1_a normal(std 0.1), w2_a zeros, so dW starts at 0. Keys: `hada_w1_a`,
`hada_w1_b`, `hada_w2_a`, `hada_w2_b`, `alpha` (REFERENCE §7); a file LyCORIS trained with
`use_tucker` also has `hada_t1` / `hada_t2` [dim, dim, kh, kw] and w*_a / w*_b as [dim, out] /
[dim, in], which `loha_diff` reads too (`curate lora merge`).
"""

from __future__ import annotations

import torch
from torch import nn

from curate.trainer.networks.lycoris import LycorisConfig, LycorisModule, LycorisNetwork


def loha_diff(w1_a: torch.Tensor, w1_b: torch.Tensor, w2_a: torch.Tensor, w2_b: torch.Tensor,
              scale: float, shape: tuple[int, ...], t1: torch.Tensor | None = None,
              t2: torch.Tensor | None = None) -> torch.Tensor:
    """dW of a LoHa module, shaped `shape` (lycoris.functional.loha.diff_weight's maths)."""
    if t1 is not None and t2 is not None:
        # Tucker: each half is t contracted with its in (b) and out (a) factors, [out, in, kh, kw]
        first = torch.einsum("ij...,jr,ip->pr...", t1, w1_b, w1_a)
        second = torch.einsum("ij...,jr,ip->pr...", t2, w2_b, w2_a)
        return (first * second * scale).reshape(shape)
    first = w1_a.reshape(w1_a.shape[0], -1) @ w1_b.reshape(w1_b.shape[0], -1)
    second = w2_a.reshape(w2_a.shape[0], -1) @ w2_b.reshape(w2_b.shape[0], -1)
    return (first * second * scale).reshape(shape)


class LoHaModule(LycorisModule):
    def __init__(self, name: str, layer: nn.Module, dim: int, alpha: float | None,
                 config: LycorisConfig) -> None:
        super().__init__(name, layer, dim, alpha, config)
        out_dim, flat_in = self.weight_shape[0], int(torch.Size(self.weight_shape[1:]).numel())
        # registration order as LyCORIS': w1_a, w1_b, w2_a, w2_b, then alpha
        self.hada_w1_a = nn.Parameter(torch.empty(out_dim, dim, device=self.device))
        self.hada_w1_b = nn.Parameter(torch.empty(dim, flat_in, device=self.device))
        self.hada_w2_a = nn.Parameter(torch.empty(out_dim, dim, device=self.device))
        self.hada_w2_b = nn.Parameter(torch.empty(dim, flat_in, device=self.device))
        self.register_alpha(self.alpha_value)
        nn.init.normal_(self.hada_w1_b, std=1)
        nn.init.normal_(self.hada_w1_a, std=0.1)
        nn.init.normal_(self.hada_w2_b, std=1)
        nn.init.zeros_(self.hada_w2_a)

    def diff_weight(self) -> torch.Tensor:
        return loha_diff(self.hada_w1_a, self.hada_w1_b, self.hada_w2_a, self.hada_w2_b, self.scale,
                         self.weight_shape)


class LoHaNetwork(LycorisNetwork):
    algo = "loha"
    module_class = LoHaModule
