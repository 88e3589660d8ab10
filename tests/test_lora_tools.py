"""`curate lora info / resize / extract` on the tiny SD fixture, each against a dense reference:
deltas are formed as full matrices here (up @ down * alpha / rank, W_tuned - W_base) and cut
with torch.linalg.svd, independently of the tools' own low-rank maths."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path
from typing import Any

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("diffusers")
pytest.importorskip("peft")  # diffusers loads LoRA files through peft

from click.testing import CliRunner  # noqa: E402
from PIL import Image  # noqa: E402
from safetensors.torch import save_file  # noqa: E402

from curate.cli import cli  # noqa: E402
from curate.errors import CurateError  # noqa: E402
from curate.trainer import loop  # noqa: E402
from curate.trainer.config import TrainConfig  # noqa: E402
from curate.trainer.formats import as_metadata, load_network, save_network, tensor_hash  # noqa: E402
from curate.trainer.networks import create_network  # noqa: E402
from curate.trainer.tools.extract import extract_lora  # noqa: E402
from curate.trainer.tools.info import lora_info  # noqa: E402
from curate.trainer.tools.resize import resize_lora  # noqa: E402
from fixtures.tiny_sd_single_file import build_single_file  # noqa: E402

# kohya name -> rank of the delta planted in the "tuned" model
PLANTED = {
    "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q": 3,
    "lora_unet_down_blocks_0_attentions_0_proj_in": 2,  # a 1x1 conv
    "lora_unet_up_blocks_1_attentions_0_transformer_blocks_0_ff_net_2": 3,
    "lora_unet_down_blocks_0_resnets_0_conv1": 3,  # a 3x3 conv: only with conv_dim
    "lora_te_text_model_encoder_layers_0_self_attn_q_proj": 2,
}
CONV = "lora_unet_down_blocks_0_resnets_0_conv1"

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def model(tiny_sd: Path) -> Path:
    return tiny_sd


def _pipeline(path: Path) -> Any:
    from diffusers import StableDiffusionPipeline

    return StableDiffusionPipeline.from_pretrained(path)


def _layers(pipe: Any) -> dict[str, Any]:
    """kohya name -> layer of every LoRA / LoCon target of the pipeline."""
    net = create_network("lora", pipe.unet, [pipe.text_encoder], dim=1, conv_dim=1)
    return {m.kohya_name: m.layer for m in net.adapters()}


@pytest.fixture(scope="module")
def tuned(model: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any]]:
    """A copy of the fixture with a random delta of known rank added to the PLANTED layers."""
    out = tmp_path_factory.mktemp("tuned") / "model"
    shutil.copytree(model, out)
    pipe = _pipeline(out)
    layers = _layers(pipe)
    gen = torch.Generator().manual_seed(11)
    deltas = {}
    with torch.no_grad():
        for name, rank in PLANTED.items():
            weight = layers[name].weight
            a = torch.randn(weight.shape[0], rank, generator=gen)
            b = torch.randn(rank, weight[0].numel(), generator=gen)
            deltas[name] = (a @ b * 0.05).reshape(weight.shape)
            weight.add_(deltas[name])
    pipe.unet.save_pretrained(out / "unet")
    pipe.text_encoder.save_pretrained(out / "text_encoder")
    return out, deltas


def dense(tensors: dict[str, Any], name: str) -> Any:
    """A kohya module's delta as a full matrix (out x in*kh*kw), float64."""
    down, up = tensors[f"{name}.lora_down.weight"].double(), tensors[f"{name}.lora_up.weight"].double()
    return up.flatten(1) @ down.flatten(1) * float(tensors[f"{name}.alpha"]) / down.shape[0]


def truncated(mat: Any, rank: int) -> Any:
    u, s, vh = torch.linalg.svd(mat.double(), full_matrices=False)
    return u[:, :rank] @ torch.diag(s[:rank]) @ vh[:rank]


def _outputs(pipe: Any) -> tuple[Any, Any]:
    gen = torch.Generator().manual_seed(0)
    latents = torch.randn(2, 4, 8, 8, generator=gen)
    ids = torch.randint(0, 500, (2, 77), generator=gen)
    with torch.no_grad():
        context = pipe.text_encoder(ids).last_hidden_state
        return context, pipe.unet(latents, torch.tensor([10, 700]), context).sample


def _merged(model: Path, lora: Path) -> tuple[Any, Any]:
    """Outputs of the base model with the file's dense deltas added to its weights."""
    pipe = _pipeline(model)
    layers = _layers(pipe)
    tensors, _ = load_network(lora)
    with torch.no_grad():
        for key in tensors:
            if key.endswith(".alpha"):
                name = key.removesuffix(".alpha")
                weight = layers[name].weight
                weight.add_(dense(tensors, name).float().reshape(weight.shape))
    return _outputs(pipe)


def _diffusers(model: Path, lora: Path) -> tuple[Any, Any]:
    pipe = _pipeline(model)
    pipe.load_lora_weights(str(lora))
    return _outputs(pipe)


# ---------------------------------------------------------------- extract


@pytest.fixture(scope="module")
def extracted(model: Path, tuned: tuple[Path, Any], tmp_path_factory: pytest.TempPathFactory) -> Any:
    out = tmp_path_factory.mktemp("extract") / "distilled.safetensors"
    return extract_lora(model, tuned[0], out, dim=4, conv_dim=4, clamp_quantile=1.0, save_precision="float")


def test_extract_recovers_the_planted_delta_at_full_rank(extracted: Any, tuned: tuple[Path, Any]) -> None:
    deltas = tuned[1]
    assert {x.name for x in extracted.layers} == set(PLANTED)
    tensors, meta = load_network(extracted.output)
    for layer in extracted.layers:
        expected = deltas[layer.name].double().flatten(1)
        assert torch.allclose(dense(tensors, layer.name), expected, atol=1e-5)
        assert layer.rank == 4 and layer.energy == pytest.approx(1.0, abs=1e-6) and layer.error < 1e-5
        assert float(tensors[f"{layer.name}.alpha"]) == 4.0
    assert tensors[f"{CONV}.lora_down.weight"].shape == (4, 32, 3, 3)
    assert tensors[f"{CONV}.lora_up.weight"].shape == (32, 4, 1, 1)
    # every other target is identical in both models: left out, not written as zeros
    assert len(extracted.identical) > 20 and not set(extracted.identical) & set(PLANTED)
    assert extracted.marker == "lora_te_text_model_encoder_layers_0_self_attn_out_proj"
    assert meta["ss_network_module"] == "networks.lora" and meta["ss_network_dim"] == "4"
    assert meta["ss_network_alpha"] == "4.0" and meta["ss_base_model_version"] == "sd_v1"
    assert json.loads(meta["curate_extracted_from"]) == {"base": "model", "tuned": "model"}
    assert json.loads(meta["ss_network_args"]) == {"conv_dim": "4", "conv_alpha": "4.0"}
    assert meta["sshs_model_hash"] == tensor_hash(extracted.output)


def test_diffusers_gives_the_tuned_model(model: Path, tuned: tuple[Path, Any], extracted: Any) -> None:
    expected = _outputs(_pipeline(tuned[0]))
    context, sample = _diffusers(model, extracted.output)
    assert torch.allclose(context, expected[0], atol=1e-4) and torch.allclose(sample, expected[1], atol=1e-4)
    base = _outputs(_pipeline(model))
    assert (sample - base[1]).abs().max() > 1e-3  # the planted deltas do change the model


def test_extract_below_the_delta_rank_reports_the_svd_energy(model: Path, tuned: tuple[Path, Any],
                                                             tmp_path: Path) -> None:
    result = extract_lora(model, tuned[0], tmp_path / "r2.safetensors", dim=2, clamp_quantile=1.0,
                          save_precision="float")
    assert {x.name for x in result.layers} == set(PLANTED) - {CONV}  # no conv_dim: 3x3 convs are no target
    tensors, _ = load_network(result.output)
    total = kept = 0.0
    for layer in result.layers:
        delta = tuned[1][layer.name].double().flatten(1)
        s = torch.linalg.svdvals(delta)
        energy = float(s[:2].pow(2).sum() / s.pow(2).sum())
        assert layer.energy == pytest.approx(energy, rel=1e-5)
        assert layer.error == pytest.approx(math.sqrt(1 - energy), abs=1e-5)
        assert torch.allclose(dense(tensors, layer.name), truncated(delta, 2), atol=1e-5)
        total, kept = total + float(s.pow(2).sum()), kept + float(s[:2].pow(2).sum())
    assert any(x.energy < 0.999 for x in result.layers)  # rank-3 deltas do lose something at rank 2
    assert result.energy == pytest.approx(kept / total, rel=1e-5)


def test_extract_clamps_and_skips_an_unchanged_text_encoder(model: Path, tuned: tuple[Path, Any],
                                                            tmp_path: Path) -> None:
    single = build_single_file(tuned[0], tmp_path / "tuned.safetensors")  # a single-file fine-tune
    result = extract_lora(model, single, tmp_path / "unet.safetensors", dim=4, min_diff=10.0,
                          model_config=str(model), save_precision="float")
    assert result.text_encoder_skipped and result.marker is None
    assert 0.01 < result.text_encoder_max_diff < 10.0
    tensors, _ = load_network(result.output)
    assert not any(k.startswith("lora_te") for k in tensors)
    for layer in result.layers:
        up, down = (tensors[f"{layer.name}.lora_{p}.weight"] for p in ("up", "down"))
        assert layer.rank == 4  # so up is stored unscaled (alpha = dim = rank)
        both = torch.cat([up.flatten(), down.flatten()]).abs()
        # the top 1% of |entries| were cut to one bound: several entries tie at the maximum
        assert int((both == both.max()).sum()) >= 2
        # clamping moved some entries, so the error exceeds the truncation's, never by much
        assert layer.error >= math.sqrt(max(0.0, 1 - layer.energy)) - 1e-6
    assert any(x.error > 1e-4 for x in result.layers) and max(x.error for x in result.layers) < 0.5


def test_extract_refuses_identical_models(model: Path, tmp_path: Path) -> None:
    with pytest.raises(CurateError, match="nothing to extract"):
        extract_lora(model, model, tmp_path / "none.safetensors", dim=4)


# ---------------------------------------------------------------- resize


@pytest.fixture(scope="module")
def lora8(model: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random LoCon, dim 8 / alpha 4 and conv 4 / alpha 1, saved as curate trains it."""
    pipe = _pipeline(model)
    net = create_network("lora", pipe.unet, [pipe.text_encoder], dim=8, alpha=4.0, conv_dim=4, conv_alpha=1.0)
    gen = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for name, param in net.named_parameters():
            param.copy_(torch.randn(param.shape, generator=gen) * (0.1 if "up" in name else 1.0))
    path = tmp_path_factory.mktemp("lora") / "sks.safetensors"
    meta = as_metadata({**net.metadata(), "ss_output_name": "sks", "ss_tag_frequency": {"1_sks": {"sks": 2}},
                        "ss_training_comment": "trained"})
    save_network(path, net.kohya_state_dict(torch.float32), meta)
    return path


def test_resize_matches_the_dense_svd_truncation(lora8: Path, tmp_path: Path) -> None:
    result = resize_lora(lora8, tmp_path / "r3.safetensors", 3)
    before, _ = load_network(lora8)
    after, meta = load_network(result.output)
    assert result.alpha == 1.5  # alpha/rank 4/8 kept, as sd-scripts does
    for layer in result.layers:
        old = dense(before, layer.name)
        assert layer.new_rank == 3 and after[f"{layer.name}.lora_down.weight"].shape[0] == 3
        new = dense(after, layer.name)
        assert torch.allclose(new, truncated(old, 3), atol=1e-5 * float(old.norm()))
        assert layer.error == pytest.approx(float((old - new).norm() / old.norm()), rel=1e-4, abs=1e-6)
        s = torch.linalg.svdvals(old)
        assert layer.energy == pytest.approx(float(s[:3].pow(2).sum() / s.pow(2).sum()), rel=1e-5)
        assert float(after[f"{layer.name}.alpha"]) == 1.5  # one alpha, conv modules too
    assert set(after) == set(before) and all(layer.error > 0.01 for layer in result.layers)
    assert (meta["ss_network_dim"], meta["ss_network_alpha"]) == ("3", "1.5")
    assert json.loads(meta["ss_network_args"]) == {"conv_dim": "3", "conv_alpha": "1.5"}
    assert meta["ss_output_name"] == "sks"
    assert meta["ss_training_comment"].endswith("from 4-8 by curate; trained")
    assert meta["curate_resized_from"] == "sks.safetensors"
    assert meta["sshs_model_hash"] == tensor_hash(result.output)


def test_resize_to_the_same_rank_is_lossless(model: Path, lora8: Path, tmp_path: Path) -> None:
    result = resize_lora(lora8, tmp_path / "same.safetensors", 8)
    before, _ = load_network(lora8)
    after, meta = load_network(result.output)
    assert {x.new_rank for x in result.layers} == {8, 4}  # conv modules are not raised to 8
    for layer in result.layers:
        old = dense(before, layer.name)
        assert torch.allclose(dense(after, layer.name), old, atol=1e-6 * float(old.norm()))
        assert layer.error < 1e-6 and layer.energy == pytest.approx(1.0)
    assert meta["ss_network_alpha"] == "4.0"
    # a fixed-rank file loads back into curate's own network
    pipe = _pipeline(model)
    net = create_network("lora", pipe.unet, [pipe.text_encoder], dim=8, alpha=4.0, conv_dim=4, conv_alpha=4.0)
    net.load_kohya_state_dict(after)


def _dynamic_rank(s: Any, method: str, param: float) -> int:
    if method == "sv_ratio":
        return int((s >= s[0] / param).sum())
    values = s.pow(2) if method == "sv_fro" else s
    share = torch.cumsum(values, 0) / values.sum()
    target = param ** 2 if method == "sv_fro" else param
    return int((share < target).sum()) + 1


@pytest.mark.parametrize(("method", "param"), [("sv_ratio", 2.0), ("sv_fro", 0.9), ("sv_cumulative", 0.5)])
def test_dynamic_resize_picks_ranks_as_specified(lora8: Path, tmp_path: Path, method: str,
                                                  param: float) -> None:
    result = resize_lora(lora8, tmp_path / "dyn.safetensors", 6, dynamic=method, param=param)
    before, _ = load_network(lora8)
    after, meta = load_network(result.output)
    for layer in result.layers:
        old = dense(before, layer.name)
        s = torch.linalg.svdvals(old)[: layer.old_rank]
        assert layer.new_rank == min(6, _dynamic_rank(s, method, param)), layer.name
        assert torch.allclose(dense(after, layer.name), truncated(old, layer.new_rank),
                              atol=1e-5 * float(old.norm()))
    assert len({x.new_rank for x in result.layers}) > 1  # the point of a dynamic resize
    assert meta["ss_network_dim"] == "Dynamic"
    assert {float(after[k]) for k in after if k.endswith("alpha")} == {3.0}  # one alpha: 4/8 * 6


def test_diffusers_loads_a_dynamic_resize(model: Path, lora8: Path, tmp_path: Path) -> None:
    result = resize_lora(lora8, tmp_path / "dyn.safetensors", 8, dynamic="sv_fro", param=0.8,
                         save_precision="float")
    expected = _merged(model, result.output)
    context, sample = _diffusers(model, result.output)
    assert torch.allclose(context, expected[0], atol=1e-4) and torch.allclose(sample, expected[1], atol=1e-4)


def test_resize_refuses_what_it_cannot_do(lora8: Path, tmp_path: Path) -> None:
    with pytest.raises(CurateError, match="needs --param"):
        resize_lora(lora8, tmp_path / "x.safetensors", 4, dynamic="sv_fro")
    with pytest.raises(CurateError, match="overwrite"):
        resize_lora(lora8, lora8, 4)
    loha = _loha(tmp_path / "loha.safetensors")
    with pytest.raises(CurateError, match="LoHa"):
        resize_lora(loha, tmp_path / "y.safetensors", 2)


# ---------------------------------------------------------------- info


def _dataset(root: Path) -> Path:
    import skimage.data

    (root / "2_sks").mkdir(parents=True)
    for name in ("astronaut", "coffee"):
        image = Image.fromarray(getattr(skimage.data, name)()).convert("RGB").resize((64, 64))
        image.save(root / "2_sks" / f"{name}.png")
        (root / "2_sks" / f"{name}.txt").write_text(f"sks, {name}, photo", encoding="utf-8")
    return root


@pytest.mark.parametrize("network", ["lora", "ia3"])
def test_info_on_curate_trained_files(model: Path, tmp_path: Path, network: str) -> None:
    config = TrainConfig(network=network, network_dim=4, network_alpha=2.0,
                         conv_dim=2 if network == "lora" else None, resolution=64, min_bucket_reso=64,
                         max_bucket_reso=64, batch_size=2, max_train_steps=1, learning_rate=1e-3, seed=3)
    dataset = _dataset(tmp_path / "data")
    path = loop.train(dataset, model, tmp_path / "out", config, device=torch.device("cpu")).output
    info = lora_info(path)
    tensors, _ = load_network(path)
    if network == "lora":
        assert info.kind == "LoCon" and info.dims.mode == 4 and info.conv_dims.mode == 2
        assert info.alphas[0][0] == 2.0 and info.training["network_dim"] == "4"
        modules = {k.split(".")[0] for k in tensors}
    else:
        assert info.kind == "iA3" and info.dims.mode is None and info.alphas == []
        modules = {k.split(".")[0] for k in tensors if k.endswith(".on_input")}
    assert sum(info.modules.values()) == len(modules)
    assert info.modules["te"] == len({m for m in modules if m.startswith("lora_te_")})
    assert info.base_model["ss_base_model_version"] == "sd_v1"
    assert info.base_model["ss_sd_model_name"] == "model"
    assert info.training["steps"] == "1" and info.training["optimizer"]
    assert dict(info.tags) == {"sks": 2, "photo": 2, "astronaut": 1, "coffee": 1}
    assert info.parameters == sum(t.numel() for t in tensors.values()) and info.has_metadata


def _loha(path: Path) -> Path:
    """A LyCORIS LoHa file as LyCORIS names it: hada_w1_a/b, hada_w2_a/b, alpha; one conv with hada_t."""
    gen = torch.Generator().manual_seed(3)
    tensors = {}
    for name, (out, inp, rank) in {"lora_unet_mid_block_attentions_0_proj_out": (64, 64, 6),
                                   "lora_te_text_model_encoder_layers_0_mlp_fc1": (64, 32, 6)}.items():
        tensors |= {f"{name}.hada_w1_a": torch.randn(out, rank, generator=gen),
                    f"{name}.hada_w1_b": torch.randn(rank, inp, generator=gen),
                    f"{name}.hada_w2_a": torch.randn(out, rank, generator=gen),
                    f"{name}.hada_w2_b": torch.randn(rank, inp, generator=gen),
                    f"{name}.alpha": torch.tensor(3.0)}
    conv = "lora_unet_mid_block_resnets_0_conv1"
    tensors |= {f"{conv}.hada_w1_a": torch.randn(2, 64), f"{conv}.hada_w1_b": torch.randn(2, 64),
                f"{conv}.hada_t1": torch.randn(2, 2, 3, 3), f"{conv}.alpha": torch.tensor(1.0)}
    tags = {"5_a": {"x": 1, "y": 4}, "3_b": {"x": 2}}
    save_file(tensors, str(path), {"ss_network_module": "lycoris.kohya",
                                   "ss_network_args": json.dumps({"algo": "loha", "conv_dim": "2"}),
                                   "ss_tag_frequency": json.dumps(tags)})
    return path


def test_info_on_a_lycoris_loha(tmp_path: Path) -> None:
    info = lora_info(_loha(tmp_path / "loha.safetensors"))
    assert info.kind == "LoHa" and info.modules == {"te": 1, "unet": 2}
    assert (info.dims.mode, info.dims.count, info.conv_dims.mode) == (6, 2, 2)
    assert info.alphas == [(3.0, 2), (1.0, 1)]
    assert info.tags == [("y", 4), ("x", 3)]  # merged over both folders
    assert info.training["network_module"] == "lycoris.kohya" and info.base_model == {}


def test_info_without_metadata_and_refusals(tmp_path: Path) -> None:
    path = tmp_path / "bare.safetensors"
    name = "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn2_to_k"
    save_file({f"{name}.lora_down.weight": torch.zeros(16, 32, dtype=torch.float16),
               f"{name}.lora_up.weight": torch.zeros(32, 16, dtype=torch.float16)}, str(path))
    info = lora_info(path)
    assert (info.kind, info.modules, info.dims.mode, info.alphas) == ("LoRA", {"unet": 1}, 16, [])
    assert not info.has_metadata and info.tags == [] and info.training == {} and info.dtypes == ["F16"]
    pickle = tmp_path / "old.ckpt"
    pickle.write_bytes(b"not opened")
    with pytest.raises(CurateError, match="pickle"):
        lora_info(pickle)
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"12345678")
    with pytest.raises(CurateError, match="not a readable safetensors"):
        lora_info(junk)


# ---------------------------------------------------------------- CLI


def _json(args: list[str]) -> dict[str, Any]:
    result = CliRunner().invoke(cli, ["lora", *args, "--json"])
    assert result.exit_code == 0, result.output
    return json.loads(result.output)


def test_cli_json(model: Path, tuned: tuple[Path, Any], lora8: Path, tmp_path: Path) -> None:
    info = _json(["info", str(lora8), "--tags", "1"])
    assert info["kind"] == "LoCon" and info["dims"]["mode"] == 8
    assert info["tags"] == [{"tag": "sks", "count": 2}]
    resized = _json(["resize", str(lora8), "--dim", "2", "--out", str(tmp_path / "r2.safetensors")])
    assert resized["ranks"] == {"2": len(resized["layers"])} and 0 < resized["energy"] < 1
    dynamic = _json(["resize", str(lora8), "--dim", "8", "--dynamic", "sv_ratio", "--param", "3",
                     "--out", str(tmp_path / "d.safetensors"), "--save-precision", "bf16"])
    assert dynamic["dynamic"] == "sv_ratio" and dynamic["precision"] == "bf16"
    out = tmp_path / "x.safetensors"
    extracted = _json(["extract", "--base", str(model), "--tuned", str(tuned[0]), "--dim", "8",
                       "--conv-dim", "4", "--clamp-quantile", "1", "--out", str(out)])
    assert {x["name"] for x in extracted["layers"]} == set(PLANTED)
    assert extracted["energy"] == pytest.approx(1.0)
    human = CliRunner().invoke(cli, ["lora", "info", str(out)])
    assert human.exit_code == 0 and "LoCon" in human.output and "sd_v1" in human.output
    bad = CliRunner().invoke(cli, ["lora", "resize", str(lora8), "--dim", "2", "--dynamic", "sv_fro"])
    assert bad.exit_code == 2 and "needs --param" in bad.output


# ---------------------------------------------------------------- extract on SDXL

# sd-scripts' SDXL names on the tiny SDXL model (one layer per level: input_blocks 1-3, output 0-3)
SDXL_PLANTED = {
    "lora_unet_input_blocks_3_1_transformer_blocks_1_attn2_to_k": 3,  # cross-attention, 80 inputs
    "lora_unet_middle_block_1_transformer_blocks_0_ff_net_2": 3,
    "lora_unet_output_blocks_1_1_proj_out": 2,
    "lora_unet_output_blocks_2_0_in_layers_2": 3,  # up_blocks.1.resnets.0.conv1, 3x3
    "lora_te1_text_model_encoder_layers_0_self_attn_q_proj": 2,
    "lora_te2_text_model_encoder_layers_1_self_attn_k_proj": 2,
}


def _sdxl_outputs(pipe: Any) -> tuple[Any, Any, Any]:
    gen = torch.Generator().manual_seed(0)
    latents = torch.randn(2, 4, 8, 8, generator=gen)
    with torch.no_grad():
        embeds, _, pooled, _ = pipe.encode_prompt(["sks, a cat", "a rocket"],
                                                  do_classifier_free_guidance=False)
        sample = pipe.unet(latents, torch.tensor([10, 700]), embeds, added_cond_kwargs={
            "text_embeds": pooled, "time_ids": torch.tensor([[64.0, 64, 0, 0, 64, 64]] * 2)}).sample
    return embeds, pooled, sample


@pytest.fixture(scope="module")
def sdxl_tuned(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, dict[str, Any]]:
    """(base, tuned, planted deltas): the tiny SDXL model and a copy with known-rank deltas."""
    from diffusers import StableDiffusionXLPipeline

    from fixtures.tiny_sdxl import build_tiny_sdxl

    base = build_tiny_sdxl(tmp_path_factory.mktemp("sdxl") / "base")
    out = tmp_path_factory.mktemp("sdxl_tuned") / "tuned"
    shutil.copytree(base, out)
    pipe = StableDiffusionXLPipeline.from_pretrained(out)
    net = create_network("lora", pipe.unet, [pipe.text_encoder, pipe.text_encoder_2], dim=1, conv_dim=1)
    layers = {m.kohya_name: m.layer for m in net.adapters()}
    gen = torch.Generator().manual_seed(12)
    deltas = {}
    with torch.no_grad():
        for name, rank in SDXL_PLANTED.items():
            weight = layers[name].weight
            a, b = torch.randn(weight.shape[0], rank, generator=gen), torch.randn(rank, weight[0].numel(),
                                                                                  generator=gen)
            deltas[name] = (a @ b * 0.05).reshape(weight.shape)
            weight.add_(deltas[name])
    for part in ("unet", "text_encoder", "text_encoder_2"):
        getattr(pipe, part).save_pretrained(out / part)
    return base, out, deltas


def test_sdxl_extract_recovers_the_planted_delta(sdxl_tuned: tuple[Path, Path, Any], tmp_path: Path) -> None:
    from diffusers import StableDiffusionXLPipeline

    base, tuned, deltas = sdxl_tuned
    result = extract_lora(base, tuned, tmp_path / "sdxl.safetensors", dim=4, conv_dim=4, clamp_quantile=1.0,
                          save_precision="float")
    assert {x.name for x in result.layers} == set(SDXL_PLANTED) and not result.text_encoder_skipped
    tensors, meta = load_network(result.output)
    for layer in result.layers:
        assert torch.allclose(dense(tensors, layer.name), deltas[layer.name].double().flatten(1), atol=1e-5)
        assert layer.rank == 4 and layer.error < 1e-5
    # 64 channels from below + 32 from the skip connection
    assert tensors["lora_unet_output_blocks_2_0_in_layers_2.lora_down.weight"].shape == (4, 96, 3, 3)
    # each encoder has one of q/k_proj only: diffusers needs an out_proj key per encoder to read it
    assert [m.split("_")[1] for m in result.markers] == ["te1", "te2"]
    assert meta["ss_base_model_version"] == "sdxl_base_v1-0" and meta["ss_v2"] == "False"
    assert meta["modelspec.architecture"] == "stable-diffusion-xl-v1-base/lora"
    expected = _sdxl_outputs(StableDiffusionXLPipeline.from_pretrained(tuned))
    pipe = StableDiffusionXLPipeline.from_pretrained(base)
    plain = _sdxl_outputs(pipe)
    pipe.load_lora_weights(str(result.output))
    for name, got, want, before in zip(("context", "pooled", "sample"), _sdxl_outputs(pipe), expected, plain,
                                       strict=True):
        assert torch.allclose(got, want, atol=1e-4), name
        assert (got - before).abs().max() > 1e-3, name
