"""What LoRA and iA3 share: finding the modules to adapt, kohya names, hooks, saving.

An adapter never replaces a module of the base model: it hangs a forward hook on it (and a
pre-hook for input-side iA3), so `remove()` gives the untouched model back and the base
weights never enter the adapter's state dict. The network is an `nn.Module` whose children
are named by their kohya module names (`lora_unet_..._attn1_to_q`), so `state_dict()` already
has the keys A1111, ComfyUI, diffusers and sd-scripts load (REFERENCE §5).

SDXL UNets are named as sd-scripts names them: its SDXL UNet keeps the original (SGM) module
layout, so its files say `lora_unet_input_blocks_4_1_transformer_blocks_0_attn1_to_q` where the
diffusers module is `down_blocks.1.attentions.0...`. `sgm_path` translates a diffusers UNet
path (blocks, resnets, samplers) to that layout; A1111, ComfyUI and diffusers' loader read it.
"""

from __future__ import annotations

import re
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


def is_sdxl_unet(unet: nn.Module | None) -> bool:
    """An SDXL-style UNet: one conditioned on the pooled text embedding and the size numbers."""
    config = getattr(unet, "config", None)
    return getattr(config, "addition_embed_type", None) == "text_time"


# inside a ResNet / sampler, diffusers' layer names -> the original model's
_SGM_LAYERS = {"conv1": "in_layers.2", "time_emb_proj": "emb_layers.1", "conv2": "out_layers.3",
               "conv_shortcut": "skip_connection", "downsamplers.0.conv": "op"}


def sgm_path(path: str, layers_per_block: int, up_has_attention: Sequence[bool]) -> str:
    """A diffusers UNet module path in the original SDXL layout, as sd-scripts' SDXL UNet names
    it: each level has layers_per_block (resnet, transformer) input blocks and a down-sampler,
    layers_per_block + 1 output blocks, the up-sampler last in the level's last output block."""
    n = layers_per_block
    if m := re.match(r"down_blocks\.(\d+)\.(resnets|attentions)\.(\d+)\.(.*)", path):
        level, kind, k, rest = int(m[1]), m[2], int(m[3]), m[4]
        inner = 0 if kind == "resnets" else 1
        return f"input_blocks.{1 + level * (n + 1) + k}.{inner}.{_sgm_layer(rest)}"
    if m := re.match(r"down_blocks\.(\d+)\.downsamplers\.0\.conv(.*)", path):
        return f"input_blocks.{(int(m[1]) + 1) * (n + 1)}.0.op{m[2]}"
    if m := re.match(r"mid_block\.(resnets|attentions)\.(\d+)\.(.*)", path):
        index = 1 if m[1] == "attentions" else 2 * int(m[2])
        return f"middle_block.{index}.{_sgm_layer(m[3])}"
    if m := re.match(r"up_blocks\.(\d+)\.(resnets|attentions)\.(\d+)\.(.*)", path):
        level, kind, k, rest = int(m[1]), m[2], int(m[3]), m[4]
        return f"output_blocks.{level * (n + 1) + k}.{0 if kind == 'resnets' else 1}.{_sgm_layer(rest)}"
    if m := re.match(r"up_blocks\.(\d+)\.upsamplers\.0\.(.*)", path):
        level = int(m[1])
        return f"output_blocks.{level * (n + 1) + n}.{2 if up_has_attention[level] else 1}.{m[2]}"
    return path


def _sgm_layer(rest: str) -> str:
    head, _, tail = rest.partition(".")
    if head in _SGM_LAYERS:
        return ".".join(filter(None, (_SGM_LAYERS[head], tail)))
    return rest


def unet_renamer(unet: nn.Module) -> Callable[[str], str] | None:
    """The module-path translation sd-scripts' names need for this UNet (None: none, SD 1.x/2.x)."""
    if not is_sdxl_unet(unet):
        return None
    config: Any = unet.config
    if not isinstance(config.layers_per_block, int):
        raise ValueError("an SDXL UNet with per-level layers_per_block has no sd-scripts module names")
    up_attention = ["CrossAttn" in kind for kind in config.up_block_types]
    return lambda path: sgm_path(path, config.layers_per_block, up_attention)


def find_targets(root: nn.Module, prefix: str, blocks: Sequence[str],
                 accept: Callable[[str, nn.Module], bool], root_path: str = "") -> dict[str, nn.Module]:
    """kohya name -> layer, for every layer inside a `blocks` module that `accept(child_name, layer)`.
    An SDXL UNet's layers get sd-scripts' SDXL names (`sgm_path`)."""
    found: dict[str, nn.Module] = {}
    rename = unet_renamer(root)
    for block_name, block in root.named_modules():
        if type(block).__name__ not in blocks:
            continue
        for child_name, child in block.named_modules():
            if child_name and isinstance(child, nn.Linear | nn.Conv2d) and accept(child_name, child):
                path = f"{block_name}.{child_name}"
                path = rename(path) if rename else path
                found.setdefault(kohya_name(prefix, *([root_path] if root_path else []), path), child)
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
