"""kohya LoRA (LierLa) and, with a conv_dim, LoCon (C3Lier), as sd-scripts' networks/lora.py trains them.

Each adapted layer gets y = W x + m * (alpha / r) * up(down(x)): `lora_down` [r, in(, k, k)]
initialised kaiming-uniform(a=sqrt(5)), `lora_up` [out, r(, 1, 1)] zeros, `alpha` a 0-d
tensor (REFERENCE §5). Targets: every Linear and 1x1 Conv2d inside the UNet's
Transformer2DModel blocks and the text encoder's CLIPAttention / CLIPMLP (SD 1.5: 192 UNet and
72 text-encoder modules; SDXL: 722 UNet, 72 `lora_te1_` and 192 `lora_te2_`). With conv_dim,
every layer inside ResnetBlock2D, Downsample2D and Upsample2D joins too: 3x3 convs at conv_dim /
conv_alpha, their Linear and 1x1 layers (time_emb_proj, conv_shortcut) at network_dim, as
sd-scripts does. Unset alphas read as sd-scripts reads them: network_alpha and conv_alpha 1.0,
an alpha of 0 the layer's rank (scale 1).
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

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
    layer_dims,
    te_prefixes,
    te_root_path,
)


@dataclass(frozen=True)
class LoRAConfig:
    dim: int = 8
    alpha: float = 1.0
    dropout: float | None = None  # neuron dropout on the down projection's output
    rank_dropout: float | None = None
    module_dropout: float | None = None
    conv_dim: int | None = None  # LoCon: also adapt the ResNet / resampling 3x3 convs
    conv_alpha: float | None = None  # unset: 1.0, as sd-scripts' create_network reads it
    train_unet: bool = True
    train_text_encoder: bool = True

    @property
    def effective_conv_alpha(self) -> float:
        """sd-scripts' create_network: conv_alpha unset with a conv_dim is 1.0 (so a guide's
        `conv_dim = 8` alone trains at scale 1/8); 0 then means conv_dim, as for any alpha."""
        return 1.0 if self.conv_alpha is None else float(self.conv_alpha)

    def __post_init__(self) -> None:
        if self.dim < 1 or (self.conv_dim is not None and self.conv_dim < 1):
            raise ValueError("network dim and conv_dim must be at least 1")
        if not (self.train_unet or self.train_text_encoder):
            raise ValueError("nothing to train: enable the UNet, the text encoder or both")
        for name in ("dropout", "rank_dropout", "module_dropout"):
            value = getattr(self, name)
            if value is not None and not 0 <= value < 1:
                raise ValueError(f"{name} = {value}: must be in [0, 1)")


class LoRAModule(AdapterModule):
    def __init__(self, name: str, layer: nn.Module, rank: int, alpha: float | None,
                 config: LoRAConfig) -> None:
        super().__init__(name, layer)
        in_dim, out_dim = layer_dims(layer)
        self.lora_down: nn.Module
        self.lora_up: nn.Module
        device = next(layer.parameters()).device
        if isinstance(layer, nn.Conv2d):
            self.lora_down = nn.Conv2d(in_dim, rank, layer.kernel_size, layer.stride, layer.padding,
                                       bias=False, device=device)
            self.lora_up = nn.Conv2d(rank, out_dim, (1, 1), bias=False, device=device)
        else:
            self.lora_down = nn.Linear(in_dim, rank, bias=False, device=device)
            self.lora_up = nn.Linear(rank, out_dim, bias=False, device=device)
        nn.init.kaiming_uniform_(self.lora_down.weight, a=math.sqrt(5))
        nn.init.zeros_(self.lora_up.weight)
        # sd-scripts: alpha 0 or unset means alpha = rank (scale 1)
        alpha = float(rank) if not alpha else float(alpha)
        self.register_buffer("alpha", torch.tensor(alpha, device=device))
        self.rank = rank
        self.dropout = config.dropout
        self.rank_dropout = config.rank_dropout
        self.module_dropout = config.module_dropout

    @property
    def scale(self) -> float:
        return float(self.alpha) / self.rank

    def adapt(self, layer: nn.Module, inputs: tuple[Any, ...], output: torch.Tensor) -> torch.Tensor:
        if self.training and self.module_dropout and torch.rand(()) < self.module_dropout:
            return output
        x = inputs[0].to(self.lora_down.weight.dtype)
        lx = self.lora_down(x)
        if self.training and self.dropout:
            lx = F.dropout(lx, p=self.dropout)
        scale = self.scale
        if self.training and self.rank_dropout:
            # drop whole ranks per sample, rescaled so the expected update is unchanged
            shape = (lx.shape[0], self.rank, 1, 1) if lx.dim() == 4 else (*lx.shape[:-1], self.rank)
            lx = lx * (torch.rand(shape, device=lx.device) > self.rank_dropout).to(lx.dtype)
            scale /= 1.0 - self.rank_dropout
        return output + (self.lora_up(lx) * (self.multiplier * scale)).to(output.dtype)

    def delta_weight(self) -> torch.Tensor:
        """dW = up @ down * alpha / r, shaped like the base layer's weight."""
        down, up = self.lora_down.weight, self.lora_up.weight
        if down.dim() == 2:
            return up @ down * self.scale
        if down.shape[2:] == (1, 1):
            return (up.flatten(1) @ down.flatten(1)).reshape(up.shape[0], *down.shape[1:]) * self.scale
        return torch.einsum("or,rikl->oikl", up.flatten(1), down) * self.scale


class LoRANetwork(AdapterNetwork):
    module_name = "networks.lora"

    def __init__(self, unet: nn.Module | None, text_encoders: Sequence[nn.Module],
                 config: LoRAConfig) -> None:
        self.config = config
        unet_modules = self._unet_modules(unet) if unet is not None and config.train_unet else []
        te_modules: list[AdapterModule] = []
        if config.train_text_encoder:
            for prefix, encoder in zip(te_prefixes(len(text_encoders)), text_encoders, strict=True):
                targets = find_targets(encoder, prefix, TE_BLOCKS, lambda _n, layer: is_1x1(layer),
                                       te_root_path(encoder))
                te_modules += [LoRAModule(n, layer, config.dim, config.alpha, config)
                               for n, layer in targets.items()]
        super().__init__(unet_modules, te_modules)

    def _unet_modules(self, unet: nn.Module) -> list[AdapterModule]:
        c = self.config
        targets = find_targets(unet, UNET_PREFIX, UNET_BLOCKS, lambda _n, layer: is_1x1(layer))
        if c.conv_dim is not None:
            targets.update(find_targets(unet, UNET_PREFIX, UNET_CONV_BLOCKS, lambda _n, _layer: True))
        modules: list[AdapterModule] = []
        for name, layer in targets.items():
            if is_1x1(layer):
                modules.append(LoRAModule(name, layer, c.dim, c.alpha, c))
            else:
                modules.append(LoRAModule(name, layer, c.conv_dim or c.dim, c.effective_conv_alpha, c))
        return modules

    def metadata(self) -> dict[str, str]:
        c = self.config
        args: dict[str, str] = {}
        if c.conv_dim is not None:
            args |= {"conv_dim": str(c.conv_dim), "conv_alpha": str(c.effective_conv_alpha or c.conv_dim)}
        for name in ("rank_dropout", "module_dropout"):
            if getattr(c, name) is not None:
                args[name] = str(getattr(c, name))
        meta = {"ss_network_module": self.module_name, "ss_network_dim": str(c.dim),
                "ss_network_alpha": str(c.alpha or float(c.dim)),
                "ss_network_dropout": str(c.dropout)}
        if args:
            meta["ss_network_args"] = json.dumps(args)
        return meta

    def scale_weight_norms(self, max_norm: float) -> tuple[int, float]:
        """sd-scripts' max-norm regularisation (REFERENCE §7); returns (modules scaled, mean norm)."""
        scaled, norms = 0, []
        with torch.no_grad():
            for module in self.adapters():
                assert isinstance(module, LoRAModule)
                norm = module.delta_weight().norm().clamp(min=max_norm / 2)
                ratio = torch.clamp(norm, max=max_norm) / norm
                sqrt_ratio = ratio.sqrt()
                module.lora_up.weight.mul_(sqrt_ratio)
                module.lora_down.weight.mul_(sqrt_ratio)
                scaled += int(ratio.item() < 1.0)
                norms.append(float(norm * ratio))
        return scaled, sum(norms) / max(len(norms), 1)
