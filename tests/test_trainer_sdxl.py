"""SDXL: key names and counts on the real architecture (meta device), and training on the tiny
SDXL fixture: conditioning as diffusers computes it, sd-scripts' size numbers, files diffusers
loads to the same outputs, iA3, the text-encoder output cache and the bucket step check."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("diffusers")

from PIL import Image  # noqa: E402
from torch import nn  # noqa: E402
from trainer_helpers import eval_loss  # noqa: E402

from curate.errors import CurateError  # noqa: E402
from curate.trainer import loop  # noqa: E402
from curate.trainer.config import TrainConfig  # noqa: E402
from curate.trainer.data import load_dataset, size_conditioning  # noqa: E402
from curate.trainer.formats import load_network  # noqa: E402
from curate.trainer.model import encode_conditioning  # noqa: E402
from curate.trainer.networks import IA3Module, create_network  # noqa: E402
from curate.trainer.noise import predict  # noqa: E402
from curate.trainer.single_file import CONFIGS  # noqa: E402
from fixtures.tiny_sdxl import build_tiny_sdxl  # noqa: E402

SDXL_CONFIGS = CONFIGS / "sdxl"

PHOTOS = ("astronaut", "coffee", "chelsea", "rocket")
SMALL = TrainConfig(resolution=64, min_bucket_reso=64, max_bucket_reso=128, batch_size=4, network_dim=4,
                    save_precision="float", seed=1)
# LoCon: the tiny UNet's first level has no attention, so LierLa alone memorises slowly (-10% in 30 steps)
TRAINED = replace(SMALL, max_train_steps=30, learning_rate=1e-2, conv_dim=4)
CPU = torch.device("cpu")

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def sdxl() -> tuple[nn.Module, nn.Module, nn.Module]:
    """stable-diffusion-xl-base-1.0's UNet, CLIP-L and OpenCLIP bigG, from the configs shipped for
    single files (trainer/configs/sdxl, its published ones), on the meta device."""
    from diffusers import UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    def text(name: str) -> Any:
        return CLIPTextConfig.from_pretrained(SDXL_CONFIGS, subfolder=name)

    with torch.device("meta"):
        unet_config = UNet2DConditionModel.load_config(SDXL_CONFIGS, subfolder="unet")
        unet = UNet2DConditionModel.from_config(unet_config)
        return unet, CLIPTextModel(text("text_encoder")), CLIPTextModelWithProjection(text("text_encoder_2"))


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_sdxl(tmp_path_factory.mktemp("tiny_sdxl") / "model")


@pytest.fixture(scope="module")
def dataset(photos_dataset: Path) -> Path:
    return photos_dataset


@pytest.fixture(scope="module")
def trained(model: Path, dataset: Path, tmp_path_factory: pytest.TempPathFactory) -> loop.TrainResult:
    return loop.train(dataset, model, tmp_path_factory.mktemp("out"), TRAINED, device=CPU)


# --- the real architecture, on the meta device ---------------------------------------------------

def test_shipped_configs_are_sdxl_base(sdxl: tuple[nn.Module, ...]) -> None:
    """Parameter counts of stable-diffusion-xl-base-1.0's UNet, text_encoder and text_encoder_2."""
    counts = tuple(sum(p.numel() for p in module.parameters()) for module in sdxl)
    assert counts == (2_567_463_684, 123_060_480, 694_659_840)


@pytest.mark.parametrize(("network", "options", "unet_count", "te_counts"), [
    ("lora", {"dim": 4}, 722, (72, 192)),  # 11 transformers' proj_in/out + 70 blocks x 10
    ("lora", {"dim": 4, "conv_dim": 4}, 788, (72, 192)),  # + 17 ResNets x 3, 11 shortcuts, 2 down, 2 up
    ("lora", {"dim": 4, "train_text_encoder": False}, 722, (0, 0)),
    ("ia3", {}, 350, (36, 96)),  # 70 blocks x (2 to_k, 2 to_v, ff.net.2); layers x 3
])
def test_sdxl_module_counts(sdxl: tuple[nn.Module, ...], network: str, options: dict[str, Any],
                            unet_count: int, te_counts: tuple[int, int]) -> None:
    unet, te1, te2 = sdxl
    net = create_network(network, unet, [te1, te2], **options)
    te1_count = sum(n.startswith("lora_te1_") for n in net.te_names)
    te2_count = sum(n.startswith("lora_te2_") for n in net.te_names)
    assert (len(net.unet_names), te1_count, te2_count) == (unet_count, *te_counts)
    assert len(net.te_names) == sum(te_counts)


def test_sdxl_lora_key_names_are_sd_scripts(sdxl: tuple[nn.Module, ...]) -> None:
    """sd-scripts' SDXL UNet keeps the original layout: input_blocks / middle_block / output_blocks."""
    unet, te1, te2 = sdxl
    keys = set(create_network("lora", unet, [te1, te2], dim=4, conv_dim=4).state_dict())
    for name in ("lora_unet_input_blocks_4_1_transformer_blocks_0_attn1_to_q",  # down_blocks.1.attentions.0
                 "lora_unet_input_blocks_8_1_transformer_blocks_9_ff_net_2",  # down_blocks.2.attentions.1
                 "lora_unet_middle_block_1_proj_in",
                 "lora_unet_middle_block_1_transformer_blocks_9_attn2_to_k",
                 "lora_unet_output_blocks_0_1_transformer_blocks_0_ff_net_0_proj",  # up_blocks.0.attentions.0
                 "lora_unet_output_blocks_5_1_proj_out",  # up_blocks.1.attentions.2
                 "lora_unet_input_blocks_3_0_op",  # down_blocks.0.downsamplers.0
                 "lora_unet_input_blocks_4_0_in_layers_2",  # down_blocks.1.resnets.0.conv1
                 "lora_unet_input_blocks_4_0_skip_connection",
                 "lora_unet_middle_block_2_emb_layers_1",  # mid_block.resnets.1.time_emb_proj
                 "lora_unet_output_blocks_8_0_out_layers_3",  # up_blocks.2.resnets.2.conv2
                 "lora_unet_output_blocks_2_2_conv",  # up_blocks.0.upsamplers.0
                 "lora_te1_text_model_encoder_layers_11_self_attn_q_proj",
                 "lora_te2_text_model_encoder_layers_31_mlp_fc2"):
        assert {f"{name}.lora_down.weight", f"{name}.lora_up.weight", f"{name}.alpha"} <= keys, name
    assert not any("down_blocks" in k or "up_blocks" in k or "mid_block_" in k for k in keys)
    assert not any("text_projection" in k or "add_embedding" in k for k in keys)


# --- conditioning ---------------------------------------------------------------------------------

def _pipeline(model: Path) -> Any:
    from diffusers import StableDiffusionXLPipeline

    return StableDiffusionXLPipeline.from_pretrained(model, local_files_only=True)


def test_text_conditioning_matches_diffusers(model: Path, dataset: Path) -> None:
    """Penultimate states of both encoders side by side, pooled bigG output: what diffusers'
    SDXL pipeline feeds its UNet for the same captions."""
    run = loop.prepare(dataset, model, SMALL, CPU)
    captions = ["sks, astronaut, photo", "a rather longer caption about the cat and the sky", ""]
    with torch.no_grad():
        context, pooled = encode_conditioning(run.models, captions)
        embeds, _, pooled_ref, _ = _pipeline(model).encode_prompt(captions, do_classifier_free_guidance=False)
    assert context.shape == (3, 77, 80) and pooled is not None and pooled.shape == (3, 32)
    assert torch.allclose(context, embeds, atol=1e-6) and torch.allclose(pooled, pooled_ref, atol=1e-6)


def test_long_captions_stitch_both_encoders(model: Path, dataset: Path) -> None:
    run = loop.prepare(dataset, model, SMALL, CPU)
    caption = "sks, " + ", ".join(f"tag{i}" for i in range(40))  # more than 75 tokens
    with torch.no_grad():
        context, pooled = encode_conditioning(run.models, [caption], max_token_length=150)
        first = encode_conditioning(run.models, [caption])[1]
    assert context.shape == (1, 152, 80)
    assert pooled is not None and first is not None
    assert torch.allclose(pooled, first, atol=1e-6)  # the pooled output is the first window's


def test_size_conditioning_hand_computed(tmp_path: Path) -> None:
    """A portrait 80x120 image at resolution 64 (step 32) goes to the 64x64 bucket. sd-scripts'
    get_crop_ltrb fits it inside: 42.67 px wide, left (64 - 42.67) // 2 = 10, top 0; mirrored,
    left = 64 - (10 + 42.67) = 11.33 -> 11. Original size (h, w) = (120, 80)."""
    folder = tmp_path / "1_x"
    folder.mkdir()
    Image.new("RGB", (80, 120), "white").save(folder / "a.png")
    data = load_dataset(tmp_path, {"resolution": 64, "min_bucket_reso": 64, "max_bucket_reso": 64,
                                    "bucket_reso_steps": 32})
    item = data.items[0]
    assert item.assignment.bucket == (64, 64)
    assert size_conditioning(item) == (120, 80, 0, 10, 64, 64)
    assert size_conditioning(item, flipped=True) == (120, 80, 0, 11, 64, 64)


def test_training_passes_the_size_numbers_to_the_unet(model: Path, tmp_path: Path) -> None:
    folder = tmp_path / "1_x"
    folder.mkdir()
    Image.new("RGB", (120, 80), "red").save(folder / "wide.png")  # landscape: top (64 - 42.67) // 2 = 10
    config = replace(SMALL, max_bucket_reso=64, bucket_reso_steps=32, batch_size=1)
    run = loop.prepare(tmp_path, model, config, CPU)
    seen: list[torch.Tensor] = []
    hook = run.models.unet.register_forward_pre_hook(
        lambda _m, _a, kwargs: seen.append(kwargs["added_cond_kwargs"]["time_ids"]), with_kwargs=True)
    try:
        loop._batch_loss(run, [run.dataset.items[0]], config, 0)
    finally:
        hook.remove()
    assert seen[0].tolist() == [[80.0, 120.0, 10.0, 0.0, 64.0, 64.0]]


def test_latent_cache_files_are_sd_scripts_sdxl_ones(model: Path, tmp_path: Path) -> None:
    """`_sdxl.npz` (SDXL's VAE is not SD's), holding sd-scripts' crop box, which its SDXL training
    reads back as the crop numbers."""
    import numpy as np

    folder = tmp_path / "1_x"
    folder.mkdir()
    Image.new("RGB", (80, 120), "blue").save(folder / "tall.png")
    config = replace(SMALL, max_bucket_reso=64, bucket_reso_steps=32, batch_size=1, max_train_steps=1,
                     cache_latents_to_disk=True)
    loop.train(tmp_path, model, tmp_path / "out", config, device=CPU)
    [npz] = folder.glob("*.npz")
    assert npz.name == "tall_0064x0064_sdxl.npz"
    with np.load(npz) as data:
        assert data["original_size"].tolist() == [80, 120]
        assert data["crop_ltrb"] == pytest.approx([10.0, 0.0, 10 + 64 * 80 / 120, 64.0])


# --- training --------------------------------------------------------------------------------------


def test_lora_loss_falls_and_file_is_sdxl(trained: loop.TrainResult, model: Path, dataset: Path) -> None:
    config = TRAINED
    run = loop.prepare(dataset, model, config, CPU)
    assert run.models.vae_scale == pytest.approx(0.13025)
    assert next(run.models.vae.parameters()).dtype == torch.float32
    before = eval_loss(run, config)
    tensors, meta = load_network(trained.output)
    run.network.load_kohya_state_dict(tensors)
    after = eval_loss(run, config)
    assert after < 0.85 * before, (before, after)
    prefixes = {k.split(".")[0].split("_")[1] for k in tensors}
    assert prefixes == {"unet", "te1", "te2"}
    assert sum(k.endswith(".alpha") and k.startswith("lora_te2_") for k in tensors) == 12  # 2 layers x 6
    assert meta["ss_base_model_version"] == "sdxl_base_v1-0" and meta["ss_v2"] == "False"
    assert meta["modelspec.architecture"] == "stable-diffusion-xl-v1-base/lora"


def test_diffusers_loads_the_file_to_the_same_outputs(trained: loop.TrainResult, model: Path,
                                                      dataset: Path) -> None:
    """diffusers' SDXL pipeline, given our file, reproduces our UNet output and conditioning."""
    run = loop.prepare(dataset, model, TRAINED, CPU)
    run.network.load_kohya_state_dict(load_network(trained.output)[0])
    run.network.eval()
    gen = torch.Generator().manual_seed(0)
    latents, timesteps = torch.randn(2, 4, 8, 8, generator=gen), torch.tensor([10, 600])
    captions, time_ids = ["sks, astronaut, photo", "a cat"], torch.tensor([[96, 64, 0, 11, 64, 64]] * 2)
    pipe = _pipeline(model)
    pipe.load_lora_weights(str(trained.output))
    with torch.no_grad():
        context, pooled = encode_conditioning(run.models, captions)
        ours = predict(run.models, latents, timesteps, context, pooled, time_ids)
        run.network.remove()
        base = predict(run.models, latents, timesteps, context, pooled, time_ids)
        embeds, _, pooled_ref, _ = pipe.encode_prompt(captions, do_classifier_free_guidance=False)
        theirs = pipe.unet(latents, timesteps, embeds, added_cond_kwargs={
            "text_embeds": pooled_ref, "time_ids": time_ids.float()}).sample
    assert not torch.allclose(ours, base, atol=1e-3)  # the LoRA changed something
    assert torch.allclose(embeds, context, atol=1e-5)  # te1 / te2 LoRAs loaded too
    assert torch.allclose(theirs, ours, atol=1e-5)


def _randomise(net: nn.Module) -> None:
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for param in net.parameters():
            param.copy_(torch.randn(param.shape, generator=gen) * 0.1)


def test_ia3_on_sdxl_equals_a1111_formula(model: Path, dataset: Path, tmp_path: Path) -> None:
    config = replace(SMALL, network="ia3", max_train_steps=2, learning_rate=1e-3)
    result = loop.train(dataset, model, tmp_path, config, device=CPU)
    tensors = load_network(result.output)[0]
    assert {k.split("_")[1] for k in tensors} == {"unet", "te1", "te2"}
    assert "lora_unet_input_blocks_3_1_transformer_blocks_1_ff_net_2.on_input" in tensors
    run = loop.prepare(dataset, model, config, CPU)
    _randomise(run.network)
    run.network.set_multiplier(0.7)
    run.network.eval()
    gen = torch.Generator().manual_seed(0)
    latents, timesteps = torch.randn(2, 4, 8, 8, generator=gen), torch.tensor([10, 600])

    def output() -> torch.Tensor:
        with torch.no_grad():
            context, pooled = encode_conditioning(run.models, ["sks, coffee", "a rocket"])
            return predict(run.models, latents, timesteps, context, pooled, None)

    adapted = output()
    run.network.remove()
    base = output()
    with torch.no_grad():
        for module in run.network.adapters():
            assert isinstance(module, IA3Module)
            module.layer.weight.copy_(module.scaled_weight(module.layer.weight))
    assert not torch.allclose(adapted, base, atol=1e-3)
    assert torch.allclose(output(), adapted, atol=1e-5)


def test_cached_text_encoder_outputs_train_the_same(model: Path, dataset: Path, tmp_path: Path) -> None:
    config = replace(SMALL, max_train_steps=3, learning_rate=1e-3, train_text_encoder=False)
    plain = loop.train(dataset, model, tmp_path / "a", config, device=CPU)
    cached = loop.train(dataset, model, tmp_path / "b", replace(config, cache_text_encoder_outputs=True),
                        device=CPU)
    assert cached.losses == pytest.approx(plain.losses, rel=1e-5)
    run = loop.prepare(dataset, model, replace(config, cache_text_encoder_outputs=True), CPU)
    assert run.models.text_cache is not None and set(run.models.text_cache) == {
        f"sks, {name}, photo" for name in PHOTOS}


@pytest.mark.parametrize(("options", "message"), [
    ({"cache_text_encoder_outputs": True}, "train_text_encoder = false"),
    ({"cache_text_encoder_outputs": True, "train_text_encoder": False, "shuffle_caption": True},
     "shuffle"),
    ({"bucket_reso_steps": 16}, "multiple of 32"),
])
def test_sdxl_refusals(model: Path, dataset: Path, options: dict[str, Any], message: str) -> None:
    with pytest.raises(CurateError, match=message):
        loop.prepare(dataset, model, replace(SMALL, **options), CPU)


def test_fixture_is_small_and_sdxl_shaped(model: Path) -> None:
    size = sum(p.stat().st_size for p in model.rglob("*") if p.is_file())
    assert size < 10 * 2**20
    pipe = _pipeline(model)
    assert pipe.vae.config.scaling_factor == pytest.approx(0.13025)
    assert pipe.unet.config.addition_embed_type == "text_time"
    assert pipe.tokenizer_2.pad_token_id == 0 and pipe.tokenizer.pad_token_id == pipe.tokenizer.eos_token_id


def test_sdxl_samples_see_the_network(trained: loop.TrainResult, model: Path, dataset: Path,
                                      tmp_path: Path) -> None:
    import numpy as np

    from curate.trainer.samples import SamplePrompt, generate_samples

    run = loop.prepare(dataset, model, TRAINED, CPU)
    run.network.load_kohya_state_dict(load_network(trained.output)[0])
    prompt = [SamplePrompt("sks, astronaut, photo", negative_prompt="blurry", width=64, height=96, seed=3,
                           steps=3, index=0)]

    def sample(folder: str) -> Any:
        [path] = generate_samples(run.models, prompt, tmp_path / folder, "n", 1, None, "euler", CPU, 0,
                                  network=run.network)
        with Image.open(path) as image:
            return np.asarray(image.convert("RGB"))

    with_net, again = sample("a"), sample("b")
    run.network.remove()
    without = sample("c")
    assert with_net.shape == (96, 64, 3) and np.array_equal(with_net, again)
    assert not np.array_equal(with_net, without)


# --- single-file checkpoints -------------------------------------------------------------------------

@pytest.fixture(scope="module")
def single(model: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from fixtures.tiny_sdxl import build_single_file

    return build_single_file(model, tmp_path_factory.mktemp("single") / "tiny_sdxl.safetensors")


def test_single_file_loads_the_same_model(single: Path, model: Path) -> None:
    from curate.trainer.model import load_models

    got, want = load_models(single, CPU, model_config=str(model)), load_models(model, CPU)
    assert got.sdxl and got.vae_scale == pytest.approx(0.13025)
    for name in ("unet", "vae", "text_encoder", "text_encoder_2"):
        a, b = getattr(got, name).state_dict(), getattr(want, name).state_dict()
        assert a.keys() == b.keys(), name
        assert all(torch.equal(a[k], b[k]) for k in a), name


def test_single_file_without_tokenizers_names_the_sdxl_repo(single: Path, tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """With no model_config the shipped SDXL configs are used and the tokenizers come from the
    Hugging Face cache; an empty one gives the command to fill it."""
    from huggingface_hub import constants

    from curate.trainer.model import load_models
    from curate.trainer.single_file import detect_family, read_checkpoint

    assert detect_family(read_checkpoint(single), single) == "sdxl"
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path))
    with pytest.raises(CurateError, match=r"stabilityai/stable-diffusion-xl-base-1\.0.*model_config"):
        load_models(single, CPU)


def test_cli_trains_sdxl(model: Path, dataset: Path, tmp_path: Path) -> None:
    import json

    from click.testing import CliRunner

    from curate.cli import cli

    out = tmp_path / "out"
    args = ["train", str(dataset), "--model", str(model), "--out", str(out), "--max-train-steps", "2",
            "--json", "--set", "resolution=64", "--set", "min_bucket_reso=64", "--set", "batch_size=2",
            "--set", "network=\"ia3\""]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["steps"] == 2
    tensors, meta = load_network(out / "last.safetensors")
    assert meta["ss_base_model_version"] == "sdxl_base_v1-0" and meta["ss_network_module"] == "lycoris.kohya"
    assert any(k.startswith("lora_te2_") for k in tensors)
