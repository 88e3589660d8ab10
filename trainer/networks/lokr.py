"""LoKr (LyCORIS `algo=lokr`): a Kronecker product update, as lycoris/modules/lokr.py trains it.

A layer's out and in sizes are each split in two, out = a*c and in = b*d, by `factorization`
(LyCORIS': the most square split with the smaller part at most `factor`; -1: no bound), and
dW = scale * kron(w1, w2) with w1 [a, b] and w2 [c, d(, kh, kw)], reshaped to the weight.
w1 is stored whole (`lokr_w1`; LyCORIS' decompose_both off). w2 is a rank-dim product
`lokr_w2_a` [c, dim] @ `lokr_w2_b` [dim, d*kh*kw] when dim < max(c, d) / 2, else whole
(`lokr_w2`, LyCORIS' "full matrix mode"); with both whole the scale is 1 and `alpha` stores
dim, as LyCORIS forces it; otherwise scale = alpha / dim. Initialisation as LyCORIS':
kaiming-uniform(a=sqrt(5)) w1 and w2_a, zeros w2_b (or a whole w2), so dW starts at 0.
`lokr_diff` also reads what LyCORIS writes with decompose_both (`lokr_w1_a/_b`) or Tucker
(`lokr_t2`), for `curate lora merge`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from curate.trainer.networks.lycoris import LycorisConfig, LycorisModule, LycorisNetwork


@dataclass(frozen=True)
class LoKrConfig(LycorisConfig):
    factor: int = -1  # the largest smaller part of each split; -1: the most square split

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.factor == 0 or self.factor < -1:
            raise ValueError(f"factor = {self.factor}: -1 (the most square split) or a positive number")


def factorization(dimension: int, factor: int = -1) -> tuple[int, int]:
    """(m, n) with m * n = dimension and m <= n: lycoris.functional.general.factorization, step for
    step (e.g. 320 -> (16, 20), 128 with factor 4 -> (4, 32), 127 -> (1, 127))."""
    if factor > 0 and dimension % factor == 0:
        m, n = factor, dimension // factor
        return (n, m) if m > n else (m, n)
    if factor < 0:
        factor = dimension
    m, n = 1, dimension
    length = m + n
    while m < n:
        new_m = m + 1
        while dimension % new_m != 0:
            new_m += 1
        new_n = dimension // new_m
        if new_m + new_n > length or new_m > factor:
            break
        m, n = new_m, new_n
    return (n, m) if m > n else (m, n)


def lokr_diff(w1: torch.Tensor, w2: torch.Tensor, scale: float, shape: tuple[int, ...]) -> torch.Tensor:
    """dW = scale * kron(w1, w2) shaped `shape`: w2 whole, flattened [c, d*kh*kw] or [c, d, kh, kw]
    (lycoris.functional.lokr's make_kron; a flat w2's kron reshapes to the 4-D one's)."""
    while w1.dim() < w2.dim():
        w1 = w1.unsqueeze(-1)
    return (torch.kron(w1, w2.contiguous()) * scale).reshape(shape)


def tucker_w2(t2: torch.Tensor, w2_a: torch.Tensor, w2_b: torch.Tensor) -> torch.Tensor:
    """A Tucker w2 [c, d, kh, kw] from lokr_t2 [dim, dim, kh, kw], w2_a [dim, c], w2_b [dim, d]."""
    return torch.einsum("ij...,ip,jr->pr...", t2, w2_a, w2_b)


class LoKrModule(LycorisModule):
    def __init__(self, name: str, layer: nn.Module, dim: int, alpha: float | None,
                 config: LycorisConfig) -> None:
        super().__init__(name, layer, dim, alpha, config)
        assert isinstance(config, LoKrConfig)
        out_dim, in_dim, *kernel = self.weight_shape
        in_m, in_n = factorization(in_dim, config.factor)
        out_l, out_k = factorization(out_dim, config.factor)
        kw = {"device": self.device}
        self.lokr_w1 = nn.Parameter(torch.empty(out_l, in_m, **kw))
        self.full_w2 = dim >= max(out_k, in_n) / 2
        if self.full_w2:
            self.lokr_w2 = nn.Parameter(torch.empty(out_k, in_n, *kernel, **kw))
            nn.init.zeros_(self.lokr_w2)
        else:
            self.lokr_w2_a = nn.Parameter(torch.empty(out_k, dim, **kw))
            self.lokr_w2_b = nn.Parameter(torch.empty(dim, in_n * math.prod(kernel), **kw))
            nn.init.kaiming_uniform_(self.lokr_w2_a, a=math.sqrt(5))
            nn.init.zeros_(self.lokr_w2_b)
        nn.init.kaiming_uniform_(self.lokr_w1, a=math.sqrt(5))
        # both halves whole: LyCORIS sets alpha = dim, so the scale is 1
        self.register_alpha(float(dim) if self.full_w2 else self.alpha_value)

    def w2(self) -> torch.Tensor:
        return self.lokr_w2 if self.full_w2 else self.lokr_w2_a @ self.lokr_w2_b

    def diff_weight(self) -> torch.Tensor:
        return lokr_diff(self.lokr_w1, self.w2(), self.scale, self.weight_shape)


class LoKrNetwork(LycorisNetwork):
    algo = "lokr"
    module_class = LoKrModule

    def network_args(self) -> dict[str, str]:
        args = super().network_args()
        assert isinstance(self.config, LoKrConfig)
        if self.config.factor != -1:
            args["factor"] = str(self.config.factor)
        return args
