"""What LoHa and LoKr share: LyCORIS' kohya wrapper's targets, its dim/alpha rules, the dense update.

Both learn a dense update dW of each adapted layer's weight, built from a few small factors
(`loha.py`, `lokr.py`), and run the layer as y = W x + m * dW x, i.e. the layer's own op
(F.linear, or F.conv2d with its stride/padding) on the input with dW as weight: LyCORIS'
non-bypass forward (lycoris/modules/loha.py, lokr.py, 4.1.3), so what is trained is what a
merge bakes in.

Targets are those of LyCORIS' kohya wrapper (`lycoris.kohya.create_network`) with its default
preset "full", as sd-scripts runs it (`--network_module lycoris.kohya --network_args algo=loha`):
every Linear and Conv2d inside the UNet's Transformer2DModel, ResnetBlock2D, Downsample2D and
Upsample2D blocks and the text encoder's CLIPAttention / CLIPMLP, plus the UNet's `conv_in`,
`conv_out` and `time_embedding.linear_1/2` by name. sd-scripts' SDXL UNet has no modules of
those four names (it says input_blocks.0.0, out.2, time_embed.0/2), so under sd-scripts LyCORIS
adapts them on SD 1.x/2.x only, and so does this. Linear and 1x1 layers get dim / alpha,
larger kernels conv_dim / conv_alpha; LyCORIS reads an unset conv_dim as dim and an unset
conv_alpha as alpha, so a 3x3 conv is always adapted (its preset "full" enables conv), and an
alpha of 0 or unset as the layer's dim (scale 1). The scale is alpha / dim.

Metadata is what sd-scripts records for such a run: ss_network_module "lycoris.kohya" and the
network_args it was given (as strings) in ss_network_args, with `algo`.
"""

from __future__ import annotations

import json
from abc import abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import nn
from torch.nn import functional as F

from curate.trainer.networks.base import (
    TE_BLOCKS,
    UNET_BLOCKS,
    UNET_CONV_BLOCKS,
    UNET_PREFIX,
    AdapterModule,
    AdapterNetwork,
    find_targets,
    is_1x1,
    is_sdxl_unet,
    kohya_name,
    te_prefixes,
    te_root_path,
)

# the UNet layers LyCORIS' preset "full" adapts by name (lycoris/config.py FULL_UNET_NAMES)
UNET_NAMED = ("conv_in", "conv_out", "time_embedding.linear_1", "time_embedding.linear_2")


@dataclass(frozen=True)
class LycorisConfig:
    dim: int = 8
    alpha: float = 1.0
    conv_dim: int | None = None  # unset: dim, as LyCORIS' kohya wrapper reads it
    conv_alpha: float | None = None  # unset: alpha
    rank_dropout: float | None = None  # drop output rows of dW while training, as LyCORIS does
    module_dropout: float | None = None
    train_unet: bool = True
    train_text_encoder: bool = True

    def __post_init__(self) -> None:
        if self.dim < 1 or (self.conv_dim is not None and self.conv_dim < 1):
            raise ValueError("network dim and conv_dim must be at least 1")
        if not (self.train_unet or self.train_text_encoder):
            raise ValueError("nothing to train: enable the UNet, the text encoder or both")
        for name in ("rank_dropout", "module_dropout"):
            value = getattr(self, name)
            if value is not None and not 0 <= value < 1:
                raise ValueError(f"{name} = {value}: must be in [0, 1)")


def layer_op(layer: nn.Module, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """The layer's own operation with another weight and no bias."""
    if isinstance(layer, nn.Conv2d):
        return F.conv2d(x, weight, None, layer.stride, layer.padding, layer.dilation, layer.groups)
    return F.linear(x, weight)


class LycorisModule(AdapterModule):
    """One adapted layer; subclasses build `diff_weight()`, the unscaled-by-multiplier dW."""

    def __init__(self, name: str, layer: nn.Module, dim: int, alpha: float | None,
                 config: LycorisConfig) -> None:
        super().__init__(name, layer)
        self.dim = dim
        self.weight_shape = tuple(layer.weight.shape)
        self.device = next(layer.parameters()).device
        self.rank_dropout = config.rank_dropout
        self.module_dropout = config.module_dropout
        # LyCORIS: alpha 0 or unset means alpha = dim (scale 1)
        self.alpha_value = float(dim) if not alpha else float(alpha)

    def register_alpha(self, alpha: float) -> None:
        self.alpha_value = alpha
        self.register_buffer("alpha", torch.tensor(alpha, device=self.device))

    @property
    def scale(self) -> float:
        return self.alpha_value / self.dim

    @abstractmethod
    def diff_weight(self) -> torch.Tensor:
        """dW = scale * (the factors' product), shaped like the base layer's weight."""

    def adapt(self, layer: nn.Module, inputs: tuple[Any, ...], output: torch.Tensor) -> torch.Tensor:
        if self.training and self.module_dropout and torch.rand(()) < self.module_dropout:
            return output
        weight = self.diff_weight()
        if self.training and self.rank_dropout:
            # LyCORIS drops whole output rows of dW, without rescaling (rank_dropout_scale False)
            keep = torch.rand(weight.shape[0], device=weight.device) > self.rank_dropout
            weight = weight * keep.to(weight.dtype).view(-1, *[1] * (weight.dim() - 1))
        x = inputs[0].to(weight.dtype)
        return output + (layer_op(layer, x, weight) * self.multiplier).to(output.dtype)


class LycorisNetwork(AdapterNetwork):
    """LoHa / LoKr over the layers LyCORIS' kohya wrapper adapts (this module's docstring)."""

    module_name = "lycoris.kohya"
    algo: ClassVar[str]
    module_class: ClassVar[type[LycorisModule]]

    def __init__(self, unet: nn.Module | None, text_encoders: Sequence[nn.Module],
                 config: LycorisConfig) -> None:
        self.config = config
        unet_modules = self._make(unet_targets(unet)) if unet is not None and config.train_unet else []
        te_modules: list[AdapterModule] = []
        if config.train_text_encoder:
            for prefix, encoder in zip(te_prefixes(len(text_encoders)), text_encoders, strict=True):
                targets = find_targets(encoder, prefix, TE_BLOCKS, lambda _n, _layer: True,
                                       te_root_path(encoder))
                te_modules += self._make(targets)
        super().__init__(unet_modules, te_modules)

    def _make(self, targets: dict[str, nn.Module]) -> list[AdapterModule]:
        c = self.config
        modules: list[AdapterModule] = []
        for name, layer in targets.items():
            if is_1x1(layer):
                modules.append(self.module_class(name, layer, c.dim, c.alpha, c))
            else:
                conv_alpha = c.conv_alpha if c.conv_alpha is not None else c.alpha
                modules.append(self.module_class(name, layer, c.conv_dim or c.dim, conv_alpha, c))
        return modules

    def network_args(self) -> dict[str, str]:
        """The --network_args an sd-scripts run with LyCORIS would be given for this network."""
        c = self.config
        conv_alpha = c.conv_alpha if c.conv_alpha is not None else c.alpha
        args = {"algo": self.algo, "conv_dim": str(c.conv_dim or c.dim), "conv_alpha": str(conv_alpha)}
        for name in ("rank_dropout", "module_dropout"):
            if getattr(c, name) is not None:
                args[name] = str(getattr(c, name))
        return args

    def metadata(self) -> dict[str, str]:
        c = self.config
        return {"ss_network_module": self.module_name, "ss_network_dim": str(c.dim),
                "ss_network_alpha": str(c.alpha or float(c.dim)), "ss_network_dropout": "None",
                "ss_network_args": json.dumps(self.network_args())}


def unet_targets(unet: nn.Module) -> dict[str, nn.Module]:
    """kohya name -> layer of every UNet layer LyCORIS' preset "full" adapts (this module's docstring)."""
    targets = find_targets(unet, UNET_PREFIX, UNET_BLOCKS + UNET_CONV_BLOCKS, lambda _n, _layer: True)
    if not is_sdxl_unet(unet):
        for path in UNET_NAMED:
            try:
                layer = unet.get_submodule(path)
            except AttributeError:  # a UNet without it: LyCORIS' name match finds nothing either
                continue
            if isinstance(layer, nn.Linear | nn.Conv2d):
                targets.setdefault(kohya_name(UNET_PREFIX, path), layer)
    return targets
