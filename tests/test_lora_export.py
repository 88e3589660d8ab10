"""`curate lora export`: an iA3 trained on the tiny model becomes a kohya LoRA that diffusers
loads and that gives the iA3's model (A1111's merge, W * (1 + m*w)) at every multiplier."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("diffusers")
pytest.importorskip("peft")  # diffusers loads LoRA files through peft

from click.testing import CliRunner  # noqa: E402
from PIL import Image  # noqa: E402
from trainer_helpers import unet_and_text_outputs  # noqa: E402

from curate.cli import cli  # noqa: E402
from curate.errors import CurateError  # noqa: E402
from curate.trainer import loop  # noqa: E402
from curate.trainer.config import TrainConfig  # noqa: E402
from curate.trainer.export import export_ia3_to_lora, factorise  # noqa: E402
from curate.trainer.formats import load_network, save_network, tensor_hash  # noqa: E402
from curate.trainer.networks import IA3Module, create_network  # noqa: E402
from curate.trainer.networks.base import kohya_name, te_root_path  # noqa: E402

PREFIXES = ("lora_unet_", "lora_te_")

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def model(tiny_sd: Path) -> Path:
    return tiny_sd


@pytest.fixture(scope="module")
def ia3_file(model: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An iA3 trained for a few steps with `curate train`'s loop (UNet and text encoder)."""
    import skimage.data

    root = tmp_path_factory.mktemp("dataset")
    (root / "1_sks").mkdir()
    for name in ("astronaut", "coffee"):
        image = Image.fromarray(getattr(skimage.data, name)()).convert("RGB").resize((64, 64))
        image.save(root / "1_sks" / f"{name}.png")
        (root / "1_sks" / f"{name}.txt").write_text(f"sks, {name}", encoding="utf-8")
    config = TrainConfig(network="ia3", resolution=64, min_bucket_reso=64, max_bucket_reso=64, batch_size=2,
                         max_train_steps=3, learning_rate=5e-2, save_precision="float", seed=3)
    out = tmp_path_factory.mktemp("ia3")
    return loop.train(root, model, out, config, device=torch.device("cpu")).output


def _a1111_merged(model: Path, ia3_path: Path, multiplier: float) -> Any:
    """The base pipeline with A1111's iA3 merge applied to its weights."""
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(model)
    net = create_network("ia3", pipe.unet, [pipe.text_encoder])
    net.load_kohya_state_dict(load_network(ia3_path)[0])
    net.set_multiplier(multiplier)
    with torch.no_grad():
        for module in net.adapters():
            assert isinstance(module, IA3Module)
            module.layer.weight.copy_(module.scaled_weight(module.layer.weight))
    return pipe


@pytest.fixture(scope="module")
def exported(model: Path, ia3_file: Path, tmp_path_factory: pytest.TempPathFactory) -> Any:
    out = tmp_path_factory.mktemp("lora") / "sks-lora.safetensors"
    return export_ia3_to_lora(ia3_file, model, out, "float")


@pytest.mark.parametrize("multiplier", [1.0, 0.6])
def test_diffusers_gives_the_ia3_model(model: Path, ia3_file: Path, exported: Any, multiplier: float) -> None:
    from diffusers import StableDiffusionPipeline

    merged = _a1111_merged(model, ia3_file, multiplier)
    expected = unet_and_text_outputs(merged.unet, merged.text_encoder)
    pipe = StableDiffusionPipeline.from_pretrained(model)
    base = unet_and_text_outputs(pipe.unet, pipe.text_encoder)
    pipe.load_lora_weights(str(exported.output), adapter_name="ia3")
    pipe.set_adapters(["ia3"], adapter_weights=[multiplier])
    context, sample = unet_and_text_outputs(pipe.unet, pipe.text_encoder)
    assert torch.allclose(context, expected[0], atol=1e-5, rtol=1e-5)
    assert torch.allclose(sample, expected[1], atol=1e-5, rtol=1e-5)
    # the trained scales do move both models, so the equality above is not base == base
    assert (context - base[0]).abs().max() > 1e-3 and (sample - base[1]).abs().max() > 1e-4


def test_keys_shapes_and_metadata_follow_kohya(ia3_file: Path, exported: Any) -> None:
    ia3, _ = load_network(ia3_file)
    tensors, meta = load_network(exported.output)
    names = {key.rsplit(".", 2)[0] if ".lora_" in key else key.rsplit(".", 1)[0] for key in tensors}
    assert all(name.startswith(PREFIXES) for name in names)
    # the zero out_proj LoRA that makes diffusers read the text encoder's k/v_proj keys
    assert exported.marker == "lora_te_text_model_encoder_layers_0_self_attn_out_proj"
    assert not tensors[f"{exported.marker}.lora_up.weight"].any()
    assert names == {key.rsplit(".", 1)[0] for key in ia3 if key.endswith(".on_input")} | {exported.marker}
    assert len(tensors) == 3 * len(names) == 3 * (len(exported.layers) + 1)
    for name in names:
        parts = ("lora_down.weight", "lora_up.weight", "alpha")
        down, up, alpha = (tensors[f"{name}.{part}"] for part in parts)
        assert down.dim() == up.dim() == 2 and up.shape[1] == down.shape[0]
        assert alpha.dim() == 0 and float(alpha) == 64.0  # one alpha for all: the largest rank
        assert {down.dtype, up.dtype, alpha.dtype} == {torch.float32}
    for layer in exported.layers:
        out_dim, in_dim = layer.shape
        assert tensors[f"{layer.name}.lora_down.weight"].shape == (layer.rank, in_dim)
        assert tensors[f"{layer.name}.lora_up.weight"].shape == (out_dim, layer.rank)
        assert layer.rank == min(out_dim, in_dim)
    on_input = {x.name for x in exported.layers if x.on_input}
    assert on_input == {k.rsplit(".", 1)[0] for k, v in ia3.items() if k.endswith(".on_input") and int(v)}
    assert any(x.name.endswith("fc2") for x in exported.layers if x.on_input)
    assert meta["ss_network_module"] == "networks.lora" and meta["curate_exported_from"] == "ia3"
    assert (meta["ss_network_dim"], meta["ss_network_alpha"]) == ("Dynamic", "64.0")  # ranks 32 and 64
    assert meta["ss_output_name"] == "last" and meta["sshs_model_hash"] == tensor_hash(exported.output)
    assert json.loads(meta["curate_ia3_network_args"])["algo"] == "ia3"
    assert exported.lora_bytes == exported.output.stat().st_size > exported.ia3_bytes
    assert exported.ia3_bytes == ia3_file.stat().st_size


@pytest.mark.parametrize(("shape", "on_input", "rank"), [
    ((64, 32), False, 3), ((64, 32), True, 3),  # sparse scales: rank = non-zero count
    ((64, 32, 1, 1), False, 3), ((64, 32, 1, 1), True, 3),
    ((64, 32, 3, 3), False, 3), ((64, 32, 3, 3), True, 64),  # input side of a 3x3: only up = I works
])
def test_factorisation_is_exact(shape: tuple[int, ...], on_input: bool, rank: int) -> None:
    gen = torch.Generator().manual_seed(1)
    weight = torch.randn(shape, generator=gen)
    scale = torch.zeros(shape[1] if on_input else shape[0])
    scale[[0, 5, 7]] = torch.randn(3, generator=gen)
    up, down = factorise(weight, scale, on_input)
    assert up.shape[1] == down.shape[0] == rank
    assert up.shape[2:] == ((1, 1) if len(shape) == 4 else ())
    assert down.shape[1:] == shape[1:]
    delta = torch.einsum("or,rikl->oikl", up.flatten(1), down) if len(shape) == 4 else up @ down
    expected = weight * scale.reshape(_axis(on_input, len(shape)))
    assert torch.allclose(delta, expected, atol=1e-6)


def test_conv_and_sparse_layers_load_in_diffusers(model: Path, tmp_path: Path) -> None:
    """A LyCORIS-style iA3 on conv layers (1x1 proj_in, 3x3 resnet conv) and a half-zero to_k."""
    from diffusers import StableDiffusionPipeline

    gen = torch.Generator().manual_seed(2)
    targets = {"lora_unet_down_blocks_1_attentions_0_proj_in": (64, 0),
               "lora_unet_down_blocks_1_resnets_0_conv1": (64, 0),
               "lora_unet_mid_block_resnets_0_conv2": (64, 1),
               "lora_unet_up_blocks_1_attentions_0_transformer_blocks_0_attn2_to_k": (32, 0),
               "lora_te_text_model_encoder_layers_1_self_attn_v_proj": (32, 0)}
    tensors: dict[str, Any] = {}
    for name, (size, on_input) in targets.items():
        scale = torch.randn(size, generator=gen) * 0.3
        if name.endswith("to_k"):
            scale[::2] = 0
        tensors |= {f"{name}.weight": scale, f"{name}.on_input": torch.tensor(on_input)}
    source = tmp_path / "conv-ia3.safetensors"
    save_network(source, tensors, {"ss_network_module": "lycoris.kohya"})
    result = export_ia3_to_lora(source, model, tmp_path / "conv-lora.safetensors", "float")
    ranks = {x.name: x.rank for x in result.layers}
    assert ranks["lora_unet_up_blocks_1_attentions_0_transformer_blocks_0_attn2_to_k"] == 16  # half are zero

    expected_pipe = StableDiffusionPipeline.from_pretrained(model)
    with torch.no_grad():
        for name, (_, on_input) in targets.items():
            layer = _layer(expected_pipe, name)
            scale = tensors[f"{name}.weight"]
            layer.weight.mul_(1 + scale.reshape(_axis(bool(on_input), layer.weight.dim())))
    expected = unet_and_text_outputs(expected_pipe.unet, expected_pipe.text_encoder)
    pipe = StableDiffusionPipeline.from_pretrained(model)
    pipe.load_lora_weights(str(result.output))
    context, sample = unet_and_text_outputs(pipe.unet, pipe.text_encoder)
    assert torch.allclose(context, expected[0], atol=1e-5) and torch.allclose(sample, expected[1], atol=1e-5)


def _axis(on_input: bool, dims: int) -> tuple[int, ...]:
    """A scale vector's shape to broadcast over a weight's input (dim 1) or output (dim 0) axis."""
    return (1, -1, *[1] * (dims - 2)) if on_input else (-1, *[1] * (dims - 1))


def _layer(pipe: Any, kohya: str) -> Any:
    """The pipeline's layer of that kohya name, found independently of curate.trainer.export."""
    te = kohya.startswith("lora_te_")
    root = pipe.text_encoder if te else pipe.unet
    start = [te_root_path(root)] if te and te_root_path(root) else []
    for path, module in root.named_modules():
        if kohya_name("lora_te" if te else "lora_unet", *start, path) == kohya:
            return module
    raise KeyError(kohya)


def test_cli_json(model: Path, ia3_file: Path, tmp_path: Path) -> None:
    out = tmp_path / "sks-lora.safetensors"
    result = CliRunner().invoke(cli, ["lora", "export", str(ia3_file), "--model", str(model), "--to", "lora",
                                      "--out", str(out), "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["output"] == str(out) and data["precision"] == "fp16" and data["to"] == "lora"
    assert data["lora_bytes"] == out.stat().st_size and data["ia3_bytes"] == ia3_file.stat().st_size
    assert data["ratio"] > 1 and data["max_rank"] == 64
    assert {layer["rank"] for layer in data["layers"]} == {32, 64}
    tensors, _ = load_network(out)
    assert {t.dtype for t in tensors.values()} == {torch.float16}
    # fp16 factors: the same model to fp16 rounding
    from diffusers import StableDiffusionPipeline

    merged = _a1111_merged(model, ia3_file, 1.0)
    expected = unet_and_text_outputs(merged.unet, merged.text_encoder)
    pipe = StableDiffusionPipeline.from_pretrained(model)
    pipe.load_lora_weights(str(out))
    for got, want in zip(unet_and_text_outputs(pipe.unet, pipe.text_encoder), expected, strict=True):
        assert (got - want).abs().max() < 2e-3 * want.abs().max()


def test_non_ia3_inputs_are_refused(model: Path, tmp_path: Path) -> None:
    from diffusers import UNet2DConditionModel

    unet = UNet2DConditionModel.from_pretrained(model / "unet")
    lora = tmp_path / "lora.safetensors"
    network = create_network("lora", unet, [], dim=2, train_text_encoder=False)
    save_network(lora, network.kohya_state_dict(), {})
    with pytest.raises(CurateError, match="already a LoRA"):
        export_ia3_to_lora(lora, model, tmp_path / "out.safetensors")
    other = tmp_path / "other.safetensors"
    save_network(other, {"lora_unet_x.hada_w1_a": torch.zeros(2, 2)}, {})
    with pytest.raises(CurateError, match=r"a LoHa \(LyCORIS\) file; export turns iA3 into LoRA only"):
        export_ia3_to_lora(other, model, tmp_path / "out.safetensors")
    save_network(other, {"lora_unet_x.diff": torch.zeros(2, 2)}, {})
    with pytest.raises(CurateError, match="not an iA3 file"):
        export_ia3_to_lora(other, model, tmp_path / "out.safetensors")
    text = tmp_path / "notes.safetensors"
    text.write_text("hello", encoding="utf-8")
    result = CliRunner().invoke(cli, ["lora", "export", str(text), "--model", str(model)])
    assert result.exit_code == 2 and "not a readable safetensors file" in result.stderr
    assert not (tmp_path / "out.safetensors").exists()


def test_wrong_base_model_is_refused(model: Path, tmp_path: Path) -> None:
    name = "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn2_to_k"
    wrong = tmp_path / "wrong.safetensors"
    save_network(wrong, {f"{name}.weight": torch.ones(320), f"{name}.on_input": torch.tensor(0)}, {})
    with pytest.raises(CurateError, match="320 scales"):
        export_ia3_to_lora(wrong, model, tmp_path / "out.safetensors")
    missing = tmp_path / "missing.safetensors"
    nowhere = {"lora_unet_nowhere.weight": torch.ones(3), "lora_unet_nowhere.on_input": torch.tensor(0)}
    save_network(missing, nowhere, {})
    with pytest.raises(CurateError, match="no layer of"):
        export_ia3_to_lora(missing, model, tmp_path / "out.safetensors")


# --- SDXL: sd-scripts' SGM UNet names and both text encoders, loaded by StableDiffusionXLPipeline ---

@pytest.fixture(scope="module")
def sdxl_export(photos_dataset: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Any]:
    """(model, iA3 file, export result): an iA3 trained 3 steps on the tiny SDXL model, exported."""
    from fixtures.tiny_sdxl import build_tiny_sdxl

    model = build_tiny_sdxl(tmp_path_factory.mktemp("tiny_sdxl") / "model")
    config = TrainConfig(network="ia3", resolution=64, min_bucket_reso=64, max_bucket_reso=128, batch_size=4,
                         max_train_steps=3, learning_rate=5e-2, save_precision="float", seed=3)
    out = tmp_path_factory.mktemp("sdxl_ia3")
    ia3 = loop.train(photos_dataset, model, out, config, device=torch.device("cpu")).output
    return model, ia3, export_ia3_to_lora(ia3, model, out / "lora.safetensors", "float")


def _sdxl_outputs(pipe: Any) -> tuple[Any, Any, Any]:
    """Both encoders' context, bigG's pooled output and the UNet's prediction, as the pipeline runs them."""
    gen = torch.Generator().manual_seed(0)
    latents = torch.randn(2, 4, 8, 8, generator=gen)
    time_ids = torch.tensor([[96.0, 64, 0, 11, 64, 64]] * 2)
    with torch.no_grad():
        embeds, _, pooled, _ = pipe.encode_prompt(["sks, astronaut, photo", "a cat"],
                                                  do_classifier_free_guidance=False)
        sample = pipe.unet(latents, torch.tensor([10, 600]), embeds,
                           added_cond_kwargs={"text_embeds": pooled, "time_ids": time_ids}).sample
    return embeds, pooled, sample


@pytest.mark.parametrize("multiplier", [1.0, 0.6])
def test_sdxl_export_gives_the_ia3_model_in_diffusers(sdxl_export: tuple[Path, Path, Any],
                                                      multiplier: float) -> None:
    from diffusers import StableDiffusionXLPipeline

    model, ia3, result = sdxl_export
    names = {layer.name.split("_")[1] for layer in result.layers}
    assert names == {"unet", "te1", "te2"}
    assert any(layer.name.startswith("lora_unet_input_blocks_3_1_") for layer in result.layers)
    # each encoder is loaded on its own, so each needs its zero out_proj LoRA
    assert [m.split("_")[1] for m in result.markers] == ["te1", "te2"]
    expected_pipe = StableDiffusionXLPipeline.from_pretrained(model, local_files_only=True)
    encoders = [expected_pipe.text_encoder, expected_pipe.text_encoder_2]
    net = create_network("ia3", expected_pipe.unet, encoders)
    net.load_kohya_state_dict(load_network(ia3)[0])
    net.set_multiplier(multiplier)
    with torch.no_grad():  # A1111's iA3 merge
        for module in net.adapters():
            assert isinstance(module, IA3Module)
            module.layer.weight.copy_(module.scaled_weight(module.layer.weight))
    expected = _sdxl_outputs(expected_pipe)
    pipe = StableDiffusionXLPipeline.from_pretrained(model, local_files_only=True)
    base = _sdxl_outputs(pipe)
    pipe.load_lora_weights(str(result.output), adapter_name="ia3")
    pipe.set_adapters(["ia3"], adapter_weights=[multiplier])
    got = _sdxl_outputs(pipe)
    for name, a, b, plain in zip(("context", "pooled", "sample"), got, expected, base, strict=True):
        assert torch.allclose(a, b, atol=1e-5, rtol=1e-5), name
        assert (a - plain).abs().max() > 1e-4, name  # the trained scales move every output
