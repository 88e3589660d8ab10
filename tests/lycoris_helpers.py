"""What the LoHa / LoKr tests need to run LyCORIS itself (PyPI lycoris-lora) on the tiny SD model."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from torch import nn


class TextModel(nn.Module):
    """A CLIPTextModel under `text_model`, as transformers 4 (and so sd-scripts) nests it: LyCORIS
    names text-encoder layers from the module it is handed, and transformers 5's CLIPTextModel no
    longer has that level, which kohya names (`lora_te_text_model_encoder_...`) count from."""

    def __init__(self, encoder: nn.Module) -> None:
        super().__init__()
        self.text_model = encoder

    def forward(self, ids: torch.Tensor) -> Any:
        return self.text_model(ids)


def sd_full_preset(monkeypatch: pytest.MonkeyPatch) -> None:
    """LyCORIS' default preset "full", less the class TimestepEmbedding that 4.1.3 added for Anima:
    on an SD UNet that class holds exactly the time_embedding.linear_1/2 the preset also names,
    so LyCORIS 4.1.3 adapts them twice and stops on "duplicated lora name" (in create_network and
    in create_network_from_weights alike, which reads the class's current targets). The module
    set is the same without the class. Both the preset and the class attribute are patched back
    by monkeypatch."""
    import lycoris.kohya as kohya

    full = dict(kohya.PRESET["full"])
    full["unet_target_module"] = [m for m in full["unet_target_module"] if m != "TimestepEmbedding"]
    monkeypatch.setitem(kohya.PRESET, "full", full)
    network = kohya.LycorisNetworkKohya
    # apply_preset sets these class attributes for good: monkeypatch restores them after the test
    for attribute in ("UNET_TARGET_REPLACE_NAME", "TEXT_ENCODER_TARGET_REPLACE_MODULE",
                      "TEXT_ENCODER_TARGET_REPLACE_NAME", "ENABLE_CONV"):
        monkeypatch.setattr(network, attribute, getattr(network, attribute))
    monkeypatch.setattr(network, "UNET_TARGET_REPLACE_MODULE", full["unet_target_module"])


def randomise(net: nn.Module, seed: int = 1, std: float = 0.2) -> None:
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in net.parameters():
            param.copy_(torch.randn(param.shape, generator=gen) * std)
