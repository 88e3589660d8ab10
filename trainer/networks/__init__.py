"""Adapters trained on a frozen SD model, by name: `NETWORKS[name]` -> (config class, network class).

- `lora`: kohya LoRA / LoCon (`lora.LoRANetwork`), loaded by A1111, ComfyUI, diffusers, sd-scripts;
- `ia3`: iA3 in LyCORIS' layout (`ia3.IA3Network`), loaded by A1111;
- `loha`, `lokr`: LyCORIS' LoHa and LoKr (`loha.LoHaNetwork`, `lokr.LoKrNetwork`), with its key
  names, maths and targets, loaded by LyCORIS itself, A1111 and ComfyUI.
`create_network(name, unet, text_encoders, **options)` builds one; unknown names and options
raise with the valid ones listed.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

from torch import nn

from curate.trainer.networks.base import AdapterModule, AdapterNetwork
from curate.trainer.networks.ia3 import IA3Config, IA3Module, IA3Network
from curate.trainer.networks.loha import LoHaModule, LoHaNetwork
from curate.trainer.networks.lokr import LoKrConfig, LoKrModule, LoKrNetwork
from curate.trainer.networks.lora import LoRAConfig, LoRAModule, LoRANetwork
from curate.trainer.networks.lycoris import LycorisConfig, LycorisModule, LycorisNetwork

NETWORKS: dict[str, tuple[type, type[AdapterNetwork]]] = {
    "lora": (LoRAConfig, LoRANetwork),
    "ia3": (IA3Config, IA3Network),
    "loha": (LycorisConfig, LoHaNetwork),
    "lokr": (LoKrConfig, LoKrNetwork),
}


def create_network(name: str, unet: nn.Module | None, text_encoders: Sequence[nn.Module],
                   **options: Any) -> AdapterNetwork:
    try:
        config_cls, network_cls = NETWORKS[name]
    except KeyError:
        raise ValueError(f"unknown network {name!r}; choose one of {', '.join(NETWORKS)}") from None
    valid = {f.name for f in dataclasses.fields(config_cls)}
    unknown = sorted(set(options) - valid)
    if unknown:
        raise ValueError(f"{name} has no option(s) {', '.join(unknown)}; valid: {', '.join(sorted(valid))}")
    return network_cls(unet, text_encoders, config_cls(**options))  # type: ignore[call-arg]


__all__ = [
    "NETWORKS",
    "AdapterModule",
    "AdapterNetwork",
    "IA3Config",
    "IA3Module",
    "IA3Network",
    "LoHaModule",
    "LoHaNetwork",
    "LoKrConfig",
    "LoKrModule",
    "LoKrNetwork",
    "LoRAConfig",
    "LoRAModule",
    "LoRANetwork",
    "LycorisConfig",
    "LycorisModule",
    "LycorisNetwork",
    "create_network",
]
