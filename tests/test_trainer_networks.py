"""LoRA and iA3 networks: which layers they adapt, their kohya key names, and their maths.

Counts are checked on SD 1.5's real UNet and CLIP ViT-L/14 text encoder, built from their
published configs on the meta device (no weights, no download); the maths on the tiny model.
"""

from __future__ import annotations

from typing import Any

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("diffusers")

from torch import nn  # noqa: E402

from curate.trainer.networks import IA3Module, LoRAModule, create_network  # noqa: E402
from fixtures.tiny_sd import build_components  # noqa: E402

# UNet2DConditionModel config of runwayml/stable-diffusion-v1-5 (unet/config.json)
SD15_UNET: dict[str, Any] = {
    "sample_size": 64, "in_channels": 4, "out_channels": 4, "center_input_sample": False,
    "flip_sin_to_cos": True, "freq_shift": 0,
    "down_block_types": ("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D",
                         "DownBlock2D"),
    "up_block_types": ("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
    "block_out_channels": (320, 640, 1280, 1280), "layers_per_block": 2, "downsample_padding": 1,
    "mid_block_scale_factor": 1, "act_fn": "silu", "norm_num_groups": 32, "norm_eps": 1e-5,
    "cross_attention_dim": 768, "attention_head_dim": 8,
}
# CLIPTextConfig of openai/clip-vit-large-patch14 (SD 1.5's text encoder)
CLIP_L: dict[str, Any] = {
    "vocab_size": 49408, "hidden_size": 768, "intermediate_size": 3072, "num_hidden_layers": 12,
    "num_attention_heads": 12, "max_position_embeddings": 77, "hidden_act": "quick_gelu",
    "projection_dim": 768, "layer_norm_eps": 1e-5,
}


@pytest.fixture(scope="module")
def sd15() -> tuple[nn.Module, nn.Module]:
    from accelerate import init_empty_weights
    from diffusers import UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    with init_empty_weights():
        return UNet2DConditionModel(**SD15_UNET), CLIPTextModel(CLIPTextConfig(**CLIP_L))


@pytest.fixture()
def tiny() -> dict[str, Any]:
    return build_components()


@pytest.mark.parametrize(("network", "options", "unet_count", "te_count"), [
    ("lora", {"dim": 4}, 192, 72),
    ("lora", {"dim": 4, "conv_dim": 4}, 278, 72),  # + 22 ResNets x 3, 14 shortcuts, 3 down, 3 up
    ("lora", {"dim": 4, "train_text_encoder": False}, 192, 0),
    ("lora", {"dim": 4, "train_unet": False}, 0, 72),
    ("ia3", {}, 80, 36),  # 16 transformers x (2 to_k, 2 to_v, ff.net.2); 12 layers x 3
])
def test_sd15_module_counts(sd15: tuple[nn.Module, nn.Module], network: str, options: dict[str, Any],
                            unet_count: int, te_count: int) -> None:
    unet, te = sd15
    net = create_network(network, unet, [te], **options)
    assert (len(net.unet_names), len(net.te_names)) == (unet_count, te_count)


def test_sd15_lora_key_names(sd15: tuple[nn.Module, nn.Module]) -> None:
    unet, te = sd15
    keys = set(create_network("lora", unet, [te], dim=4, alpha=2).state_dict())
    for name in ("lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q",
                 "lora_unet_mid_block_attentions_0_proj_in",
                 "lora_unet_up_blocks_3_attentions_2_transformer_blocks_0_ff_net_0_proj",
                 "lora_unet_down_blocks_1_attentions_1_transformer_blocks_0_attn2_to_out_0",
                 "lora_te_text_model_encoder_layers_0_mlp_fc1",
                 "lora_te_text_model_encoder_layers_11_self_attn_out_proj"):
        assert {f"{name}.lora_down.weight", f"{name}.lora_up.weight", f"{name}.alpha"} <= keys
    assert len(keys) == 3 * (192 + 72)
    assert not any("text_projection" in k or "time_emb" in k for k in keys)


def test_sd15_ia3_keys_and_on_input(sd15: tuple[nn.Module, nn.Module]) -> None:
    unet, te = sd15
    net = create_network("ia3", unet, [te])
    state = net.state_dict()
    on_input = {m.kohya_name for m in net.adapters() if isinstance(m, IA3Module) and m.input_side}
    assert all(k.endswith(".weight") or k.endswith(".on_input") for k in state)
    assert on_input and all(k.endswith(("_ff_net_2", "_mlp_fc2")) for k in on_input)
    assert len(on_input) == 16 + 12
    fc2 = "lora_te_text_model_encoder_layers_3_mlp_fc2.weight"
    k_proj = "lora_unet_mid_block_attentions_0_transformer_blocks_0_attn2_to_k.weight"
    assert state[fc2].shape == (3072,) and state[k_proj].shape == (320 * 4,)


def _unet_out(parts: dict[str, Any], seed: int = 0) -> Any:
    gen = torch.Generator().manual_seed(seed)
    latents = torch.randn(2, 4, 8, 8, generator=gen)
    ids = torch.randint(0, 500, (2, 77), generator=gen)
    with torch.no_grad():
        context = parts["text_encoder"](ids).last_hidden_state
        return parts["unet"](latents, torch.tensor([10, 500]), context).sample


def _randomise(net: nn.Module, seed: int = 1) -> None:
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in net.parameters():
            param.copy_(torch.randn(param.shape, generator=gen) * 0.1)


def test_lora_starts_as_identity_and_removes_cleanly(tiny: dict[str, Any]) -> None:
    base = _unet_out(tiny)
    net = create_network("lora", tiny["unet"], [tiny["text_encoder"]], dim=4, conv_dim=2)
    net.apply_to()
    assert torch.equal(_unet_out(tiny), base)  # lora_up is zero
    _randomise(net)
    assert not torch.allclose(_unet_out(tiny), base, atol=1e-3)
    net.remove()
    assert torch.equal(_unet_out(tiny), base)


@pytest.mark.parametrize("multiplier", [1.0, 0.5])
def test_lora_equals_merged_weights(tiny: dict[str, Any], multiplier: float) -> None:
    """y = Wx + m*(alpha/r)*up(down(x)) is the same as running W + m*dW, for Linear, 1x1 and 3x3 conv."""
    net = create_network("lora", tiny["unet"], [tiny["text_encoder"]], dim=4, alpha=2, conv_dim=2,
                         conv_alpha=1)
    _randomise(net)
    net.set_multiplier(multiplier)
    net.apply_to()
    adapted = _unet_out(tiny)
    net.remove()
    with torch.no_grad():
        for module in net.adapters():
            assert isinstance(module, LoRAModule)
            module.layer.weight += multiplier * module.delta_weight()
    assert torch.allclose(_unet_out(tiny), adapted, atol=1e-5)


def test_ia3_equals_a1111_formula(tiny: dict[str, Any]) -> None:
    """A1111 merges iA3 as W' = W * (1 + m*w) (bias untouched): the hooks must give that output."""
    net = create_network("ia3", tiny["unet"], [tiny["text_encoder"]])
    _randomise(net)
    net.set_multiplier(0.7)
    net.apply_to()
    adapted = _unet_out(tiny)
    net.remove()
    with torch.no_grad():
        for module in net.adapters():
            assert isinstance(module, IA3Module)
            module.layer.weight.copy_(module.scaled_weight(module.layer.weight))
    assert torch.allclose(_unet_out(tiny), adapted, atol=1e-5)


def test_dropout_only_while_training(tiny: dict[str, Any]) -> None:
    net = create_network("lora", tiny["unet"], [], dim=4, dropout=0.5, rank_dropout=0.3,
                         train_text_encoder=False)
    _randomise(net)
    net.apply_to()
    net.eval()
    assert torch.equal(_unet_out(tiny, 3), _unet_out(tiny, 3))
    net.train()
    torch.manual_seed(0)
    first = _unet_out(tiny, 3)
    assert not torch.equal(first, _unet_out(tiny, 3))


def test_unknown_network_and_option() -> None:
    with pytest.raises(ValueError, match="lora, ia3, loha, lokr"):
        create_network("dora", None, [])
    with pytest.raises(ValueError, match="valid: "):
        create_network("lora", None, [], rank=4)
