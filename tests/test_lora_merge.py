"""`merge_networks`: LoRA, LoCon and iA3 files baked into the tiny model equal a dense reference
computed here from the raw tensors, and the merged UNet computes what the hooked network does."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("diffusers")

from safetensors.torch import load_file  # noqa: E402

from curate.atomic import TMP_PREFIX  # noqa: E402
from curate.errors import CurateError  # noqa: E402
from curate.trainer.formats import save_network  # noqa: E402
from curate.trainer.merge import describe, merge_networks, parse_network_arg  # noqa: E402
from curate.trainer.model import load_models  # noqa: E402
from curate.trainer.networks import create_network  # noqa: E402

CPU = torch.device("cpu")
UNET_FILE = "unet/diffusion_pytorch_model.safetensors"
TE_FILE = "text_encoder/model.safetensors"

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def model(tiny_sd: Path) -> Path:
    return tiny_sd


def random_network(model: Path, out: Path, name: str, seed: int, **options: Any) -> Path:
    """A network on the tiny model with random (non-zero) weights, saved as the trainer saves."""
    models = load_models(model, CPU)
    net = create_network(name, models.unet, [models.text_encoder], **options)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for key, value in net.state_dict().items():
            if value.is_floating_point() and not key.endswith("alpha"):
                value.copy_(torch.randn(value.shape, generator=gen) * 0.2)
    save_network(out, net.kohya_state_dict(torch.float32), net.metadata())
    return out


def base_weights(model: Path) -> dict[str, torch.Tensor]:
    """kohya module name -> base weight, read from the diffusers files (no trainer code)."""
    weights = {}
    for prefix, file in (("lora_unet_", UNET_FILE), ("lora_te_text_model_", TE_FILE)):
        for key, value in load_file(str(model / file)).items():
            if key.endswith(".weight") and value.dim() >= 2:
                path = key.removesuffix(".weight").removeprefix("text_model.")
                weights[prefix + path.replace(".", "_")] = value
    return weights


def reference(model: Path, networks: list[tuple[Path, float]],
              block_scale: Any = lambda _name: 1.0) -> dict[str, torch.Tensor]:
    """The merge, computed densely from the raw tensors of each file."""
    weights = {k: v.clone() for k, v in base_weights(model).items()}
    for path, strength in networks:
        raw = load_file(str(path))
        for name in {k.split(".")[0] for k in raw}:
            m = strength * block_scale(name)
            w = weights[name]
            if f"{name}.lora_up.weight" in raw:
                up, down = raw[f"{name}.lora_up.weight"], raw[f"{name}.lora_down.weight"]
                scale = float(raw[f"{name}.alpha"]) / down.shape[0]
                up2 = up.reshape(up.shape[0], up.shape[1])
                # a 1x1 up after a kxk down is one kxk conv
                delta = torch.einsum("or,rikl->oikl", up2, down) if down.dim() == 4 else up2 @ down
                weights[name] = w + m * scale * delta.reshape(w.shape)
            else:
                vec = raw[f"{name}.weight"]
                if int(raw[f"{name}.on_input"]):
                    weights[name] = w * (1 + m * vec)[None, :]
                else:
                    weights[name] = w * (1 + m * vec)[:, None]
    return weights


def assert_merged(out: Path, expected: dict[str, torch.Tensor]) -> None:
    got = base_weights(out)
    assert got.keys() == expected.keys()
    for name, value in expected.items():
        torch.testing.assert_close(got[name], value, atol=1e-5, rtol=1e-5, msg=name)


@pytest.fixture(scope="module")
def locon(model: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("nets") / "locon.safetensors"
    return random_network(model, out, "lora", 1, dim=4, alpha=2, conv_dim=3, conv_alpha=1.5)


@pytest.fixture(scope="module")
def lora(model: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return random_network(model, tmp_path_factory.mktemp("nets") / "lora.safetensors", "lora", 2, dim=2)


@pytest.fixture(scope="module")
def ia3(model: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return random_network(model, tmp_path_factory.mktemp("nets") / "ia3.safetensors", "ia3", 3)


def test_locon_3x3_merge_equals_dense_reference(model: Path, locon: Path, tmp_path: Path) -> None:
    raw = load_file(str(locon))
    assert any(v.dim() == 4 and v.shape[2:] == (3, 3) for v in raw.values())  # really has 3x3 convs
    result = merge_networks(model, [(locon, 0.7)], tmp_path / "out", save_precision="float")
    assert_merged(tmp_path / "out", reference(model, [(locon, 0.7)]))
    assert result.networks[0].lora_layers == len({k.split(".")[0] for k in raw})
    assert result.unknown == []
    data = json.loads(json.dumps(result.as_dict()))
    assert data["networks"][0]["path"] == str(locon) and data["output"] == str(tmp_path / "out")
    assert f"locon.safetensors x0.7: {result.networks[0].lora_layers} LoRA" in describe(result)


def test_two_networks_and_ia3_in_order(model: Path, lora: Path, ia3: Path, locon: Path,
                                       tmp_path: Path) -> None:
    raw = load_file(str(ia3))
    sides = {int(v) for k, v in raw.items() if k.endswith(".on_input")}
    assert sides == {0, 1}  # iA3 on outputs (to_k, to_v, k/v_proj) and inputs (ff.net.2, fc2)
    nets = [(lora, 0.5), (ia3, 0.6), (locon, -1.3)]
    merge_networks(model, nets, tmp_path / "out", save_precision="float")
    assert_merged(tmp_path / "out", reference(model, nets))


def test_block_weights_zero_in_blocks(model: Path, locon: Path, tmp_path: Path) -> None:
    def scale(name: str) -> float:  # IN blocks off, OUT03 (up_blocks.1's resnet and attention 0) at half
        if "down_blocks" in name:
            return 0.0
        return 0.5 if "up_blocks_1_attentions_0" in name or "up_blocks_1_resnets_0" in name else 1.0

    result = merge_networks(model, [(locon, 1.0)], tmp_path / "out", save_precision="float",
                            block_weights="IN=0,OUT03=0.5")
    expected = reference(model, [(locon, 1.0)], scale)
    assert_merged(tmp_path / "out", expected)
    base = base_weights(model)
    down = [n for n in base if "down_blocks" in n]
    assert down and all(torch.equal(expected[n], base[n]) for n in down)
    assert result.block_weights is not None and result.block_weights["IN04"] == 0


@pytest.mark.parametrize(("fixture", "strength"), [("locon", 0.8), ("ia3", 1.5)])
def test_merged_unet_equals_hooked_network(model: Path, fixture: str, strength: float, tmp_path: Path,
                                           request: pytest.FixtureRequest) -> None:
    path: Path = request.getfixturevalue(fixture)
    merge_networks(model, [(path, strength)], tmp_path / "out", save_precision="float")
    merged = load_models(tmp_path / "out", CPU)
    base = load_models(model, CPU)
    options = {"dim": 4, "alpha": 2, "conv_dim": 3, "conv_alpha": 1.5} if fixture == "locon" else {}
    net = create_network("lora" if fixture == "locon" else "ia3", base.unet, [base.text_encoder], **options)
    net.load_kohya_state_dict(load_file(str(path)))
    net.set_multiplier(strength)
    net.apply_to()
    gen = torch.Generator().manual_seed(0)
    latents = torch.randn(2, 4, 8, 8, generator=gen)
    ids = torch.randint(0, 100, (2, 77), generator=gen)
    with torch.no_grad():
        want = base.unet(latents, 500, base.text_encoder(ids)[0]).sample
        got = merged.unet(latents, 500, merged.text_encoder(ids)[0]).sample
        plain = load_models(model, CPU)
        unchanged = plain.unet(latents, 500, plain.text_encoder(ids)[0]).sample
    torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)
    assert (got - unchanged).abs().max() > 1e-3  # the network really changes the output


def test_fp16_output_loads_with_diffusers(model: Path, lora: Path, tmp_path: Path) -> None:
    from diffusers import StableDiffusionPipeline

    out = tmp_path / "merged"
    merge_networks(model, [(lora, 1.0)], out)
    from curate.atomic import UMASK

    assert out.stat().st_mode & 0o777 == 0o777 & ~UMASK  # not mkdtemp's 0700
    for file in (UNET_FILE, TE_FILE, "vae/diffusion_pytorch_model.safetensors"):
        assert {v.dtype for v in load_file(str(out / file)).values()} == {torch.float16}
    pipe = StableDiffusionPipeline.from_pretrained(out, local_files_only=True, dtype=torch.float32)
    image = pipe("sks", num_inference_steps=2, height=64, width=64, output_type="np").images
    assert image.shape == (1, 64, 64, 3)
    index = json.loads((out / "model_index.json").read_text())
    assert index == json.loads((model / "model_index.json").read_text())
    assert (out / "scheduler" / "scheduler_config.json").read_text() == \
        (model / "scheduler" / "scheduler_config.json").read_text()
    expected = reference(model, [(lora, 1.0)])
    got = base_weights(out)
    for name in expected:
        torch.testing.assert_close(got[name].float(), expected[name].half().float(), atol=0, rtol=0)


def test_single_file_output(model: Path, lora: Path, tmp_path: Path) -> None:
    merge_networks(model, [(lora, 0.9)], tmp_path / "dense", save_precision="float")
    merge_networks(model, [(lora, 0.9)], tmp_path / "merged.safetensors", save_precision="float",
                   out_format="single-file")
    state = load_file(str(tmp_path / "merged.safetensors"))
    assert any(k.startswith("model.diffusion_model.input_blocks.1.1.") for k in state)
    single = load_models(tmp_path / "merged.safetensors", CPU, model_config=str(model))
    dense = load_models(tmp_path / "dense", CPU)
    for part in ("unet", "vae", "text_encoder"):
        want = getattr(dense, part).state_dict()
        got = getattr(single, part).state_dict()
        for key, value in want.items():
            torch.testing.assert_close(got[key], value, atol=0, rtol=0, msg=f"{part}.{key}")


def test_single_file_base(model: Path, lora: Path, tmp_path: Path) -> None:
    from fixtures.tiny_sd_single_file import build_single_file

    single = build_single_file(model, tmp_path / "base.safetensors")
    merge_networks(single, [(lora, 0.4)], tmp_path / "out", save_precision="float", model_config=str(model))
    assert_merged(tmp_path / "out", reference(model, [(lora, 0.4)]))
    load_models(tmp_path / "out", CPU)


def test_unknown_keys_are_reported_or_refused(model: Path, lora: Path, tmp_path: Path) -> None:
    raw = load_file(str(lora))
    name = next(k.split(".")[0] for k in raw if k.startswith("lora_unet_"))
    raw |= {f"{name}.dora_scale": torch.ones(1),  # a DoRA module: merging it as a LoRA would be wrong
            "lora_unet_not_a_layer.lora_down.weight": torch.ones(2, 4),
            "lora_unet_not_a_layer.lora_up.weight": torch.ones(4, 2)}
    odd = tmp_path / "odd.safetensors"
    save_network(odd, raw, {})
    result = merge_networks(model, [(odd, 1.0)], tmp_path / "out", save_precision="float")
    assert f"odd.safetensors: {name}.dora_scale" in result.unknown
    assert "odd.safetensors: lora_unet_not_a_layer.lora_down.weight" in result.unknown
    assert len(result.unknown) == 6  # the whole DoRA module (4 keys) and both keys of the stray one
    assert "6 keys NOT merged" in describe(result)
    got, base = base_weights(tmp_path / "out"), base_weights(model)
    assert torch.equal(got[name], base[name])  # the module with an unknown key is not merged
    with pytest.raises(CurateError, match="6 keys not merged"):
        merge_networks(model, [(odd, 1.0)], tmp_path / "strict", strict=True)
    assert not (tmp_path / "strict").exists()


def test_errors(model: Path, lora: Path, tmp_path: Path) -> None:
    foreign = tmp_path / "foreign.safetensors"
    save_network(foreign, {"lora_unet_input_blocks_99_x.lora_down.weight": torch.ones(1, 2),
                           "lora_unet_input_blocks_99_x.lora_up.weight": torch.ones(2, 1)}, {})
    with pytest.raises(CurateError, match="none of its 2 keys fit"):
        merge_networks(model, [(foreign, 1.0)], tmp_path / "out")
    raw = load_file(str(lora))
    name = next(k.split(".")[0] for k in raw if k.endswith("_to_q.lora_down.weight"))
    raw[f"{name}.lora_up.weight"] = torch.ones(7, raw[f"{name}.lora_up.weight"].shape[1])
    bad = tmp_path / "bad.safetensors"
    save_network(bad, raw, {})
    with pytest.raises(CurateError, match=f"bad.safetensors: {name} does not fit"):
        merge_networks(model, [(bad, 1.0)], tmp_path / "out")
    with pytest.raises(CurateError, match="unknown preset"):
        merge_networks(model, [(lora, 1.0)], tmp_path / "out", block_weights="SKIN")
    with pytest.raises(CurateError, match="no such network"):
        merge_networks(model, [(tmp_path / "missing.safetensors", 1.0)], tmp_path / "out")
    with pytest.raises(CurateError, match="overwrite an input"):
        merge_networks(model, [(lora, 1.0)], model)
    assert not (tmp_path / "out").exists()


def test_output_is_replaced_atomically(model: Path, lora: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "stale.txt").write_text("old")
    merge_networks(model, [(lora, 1.0)], out)
    assert not (out / "stale.txt").exists() and (out / "model_index.json").is_file()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(TMP_PREFIX)]


@pytest.mark.parametrize(("text", "parsed"), [
    ("a.safetensors", (Path("a.safetensors"), 1.0)),
    ("dir/a.safetensors:0.6", (Path("dir/a.safetensors"), 0.6)),
    ("x.safetensors:-1", (Path("x.safetensors"), -1.0)),
    ("C:\\loras\\a.safetensors", (Path("C:\\loras\\a.safetensors"), 1.0)),
])
def test_network_argument(text: str, parsed: tuple[Path, float]) -> None:
    assert parse_network_arg(text) == parsed
    with pytest.raises(CurateError, match="NET:STRENGTH"):
        parse_network_arg("a.safetensors:strong")


def test_cli_merge_and_blocks(model: Path, lora: Path, ia3: Path, tmp_path: Path) -> None:
    from click.testing import CliRunner

    from curate.cli import cli
    from curate.trainer.blocks import block_of

    out = tmp_path / "merged"
    args = ["lora", "merge", "--base", str(model), f"{lora}:0.5", str(ia3), "--out", str(out),
            "--precision", "float", "--blocks", "IN=0", "--json"]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert [n["strength"] for n in data["networks"]] == [0.5, 1.0]
    assert_merged(out, reference(model, [(lora, 0.5), (ia3, 1.0)],
                                 lambda name: 0.0 if (block_of(name) or "").startswith("IN") else 1.0))
    shown = CliRunner().invoke(cli, ["lora", "blocks", "OUTALL", "--json"])
    weights = {row["block"]: row["weight"] for row in json.loads(shown.stdout)}
    assert weights["OUT03"] == 1.0 and weights["IN04"] == 0.0 and weights["M00"] == 0.0
    bad = CliRunner().invoke(cli, ["lora", "blocks", "1,2,3"])
    assert bad.exit_code == 2 and "17" in bad.stderr


# --- SDXL: both text encoders, sd-scripts' SGM-layout UNet names, SDXL block ids -------------------

@pytest.fixture(scope="module")
def sdxl(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from fixtures.tiny_sdxl import build_tiny_sdxl

    return build_tiny_sdxl(tmp_path_factory.mktemp("tiny_sdxl") / "model")


def sdxl_layers(models: Any) -> dict[str, torch.nn.Module]:
    """kohya name -> layer for everything a LoCon or an iA3 adapts (the trainer's own naming)."""
    encoders = models.text_encoders
    lora = create_network("lora", models.unet, encoders, dim=1, conv_dim=1)
    ia3 = create_network("ia3", models.unet, encoders)
    return {m.kohya_name: m.layer for net in (lora, ia3) for m in net.adapters()}


@pytest.fixture(scope="module")
def sdxl_nets(sdxl: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("sdxl_nets")
    models = load_models(sdxl, CPU)
    out = {}
    for seed, (name, kind, options) in enumerate([("locon", "lora", {"dim": 4, "alpha": 2, "conv_dim": 3}),
                                                  ("ia3", "ia3", {})]):
        net = create_network(kind, models.unet, models.text_encoders, **options)
        gen = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for key, value in net.state_dict().items():
                if value.is_floating_point() and not key.endswith("alpha"):
                    value.copy_(torch.randn(value.shape, generator=gen) * 0.2)
        out[name] = folder / f"{name}.safetensors"
        save_network(out[name], net.kohya_state_dict(torch.float32), net.metadata())
    return out


def sdxl_reference(model: Path, networks: list[tuple[Path, float]],
                   scale: Any = lambda _name: 1.0) -> dict[str, torch.Tensor]:
    """Every parameter of the merged SDXL model (component.key), computed densely from the raw files."""
    models = load_models(model, CPU)
    layers = sdxl_layers(models)
    weights = {name: layer.weight.detach().clone() for name, layer in layers.items()}
    for path, strength in networks:
        raw = load_file(str(path))
        for name in {k.split(".")[0] for k in raw}:
            m, w = strength * scale(name), weights[name]
            if f"{name}.lora_up.weight" in raw:
                up, down = raw[f"{name}.lora_up.weight"].flatten(1), raw[f"{name}.lora_down.weight"]
                delta = torch.einsum("or,rikl->oikl", up, down) if down.dim() == 4 else up @ down
                weights[name] = w + m * float(raw[f"{name}.alpha"]) / down.shape[0] * delta.reshape(w.shape)
            elif int(raw[f"{name}.on_input"]):
                weights[name] = w * (1 + m * raw[f"{name}.weight"]).reshape(1, -1, *([1] * (w.dim() - 2)))
            else:
                weights[name] = w * (1 + m * raw[f"{name}.weight"]).reshape(-1, *([1] * (w.dim() - 1)))
    by_param = {id(layer.weight): name for name, layer in layers.items()}
    expected = {}
    for part in ("unet", "vae", "text_encoder", "text_encoder_2"):
        for key, param in getattr(models, part).named_parameters():
            name = by_param.get(id(param))
            expected[f"{part}.{key}"] = param.detach() if name is None else weights[name]
    return expected


def assert_sdxl_merged(models: Any, expected: dict[str, torch.Tensor]) -> None:
    for part in ("unet", "vae", "text_encoder", "text_encoder_2"):
        for key, param in getattr(models, part).named_parameters():
            torch.testing.assert_close(param.detach().float(), expected[f"{part}.{key}"],
                                       atol=1e-5, rtol=1e-5, msg=f"{part}.{key}")


def test_sdxl_merge_equals_dense_reference(sdxl: Path, sdxl_nets: dict[str, Path], tmp_path: Path) -> None:
    nets = [(sdxl_nets["locon"], 0.7), (sdxl_nets["ia3"], -0.5)]
    result = merge_networks(sdxl, nets, tmp_path / "out", save_precision="float")
    assert result.unknown == []
    for net, report in zip(nets, result.networks, strict=True):
        modules = {k.split(".")[0] for k in load_file(str(net[0]))}
        assert report.lora_layers + report.ia3_layers == len(modules)
    merged = load_models(tmp_path / "out", CPU)
    assert merged.sdxl
    expected = sdxl_reference(sdxl, nets)
    assert_sdxl_merged(merged, expected)
    base = sdxl_reference(sdxl, [])
    changed = {k.split(".")[0] for k in expected if not torch.equal(expected[k], base[k])}
    assert changed == {"unet", "text_encoder", "text_encoder_2"}


def test_sdxl_block_weights(sdxl: Path, sdxl_nets: dict[str, Path], tmp_path: Path) -> None:
    from curate.trainer.blocks import block_of

    def scale(name: str) -> float:  # IN off; OUT01 (up_blocks.0's resnet and attention 1) at half
        block = block_of(name) or ""
        return 0.0 if block.startswith("IN") else 0.5 if block == "OUT01" else 1.0

    locon = sdxl_nets["locon"]
    assert any(k.startswith("lora_unet_output_blocks_1_1_") for k in load_file(str(locon)))
    result = merge_networks(sdxl, [(locon, 1.0)], tmp_path / "out", save_precision="float",
                            block_weights="IN=0,OUT01=0.5")
    assert result.block_weights is not None and len(result.block_weights) == 20
    assert_sdxl_merged(load_models(tmp_path / "out", CPU), sdxl_reference(sdxl, [(locon, 1.0)], scale))
    with pytest.raises(CurateError, match="17 values; SDXL takes 12"):
        merge_networks(sdxl, [(locon, 1.0)], tmp_path / "x", block_weights=",".join(["1"] * 17))


def test_sdxl_merged_unet_equals_hooked_network(sdxl: Path, sdxl_nets: dict[str, Path],
                                                tmp_path: Path) -> None:
    from diffusers import StableDiffusionXLPipeline

    from curate.trainer.model import encode_conditioning
    from curate.trainer.noise import predict

    merge_networks(sdxl, [(sdxl_nets["locon"], 0.8)], tmp_path / "out")  # fp16 files
    for file in (UNET_FILE, TE_FILE, "text_encoder_2/model.safetensors"):
        assert {v.dtype for v in load_file(str(tmp_path / "out" / file)).values()} == {torch.float16}
    pipe = StableDiffusionXLPipeline.from_pretrained(tmp_path / "out", local_files_only=True,
                                                     dtype=torch.float32)
    image = pipe("sks", num_inference_steps=2, height=64, width=64, output_type="np").images
    assert image.shape == (1, 64, 64, 3)
    assert json.loads((tmp_path / "out" / "model_index.json").read_text()) == \
        json.loads((sdxl / "model_index.json").read_text())
    merged, base = load_models(tmp_path / "out", CPU), load_models(sdxl, CPU)
    net = create_network("lora", base.unet, base.text_encoders, dim=4, alpha=2, conv_dim=3)
    net.load_kohya_state_dict(load_file(str(sdxl_nets["locon"])))
    net.set_multiplier(0.8)
    net.apply_to()
    for module in (merged.unet, *merged.text_encoders):  # whatever dtype the fp16 files loaded as
        module.float()
    latents = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    steps, ids = torch.tensor([10, 600]), torch.tensor([[96, 64, 0, 0, 64, 64]] * 2)
    outputs = []
    with torch.no_grad():
        for models in (base, merged):
            context, pooled = encode_conditioning(models, ["sks, a cat", "a rocket"])
            outputs.append(predict(models, latents, steps, context, pooled, ids))
        net.remove()
        context, pooled = encode_conditioning(base, ["sks, a cat", "a rocket"])
        plain = predict(base, latents, steps, context, pooled, ids)
    torch.testing.assert_close(outputs[1], outputs[0], atol=2e-3, rtol=2e-3)  # fp16 rounding of the weights
    assert (outputs[1] - plain).abs().max() > 1e-2


def test_sdxl_single_file_output(sdxl: Path, sdxl_nets: dict[str, Path], tmp_path: Path) -> None:
    nets = [(sdxl_nets["ia3"], 1.2)]
    merge_networks(sdxl, nets, tmp_path / "merged.safetensors", save_precision="float",
                   out_format="single-file")
    state = load_file(str(tmp_path / "merged.safetensors"))
    open_clip = "conditioner.embedders.1.model.transformer.resblocks.0.attn.in_proj_"
    assert any(k.startswith(open_clip) for k in state)
    assert any(k.startswith("model.diffusion_model.label_emb.0.0.") for k in state)
    assert_sdxl_merged(load_models(tmp_path / "merged.safetensors", CPU, model_config=str(sdxl)),
                       sdxl_reference(sdxl, nets))
