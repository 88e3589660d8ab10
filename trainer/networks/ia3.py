"""iA3 (LyCORIS layout, as A1111's `network_ia3.py` loads it), implemented here because LyCORIS
3.x/4.x can neither train nor reload it correctly (REFERENCE §6).

Each adapted layer learns one vector `weight`, zero-initialised, and stores `on_input` (0/1):
- on_input = 0: weight has the layer's output size and W' = diag(1 + m*w) W; the bias is not
  scaled, so y = (1 + m*w) * (W x) + b;
- on_input = 1: weight has the input size and W' = W diag(1 + m*w), i.e. the input is scaled.
Targets, the LyCORIS preset: UNet attention `to_k`, `to_v` and the feed-forward `ff.net.2`
(on the input); text encoder `k_proj`, `v_proj` and `mlp.fc2` (on the input). Keys are kohya
names + `.weight` / `.on_input`; there is no alpha.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from curate.trainer.networks.base import (
    TE_BLOCKS,
    UNET_BLOCKS,
    UNET_PREFIX,
    AdapterModule,
    AdapterNetwork,
    find_targets,
    layer_dims,
    te_prefixes,
    te_root_path,
)

UNET_TARGETS = ("to_k", "to_v", "ff.net.2")
TE_TARGETS = ("k_proj", "v_proj", "fc2")
ON_INPUT = ("ff.net.2", "fc2")  # the feed-forward output layers learn an input-side scale


@dataclass(frozen=True)
class IA3Config:
    train_on_input: bool = True  # the LyCORIS preset's feed-forward choice; False scales outputs everywhere
    train_unet: bool = True
    train_text_encoder: bool = True

    def __post_init__(self) -> None:
        if not (self.train_unet or self.train_text_encoder):
            raise ValueError("nothing to train: enable the UNet, the text encoder or both")


def _wanted(names: tuple[str, ...]) -> Any:
    return lambda child_name, layer: isinstance(layer, nn.Linear) and child_name.endswith(names)


class IA3Module(AdapterModule):
    def __init__(self, name: str, layer: nn.Module, on_input: bool) -> None:
        super().__init__(name, layer)
        in_dim, out_dim = layer_dims(layer)
        device = next(layer.parameters()).device
        self.weight = nn.Parameter(torch.zeros(in_dim if on_input else out_dim, device=device))
        self.register_buffer("on_input", torch.tensor(int(on_input), device=device))
        self._pre_handle: Any = None
        self.input_side = on_input  # a Python bool: no device sync in the forward pass

    def attach(self) -> None:
        if not self.input_side:
            super().attach()
        elif self._pre_handle is None:
            self._pre_handle = self.layer.register_forward_pre_hook(self._on_input)

    def detach(self) -> None:
        super().detach()
        if self._pre_handle is not None:
            self._pre_handle.remove()
            self._pre_handle = None

    def _on_input(self, layer: nn.Module, inputs: tuple[Any, ...]) -> tuple[Any, ...]:
        x = inputs[0]
        return (x * (1 + self.multiplier * self.weight).to(x.dtype), *inputs[1:])

    def adapt(self, layer: nn.Module, inputs: tuple[Any, ...], output: torch.Tensor) -> torch.Tensor:
        bias = getattr(layer, "bias", None)
        wx = output if bias is None else output - bias
        return output + wx * (self.multiplier * self.weight).to(output.dtype)

    def scaled_weight(self, base: torch.Tensor) -> torch.Tensor:
        """A1111's merge: W * (1 + m*w), broadcast over the input (on_input) or output axis."""
        w = self.multiplier * self.weight.to(base.dtype)
        scale = 1 + (w if self.input_side else w.reshape(-1, *([1] * (base.dim() - 1))))
        return base * scale


class IA3Network(AdapterNetwork):
    module_name = "lycoris.kohya"

    def __init__(self, unet: nn.Module | None, text_encoders: Sequence[nn.Module], config: IA3Config) -> None:
        self.config = config
        unet_modules: list[AdapterModule] = []
        te_modules: list[AdapterModule] = []
        if unet is not None and config.train_unet:
            unet_modules = self._make(find_targets(unet, UNET_PREFIX, UNET_BLOCKS, _wanted(UNET_TARGETS)))
        if config.train_text_encoder:
            for prefix, encoder in zip(te_prefixes(len(text_encoders)), text_encoders, strict=True):
                targets = find_targets(encoder, prefix, TE_BLOCKS, _wanted(TE_TARGETS), te_root_path(encoder))
                te_modules += self._make(targets)
        super().__init__(unet_modules, te_modules)

    def _make(self, targets: dict[str, nn.Module]) -> list[AdapterModule]:
        suffixes = tuple(s.replace(".", "_") for s in ON_INPUT)
        return [IA3Module(name, layer, self.config.train_on_input and name.endswith(suffixes))
                for name, layer in targets.items()]

    def metadata(self) -> dict[str, str]:
        # what a LyCORIS run through sd-scripts records (network_dim/alpha are unused by iA3)
        args = {"algo": "ia3", "train_on_input": str(self.config.train_on_input)}
        return {"ss_network_module": self.module_name, "ss_network_dim": "None",
                "ss_network_alpha": "None", "ss_network_args": json.dumps(args)}
