"""What LoRA and iA3 share: finding the modules to adapt, kohya names, hooks, saving.

An adapter never replaces a module of the base model: it hangs a forward hook on it (and a
pre-hook for input-side iA3), so `remove()` gives the untouched model back and the base
weights never enter the adapter's state dict. The network is an `nn.Module` whose children
are named by their kohya module names (`lora_unet_..._attn1_to_q`), so `state_dict()` already
has the keys A1111, ComfyUI, diffusers and sd-scripts load (REFERENCE §5).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Sequence
from typing import Any, ClassVar

import torch
from torch import nn

# sd-scripts' target blocks: adapt the Linear / Conv2d layers inside modules of these classes
UNET_BLOCKS = ("Transformer2DModel",)
UNET_CONV_BLOCKS = ("ResnetBlock2D", "Downsample2D", "Upsample2D")
TE_BLOCKS = ("CLIPAttention", "CLIPSdpaAttention", "CLIPFlashAttention2", "CLIPMLP")
UNET_PREFIX = "lora_unet"


def te_prefixes(count: int) -> list[str]:
    """`lora_te` for SD1/2's single text encoder, `lora_te1` / `lora_te2` for SDXL's pair."""
    return ["lora_te"] if count == 1 else [f"lora_te{i + 1}" for i in range(count)]


def kohya_name(prefix: str, *parts: str) -> str:
    return ".".join((prefix, *parts)).replace(".", "_")


def te_root_path(encoder: nn.Module) -> str:
    """kohya names count from the CLIP wrapper (`text_model.encoder...`), which transformers 5's
    CLIPTextModel no longer has: its layers sit at `encoder...` directly."""
    return "" if hasattr(encoder, "text_model") else "text_model"


def find_targets(root: nn.Module, prefix: str, blocks: Sequence[str],
                 accept: Callable[[str, nn.Module], bool], root_path: str = "") -> dict[str, nn.Module]:
    """kohya name -> layer, for every layer inside a `blocks` module that `accept(child_name, layer)`."""
    found: dict[str, nn.Module] = {}
    for block_name, block in root.named_modules():
        if type(block).__name__ not in blocks:
            continue
        path = [root_path, block_name] if root_path else [block_name]
        for child_name, child in block.named_modules():
            if child_name and isinstance(child, nn.Linear | nn.Conv2d) and accept(child_name, child):
                found.setdefault(kohya_name(prefix, *path, child_name), child)
    return found


def layer_dims(layer: nn.Module) -> tuple[int, int]:
    """(in, out) features or channels of a Linear or Conv2d."""
    if isinstance(layer, nn.Linear):
        return layer.in_features, layer.out_features
    assert isinstance(layer, nn.Conv2d)
    return layer.in_channels, layer.out_channels


def is_1x1(layer: nn.Module) -> bool:
    return isinstance(layer, nn.Linear) or (isinstance(layer, nn.Conv2d) and layer.kernel_size == (1, 1))


class AdapterModule(nn.Module, ABC):
    """One adapted layer. Subclasses implement `adapt(layer, inputs, output) -> output`."""

    def __init__(self, name: str, layer: nn.Module, multiplier: float = 1.0) -> None:
        super().__init__()
        self.kohya_name = name
        self.multiplier = multiplier
        # a list, not an attribute: the base layer must stay out of this module's state dict
        self._layer = [layer]
        self._handles: list[Any] = []

    @property
    def layer(self) -> nn.Module:
        return self._layer[0]

    def attach(self) -> None:
        if not self._handles:
            self._handles.append(self.layer.register_forward_hook(self._on_output))

    def detach(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    def _on_output(self, layer: nn.Module, inputs: tuple[Any, ...], output: torch.Tensor) -> torch.Tensor:
        return self.adapt(layer, inputs, output)

    @abstractmethod
    def adapt(self, layer: nn.Module, inputs: tuple[Any, ...], output: torch.Tensor) -> torch.Tensor:
        """The adapted layer's output, given the base layer's `output` for `inputs`."""


class AdapterNetwork(nn.Module, ABC):
    """The adapters of a UNet and its text encoder(s), in kohya key order."""

    module_name: ClassVar[str]  # ss_network_module

    def __init__(self, unet_modules: Iterable[AdapterModule], te_modules: Iterable[AdapterModule]) -> None:
        super().__init__()
        self.unet_names: list[str] = []
        self.te_names: list[str] = []
        for names, modules in ((self.unet_names, unet_modules), (self.te_names, te_modules)):
            for module in modules:
                if module.kohya_name in self._modules:
                    raise ValueError(f"two layers map to the kohya name {module.kohya_name}")
                self.add_module(module.kohya_name, module)
                names.append(module.kohya_name)

    def adapters(self) -> list[AdapterModule]:
        return [m for m in self.children() if isinstance(m, AdapterModule)]

    def apply_to(self) -> None:
        """Hook every adapter into its layer (idempotent)."""
        for module in self.adapters():
            module.attach()

    def remove(self) -> None:
        for module in self.adapters():
            module.detach()

    def set_multiplier(self, multiplier: float) -> None:
        for module in self.adapters():
            module.multiplier = multiplier

    def param_groups(self, unet_lr: float | None, te_lr: float | None) -> list[dict[str, Any]]:
        """Optimizer groups: UNet and text-encoder adapters, each with its own learning rate."""
        groups = []
        for names, lr in ((self.unet_names, unet_lr), (self.te_names, te_lr)):
            params = [p for name in names for p in self.get_submodule(name).parameters()]
            if params:
                groups.append({"params": params, **({} if lr is None else {"lr": lr})})
        return groups

    def kohya_state_dict(self, dtype: torch.dtype | None = None) -> dict[str, torch.Tensor]:
        """The tensors to save, floating ones cast to `dtype` (integer markers stay as they are)."""
        out = {}
        for key, value in self.state_dict().items():
            value = value.detach().to("cpu")
            if dtype is not None and value.is_floating_point():
                value = value.to(dtype)
            out[key] = value.contiguous()
        return out

    def load_kohya_state_dict(self, tensors: dict[str, torch.Tensor]) -> None:
        """Load saved tensors; every key must match (a mismatch means another model or network)."""
        result = self.load_state_dict(tensors, strict=False)
        if result.missing_keys or result.unexpected_keys:
            raise ValueError(f"weights do not fit this network: missing {result.missing_keys[:3]}, "
                             f"unexpected {result.unexpected_keys[:3]}")

    @abstractmethod
    def metadata(self) -> dict[str, str]:
        """ss_network_* fields sd-scripts writes for this network."""
