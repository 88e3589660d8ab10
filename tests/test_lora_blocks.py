"""Block weights: the kohya-name -> block mapping on SD 1.5's and SDXL's real UNets (built on the
meta device), the extension's weight specs and presets (17 / 26 values; SDXL 12 / 20), sd-scripts'
block learning rates (SDXL: 9 / 3 / 9), and SDXL training with block learning rates."""

from __future__ import annotations

import math
from typing import Any

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("diffusers")

from torch import nn  # noqa: E402

from curate.errors import CurateError  # noqa: E402
from curate.trainer.blocks import (  # noqa: E402
    BLOCK_IDS_12,
    BLOCK_IDS_17,
    BLOCK_IDS_20,
    BLOCK_IDS_26,
    block_of,
    block_table,
    lr_weights,
    parse_block_weights,
    weighted_param_groups,
)
from curate.trainer.networks import create_network  # noqa: E402

# UNet2DConditionModel config of runwayml/stable-diffusion-v1-5 (as tests/test_trainer_networks.py)
SD15_UNET: dict[str, Any] = {
    "sample_size": 64, "in_channels": 4, "out_channels": 4,
    "down_block_types": ("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D",
                         "DownBlock2D"),
    "up_block_types": ("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
    "block_out_channels": (320, 640, 1280, 1280), "layers_per_block": 2, "cross_attention_dim": 768,
    "attention_head_dim": 8,
}
CLIP_L: dict[str, Any] = {
    "vocab_size": 49408, "hidden_size": 768, "intermediate_size": 3072, "num_hidden_layers": 12,
    "num_attention_heads": 12, "max_position_embeddings": 77, "hidden_act": "quick_gelu",
    "projection_dim": 768,
}


@pytest.fixture(scope="module")
def sd15() -> tuple[nn.Module, nn.Module]:
    from accelerate import init_empty_weights
    from diffusers import UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    with init_empty_weights():
        return UNet2DConditionModel(**SD15_UNET), CLIPTextModel(CLIPTextConfig(**CLIP_L))


def test_lora_covers_exactly_the_17_blocks(sd15: tuple[nn.Module, nn.Module]) -> None:
    unet, te = sd15
    net = create_network("lora", unet, [te], dim=4)
    blocks = {block_of(name) for name in net.unet_names + net.te_names}
    assert blocks == set(BLOCK_IDS_17)


def test_locon_covers_every_block_but_conv_in(sd15: tuple[nn.Module, nn.Module]) -> None:
    unet, te = sd15
    net = create_network("lora", unet, [te], dim=4, conv_dim=4)
    blocks = {block_of(name) for name in net.unet_names + net.te_names}
    assert blocks == set(BLOCK_IDS_26) - {"IN00"}  # no trainer adapts conv_in


def test_every_unet_layer_has_its_ldm_block(sd15: tuple[nn.Module, nn.Module]) -> None:
    unet, _ = sd15
    seen: dict[str, set[str]] = {}
    for path, module in unet.named_modules():
        if isinstance(module, nn.Linear | nn.Conv2d):
            block = block_of("lora_unet_" + path.replace(".", "_"))
            seen.setdefault(str(block), set()).add(path.split(".")[0])
    assert set(seen) == set(BLOCK_IDS_26[1:]) | {"None"}
    # outside every block: what the extension leaves at weight 1
    assert seen["None"] == {"time_embedding", "conv_out"}
    assert seen["IN00"] == {"conv_in"}


@pytest.mark.parametrize(("name", "block"), [
    ("lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q", "IN01"),
    ("lora_unet_down_blocks_0_attentions_1_proj_out", "IN02"),
    ("lora_unet_down_blocks_0_downsamplers_0_conv", "IN03"),
    ("lora_unet_down_blocks_1_attentions_0_proj_in", "IN04"),
    ("lora_unet_down_blocks_2_downsamplers_0_conv", "IN09"),
    ("lora_unet_down_blocks_3_resnets_1_conv2", "IN11"),
    ("lora_unet_mid_block_attentions_0_proj_in", "M00"),
    ("lora_unet_mid_block_resnets_1_conv1", "M00"),
    ("lora_unet_up_blocks_0_resnets_0_conv1", "OUT00"),
    ("lora_unet_up_blocks_0_upsamplers_0_conv", "OUT02"),
    ("lora_unet_up_blocks_1_attentions_0_proj_in", "OUT03"),
    ("lora_unet_up_blocks_2_upsamplers_0_conv", "OUT08"),
    ("lora_unet_up_blocks_3_attentions_2_transformer_blocks_0_ff_net_2", "OUT11"),
    ("lora_unet_input_blocks_4_1_proj_in", "IN04"),  # LDM-named keys (older kohya files)
    ("lora_unet_output_blocks_11_1_proj_out", "OUT11"),
    ("lora_te_text_model_encoder_layers_0_mlp_fc1", "BASE"),
    ("lora_te1_text_model_encoder_layers_0_self_attn_k_proj", "BASE"),
    ("up_blocks.1.attentions.2.proj_out", "OUT05"),  # a diffusers module path
    ("lora_unet_time_embedding_linear_1", None),
])
def test_block_of(name: str, block: str | None) -> None:
    assert block_of(name) == block


def test_presets_are_the_extension_defaults() -> None:
    out_all = parse_block_weights("OUTALL")
    assert [out_all[b] for b in BLOCK_IDS_17] == [1] + [0] * 7 + [1] * 9
    ind = parse_block_weights("ind")
    assert {b for b, w in ind.items() if w} == {"BASE", "IN05", "IN07", "IN08"}
    # ALL is 17 ones: the 9 blocks a LierLa LoRA lacks stay 0, as the extension's to26 leaves them
    everything = parse_block_weights("ALL")
    assert {b for b, w in everything.items() if w} == set(BLOCK_IDS_17)


def test_17_and_26_values() -> None:
    values = [round(0.05 * i, 2) for i in range(17)]
    weights = parse_block_weights(",".join(map(str, values)))
    assert [weights[b] for b in BLOCK_IDS_17] == values
    assert all(weights[b] == 0 for b in set(BLOCK_IDS_26) - set(BLOCK_IDS_17))
    values26 = [float(i) for i in range(26)]
    assert list(parse_block_weights(" , ".join(map(str, values26))).values()) == values26


def test_named_groups_and_ranges() -> None:
    weights = parse_block_weights("IN=0,MID=0,OUT=1")
    assert weights["BASE"] == 1 and weights["M00"] == 0
    assert all(weights[f"IN{i:02d}"] == 0 and weights[f"OUT{i:02d}"] == 1 for i in range(12))
    weights = parse_block_weights("ALL=0, IN04-IN05=0.5, out11=2, BASE=-1")
    assert {b: w for b, w in weights.items() if w} == {"IN04": 0.5, "IN05": 0.5, "OUT11": 2.0, "BASE": -1.0}
    assert parse_block_weights("OUT05-IN11=0")["M00"] == 0  # either order


@pytest.mark.parametrize(("spec", "message"), [
    ("", "empty"),
    ("1,1,1", "3 values; SD 1.x/2.x takes 17"),
    (",".join(["1"] * 12), "12 values"),
    ("1,1,x" + ",1" * 14, "not all numbers"),
    ("SKIN", "unknown preset"),
    ("IN=0,FOO=1", "unknown block 'FOO'"),
    ("IN=0,OUT", "not NAME=VALUE"),
    ("IN=zero", "not all numbers"),
])
def test_parse_errors(spec: str, message: str) -> None:
    with pytest.raises(CurateError, match=message):
        parse_block_weights(spec)


NAMES = ["lora_te_text_model_encoder_layers_0_mlp_fc1",
         "lora_unet_down_blocks_0_attentions_0_proj_in",  # IN01
         "lora_unet_down_blocks_2_attentions_1_proj_in",  # IN08
         "lora_unet_mid_block_attentions_0_proj_in",
         "lora_unet_up_blocks_1_attentions_0_proj_in",  # OUT03
         "lora_unet_up_blocks_3_attentions_2_proj_out"]  # OUT11


def test_lr_presets_follow_sd_scripts() -> None:
    # sd-scripts get_block_lr_weight: sine = sin(pi/2 * i/11) + base, cosine the reverse; lists index
    # down_lr_weight by input block, up_lr_weight by output block
    got = lr_weights(NAMES, down_lr_weight="sine+0.25", mid_lr_weight="0.5", up_lr_weight="cosine")
    sine = [math.sin(math.pi * i / 11 / 2) for i in range(12)]
    assert got[NAMES[0]] == 1.0  # the text encoder is not a block of these lists
    assert got[NAMES[1]] == pytest.approx(sine[1] + 0.25)
    assert got[NAMES[2]] == pytest.approx(sine[8] + 0.25)
    assert got[NAMES[3]] == 0.5
    assert got[NAMES[4]] == pytest.approx(sine[11 - 3])
    assert got[NAMES[5]] == pytest.approx(0.0, abs=1e-12)
    linear = lr_weights(NAMES, down_lr_weight="linear", up_lr_weight="reverse_linear")
    assert linear[NAMES[2]] == pytest.approx(8 / 11) and linear[NAMES[5]] == pytest.approx(0.0)


def test_lr_lists_threshold_and_padding() -> None:
    got = lr_weights(NAMES, down_lr_weight="0,0.05,,,,,,,0.3", up_lr_weight="zeros+0.5", zero_threshold=0.1)
    assert got[NAMES[1]] == 0.0  # 0.05 is not above the threshold: not trained
    assert got[NAMES[2]] == pytest.approx(0.3)
    assert got[NAMES[3]] == 1.0  # mid unset
    assert got[NAMES[4]] == 0.5 and got[NAMES[5]] == 0.5
    short = lr_weights(NAMES, down_lr_weight="0,0")
    assert short[NAMES[1]] == 0.0 and short[NAMES[2]] == 1.0  # padded with 1 as sd-scripts
    assert lr_weights(NAMES) == dict.fromkeys(NAMES, 1.0)
    spec = lr_weights(NAMES, block_weights="IN=0,MID=0,OUT=1,BASE=0.5")
    assert [spec[n] for n in NAMES] == [0.5, 0, 0, 0, 1, 1]


@pytest.mark.parametrize(("options", "message"), [
    ({"down_lr_weight": "wave"}, "choose one of cosine, sine"),
    ({"up_lr_weight": ",".join(["1"] * 13)}, "13 values, at most 12"),
    ({"up_lr_weight": "1,a"}, "not comma-separated numbers"),
    ({"down_lr_weight": "sine", "block_weights": "ALL"}, "not both"),
])
def test_lr_errors(options: dict[str, str], message: str) -> None:
    with pytest.raises(CurateError, match=message):
        lr_weights(NAMES, **options)


def test_weighted_param_groups_freeze_zero_blocks() -> None:
    from fixtures.tiny_sd import build_components

    parts = build_components()
    net = create_network("lora", parts["unet"], [parts["text_encoder"]], dim=2)
    weights = lr_weights(net.unet_names + net.te_names, block_weights="IN=0,MID=0.5,OUT=1,BASE=1")
    groups = weighted_param_groups(net, weights, unet_lr=1e-3, te_lr=None, default_lr=1e-4)
    by_lr = {g["lr"]: len(g["params"]) for g in groups}
    mid = [n for n in net.unet_names if "mid_block" in n]
    up = [n for n in net.unet_names if "up_blocks" in n]
    assert by_lr == {5e-4: 2 * len(mid), 1e-3: 2 * len(up), 1e-4: 2 * len(net.te_names)}
    grouped = {id(p) for g in groups for p in g["params"]}
    for name in net.unet_names:
        params = list(net.get_submodule(name).parameters())
        trained = "down_blocks" not in name
        assert all(p.requires_grad == trained and (id(p) in grouped) == trained for p in params)


def test_block_table_names_what_block_of_maps(sd15: tuple[nn.Module, nn.Module]) -> None:
    unet, _ = sd15
    rows = block_table("OUTALL")
    assert [r[0] for r in rows] == BLOCK_IDS_26 and sum(r[2] for r in rows) == 17
    for block, contents, _, weight in rows[1:]:
        assert weight == (1.0 if block.startswith("OUT") and block in BLOCK_IDS_17 else 0.0)
        for path in contents.split(" + "):
            unet.get_submodule(path)  # the module exists in SD 1.5
            assert block_of(path + ".conv") == block


# --- SDXL -----------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def sdxl() -> tuple[nn.Module, nn.Module, nn.Module]:
    """stable-diffusion-xl-base-1.0's UNet and text encoders from the shipped configs, on meta."""
    from diffusers import UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    from curate.trainer.single_file import CONFIGS

    def text(name: str) -> Any:
        return CLIPTextConfig.from_pretrained(CONFIGS / "sdxl", subfolder=name)

    with torch.device("meta"):
        unet = UNet2DConditionModel.from_config(UNet2DConditionModel.load_config(CONFIGS / "sdxl",
                                                                                 subfolder="unet"))
        return unet, CLIPTextModel(text("text_encoder")), CLIPTextModelWithProjection(text("text_encoder_2"))


def test_sdxl_lora_covers_exactly_the_12_blocks(sdxl: tuple[nn.Module, ...]) -> None:
    unet, te1, te2 = sdxl
    net = create_network("lora", unet, [te1, te2], dim=4)
    assert {block_of(name) for name in net.unet_names + net.te_names} == set(BLOCK_IDS_12)
    assert {block_of(name) for name in net.te_names} == {"BASE"}
    locon = create_network("lora", unet, [te1, te2], dim=4, conv_dim=4)
    blocks = [block_of(name) for name in locon.unet_names]
    assert None not in blocks and set(blocks) == set(BLOCK_IDS_20) - {"BASE", "IN00"}
    ia3 = create_network("ia3", unet, [te1, te2])
    assert {block_of(name) for name in ia3.unet_names + ia3.te_names} == set(BLOCK_IDS_12)


def test_every_sdxl_layer_has_its_sgm_block(sdxl: tuple[nn.Module, ...]) -> None:
    """A diffusers path and sd-scripts' SGM name of the same layer land in the same block; every
    block of the 20 holds layers; only the embeddings and conv_out are outside every block."""
    from curate.trainer.networks.base import unet_renamer

    unet = sdxl[0]
    rename = unet_renamer(unet)
    assert rename is not None
    seen: dict[str, set[str]] = {}
    for path, module in unet.named_modules():
        if isinstance(module, nn.Linear | nn.Conv2d):
            block = block_of("lora_unet_" + rename(path).replace(".", "_"))
            assert block == block_of(path), path
            seen.setdefault(str(block), set()).add(path.split(".")[0])
    assert set(seen) == set(BLOCK_IDS_20[1:]) | {"None"}
    assert seen["None"] == {"time_embedding", "add_embedding", "conv_out"}


@pytest.mark.parametrize(("name", "block"), [
    ("lora_unet_input_blocks_1_0_in_layers_2", "IN01"),
    ("lora_unet_input_blocks_4_1_transformer_blocks_0_attn1_to_q", "IN04"),
    ("lora_unet_input_blocks_8_1_transformer_blocks_9_ff_net_2", "IN08"),
    ("lora_unet_middle_block_1_transformer_blocks_9_attn2_to_k", "M00"),
    ("lora_unet_middle_block_2_emb_layers_1", "M00"),
    ("lora_unet_output_blocks_0_1_proj_in", "OUT00"),
    ("lora_unet_output_blocks_2_2_conv", "OUT02"),
    ("lora_unet_output_blocks_8_0_out_layers_3", "OUT08"),
    ("lora_te2_text_model_encoder_layers_31_mlp_fc2", "BASE"),
    ("lora_unet_label_emb_0_0", None),
])
def test_sdxl_block_of(name: str, block: str | None) -> None:
    assert block_of(name) == block


def test_sdxl_specs() -> None:
    values = [round(0.1 * i, 1) for i in range(12)]
    weights = parse_block_weights(",".join(map(str, values)), sdxl=True)
    assert list(weights) == BLOCK_IDS_20
    assert [weights[b] for b in BLOCK_IDS_12] == values
    assert all(weights[b] == 0 for b in set(BLOCK_IDS_20) - set(BLOCK_IDS_12))  # the extension's to26
    values20 = [float(i) for i in range(20)]
    assert list(parse_block_weights(",".join(map(str, values20)), sdxl=True).values()) == values20
    assert set(parse_block_weights("ALL", sdxl=True).values()) == {0.0, 1.0}
    assert {b for b, w in parse_block_weights("all", sdxl=True).items() if w} == set(BLOCK_IDS_12)
    named = parse_block_weights("IN=0,MID=0.5,OUT=1", sdxl=True)
    assert list(named) == BLOCK_IDS_20 and named["BASE"] == 1 and named["M00"] == 0.5
    assert all(named[f"IN{i:02d}"] == 0 and named[f"OUT{i:02d}"] == 1 for i in range(9))
    ranged = parse_block_weights("ALL=0,IN07-OUT01=2", sdxl=True)
    assert {b for b, w in ranged.items() if w} == {"IN07", "IN08", "M00", "OUT00", "OUT01"}


@pytest.mark.parametrize(("spec", "message"), [
    (",".join(["1"] * 17), "17 values; SDXL takes 12"),
    (",".join(["1"] * 26), "26 values; SDXL takes 12"),
    ("OUTALL", "an SD 1.x preset"),
    ("IN09=0", "unknown block 'IN09' for SDXL"),
    ("OUT05-OUT11=0", "unknown block"),
])
def test_sdxl_parse_errors(spec: str, message: str) -> None:
    with pytest.raises(CurateError, match=message):
        parse_block_weights(spec, sdxl=True)


SDXL_NAMES = ["lora_te1_text_model_encoder_layers_0_mlp_fc1",
              "lora_te2_text_model_encoder_layers_0_mlp_fc1",
              "lora_unet_input_blocks_4_1_proj_in",  # down index 4
              "lora_unet_input_blocks_8_1_proj_out",  # 8
              "lora_unet_middle_block_0_in_layers_2",  # mid index 0
              "lora_unet_middle_block_1_proj_in",  # 1
              "lora_unet_middle_block_2_out_layers_3",  # 2
              "lora_unet_output_blocks_0_1_proj_in",  # up index 0
              "lora_unet_output_blocks_5_1_proj_out"]  # 5


def test_sdxl_lr_lists_follow_sd_scripts() -> None:
    """sd-scripts' SDXL get_block_index: input_blocks_N -> down[N] (9 values), middle_block_M ->
    mid[M] (3), output_blocks_N -> up[N] (9); the presets run over 9 values."""
    got = lr_weights(SDXL_NAMES, down_lr_weight="sine", mid_lr_weight="0.1,0.2,0.3", up_lr_weight="linear+1",
                     sdxl=True)
    sine = [math.sin(math.pi * i / 8 / 2) for i in range(9)]
    assert got[SDXL_NAMES[0]] == got[SDXL_NAMES[1]] == 1.0
    assert got[SDXL_NAMES[2]] == pytest.approx(sine[4]) and got[SDXL_NAMES[3]] == pytest.approx(1.0)
    assert [got[n] for n in SDXL_NAMES[4:7]] == [0.1, 0.2, 0.3]
    assert got[SDXL_NAMES[7]] == pytest.approx(1.0) and got[SDXL_NAMES[8]] == pytest.approx(1 + 5 / 8)
    padded = lr_weights(SDXL_NAMES, mid_lr_weight="0.05", zero_threshold=0.1, sdxl=True)
    assert [padded[n] for n in SDXL_NAMES[4:7]] == [0.0, 1.0, 1.0]
    spec = lr_weights(SDXL_NAMES, block_weights="BASE=0.5,IN=0,MID=2,OUT=1", sdxl=True)
    assert [spec[n] for n in SDXL_NAMES] == [0.5, 0.5, 0, 0, 2, 2, 2, 1, 1]
    with pytest.raises(CurateError, match="10 values, at most 9"):
        lr_weights(SDXL_NAMES, down_lr_weight=",".join(["1"] * 10), sdxl=True)
    with pytest.raises(CurateError, match="4 values, at most 3"):
        lr_weights(SDXL_NAMES, mid_lr_weight="1,1,1,1", sdxl=True)


def test_sdxl_block_table_names_what_block_of_maps(sdxl: tuple[nn.Module, ...]) -> None:
    unet = sdxl[0]
    rows = block_table("IN=0,MID=0,OUT=1", sdxl=True)
    assert [r[0] for r in rows] == BLOCK_IDS_20 and [r[0] for r in rows if r[2]] == BLOCK_IDS_12
    for block, contents, _, weight in rows[1:]:
        assert weight == (1.0 if block.startswith("OUT") else 0.0)
        for path in contents.split(" + "):
            unet.get_submodule(path)  # the module exists in SDXL
            assert block_of(path + ".conv") == block


def test_cli_blocks_sdxl() -> None:
    import json

    from click.testing import CliRunner

    from curate.cli import cli

    result = CliRunner().invoke(cli, ["lora", "blocks", "--sdxl", "--json", "1,0,0,0,0,1,1,1,1,1,1,1"])
    assert result.exit_code == 0, result.output
    rows = json.loads(result.stdout)
    assert [r["block"] for r in rows] == BLOCK_IDS_20
    assert {r["block"] for r in rows if r["weight"]} == {"BASE", "M00", *(f"OUT{i:02d}" for i in range(6))}
    assert sum(r["in_12"] for r in rows) == 12
    refused = CliRunner().invoke(cli, ["lora", "blocks", "--sdxl", "MIDD"])
    assert refused.exit_code != 0 and "SD 1.x preset" in refused.output


def test_sdxl_training_with_block_learning_rates(photos_dataset: Any, tmp_path_factory: Any) -> None:
    """block_lr_weights on the tiny SDXL model: IN and MID modules keep their initial (zero) up
    weights, OUT and both text encoders' modules train; sd-scripts' 3-value mid list works too."""
    from dataclasses import replace

    from curate.trainer import loop
    from curate.trainer.config import TrainConfig
    from curate.trainer.formats import load_network
    from fixtures.tiny_sdxl import build_tiny_sdxl

    model = build_tiny_sdxl(tmp_path_factory.mktemp("tiny_sdxl") / "model")
    config = TrainConfig(resolution=64, min_bucket_reso=64, max_bucket_reso=128, batch_size=4, network_dim=4,
                         conv_dim=4, save_precision="float", seed=1, max_train_steps=2, learning_rate=1e-2,
                         block_lr_weights="IN=0,MID=0,OUT=1")
    cpu = torch.device("cpu")

    def ups(config: TrainConfig, out: str) -> dict[str, torch.Tensor]:
        tensors = load_network(loop.train(photos_dataset, model, tmp_path_factory.mktemp(out), config,
                                          device=cpu).output)[0]
        return {k.split(".")[0]: v for k, v in tensors.items() if k.endswith("lora_up.weight")}

    got = ups(config, "spec")
    frozen = [n for n in got if (block_of(n) or "").startswith(("IN", "M"))]
    # CLIP-L's last layer feeds nothing: SDXL reads its penultimate states and bigG's pooled output
    unused = "lora_te1_text_model_encoder_layers_1_"
    trained = [n for n in got if ((block_of(n) or "").startswith("OUT") or n.startswith("lora_te"))
               and not n.startswith(unused)]
    assert frozen and trained and {n.split("_")[1] for n in trained} == {"unet", "te1", "te2"}
    assert all(float(got[n].abs().max()) == 0.0 for n in frozen)
    assert all(float(got[n].abs().max()) > 0.0 for n in trained)
    mid = ups(replace(config, block_lr_weights=None, mid_lr_weight="0,1,0"), "mid")
    middle = {n: float(v.abs().max()) for n, v in mid.items() if "middle_block" in n}
    assert {n.split("_")[4] for n, w in middle.items() if w > 0} == {"1"}  # only the transformer
    assert any(n.split("_")[4] in "02" for n in middle)
