"""Single-file base checkpoints: the tiny pipeline written in the original (LDM) layout reads back
through diffusers' single-file loaders to the same weights, offline; pickles are refused unless
allowed and then never run code."""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("diffusers")

from curate.errors import CurateError  # noqa: E402
from curate.trainer.model import Models, load_models  # noqa: E402
from curate.trainer.single_file import CONFIGS, detect_family, read_checkpoint  # noqa: E402
from fixtures.tiny_sd_single_file import build_single_file, ldm_state_dict  # noqa: E402

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def model_dir(tiny_sd: Path) -> Path:
    return tiny_sd


@pytest.fixture(scope="module")
def single(model_dir: Path) -> Path:
    return build_single_file(model_dir, model_dir.parent / "tiny.safetensors")


@pytest.fixture(scope="module")
def reference(model_dir: Path) -> Models:
    return load_models(model_dir, CPU)


@pytest.fixture
def empty_hub_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    from huggingface_hub import constants

    cache = tmp_path / "hub"
    cache.mkdir()
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    return cache


def cache_repo(cache: Path, repo_id: str, source: Path) -> None:
    """Put `source`'s files where the Hugging Face cache keeps repo_id's main revision."""
    import shutil

    repo = cache / ("models--" + repo_id.replace("/", "--"))
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text("0" * 40)
    shutil.copytree(source, repo / "snapshots" / ("0" * 40))


def assert_same_weights(got: Models, want: Models) -> None:
    for name in ("unet", "vae", "text_encoder"):
        a, b = getattr(got, name).state_dict(), getattr(want, name).state_dict()
        assert a.keys() == b.keys(), name
        for key in a:
            assert torch.equal(a[key], b[key]), f"{name}.{key}"


def test_fixture_is_in_the_original_layout(single: Path) -> None:
    state = read_checkpoint(single)
    assert "model.diffusion_model.input_blocks.0.0.weight" in state
    assert "model.diffusion_model.output_blocks.1.2.conv.weight" in state  # up-sampler after attention
    assert "first_stage_model.decoder.up.3.block.0.conv1.weight" in state  # VAE up blocks reversed
    assert state["first_stage_model.encoder.mid.attn_1.q.weight"].ndim == 4  # 1x1 conv as in SD
    assert "cond_stage_model.transformer.text_model.final_layer_norm.weight" in state
    assert not any(k.startswith(("down_blocks", "up_blocks", "encoder.")) for k in state)
    assert detect_family(state, single) == "sd1"


def test_safetensors_loads_the_same_weights(single: Path, model_dir: Path, reference: Models) -> None:
    got = load_models(single, CPU, model_config=str(model_dir))
    assert_same_weights(got, reference)
    assert got.v_parameterization is False
    assert got.tokenizer("a cat").input_ids == reference.tokenizer("a cat").input_ids
    latents = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    context = torch.randn(1, 77, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        want = reference.unet(latents, 10, context).sample
        torch.testing.assert_close(got.unet(latents, 10, context).sample, want)


def test_model_config_may_be_a_cached_hub_repo(single: Path, model_dir: Path, reference: Models,
                                               empty_hub_cache: Path) -> None:
    cache_repo(empty_hub_cache, "someone/tiny-sd", model_dir)
    assert_same_weights(load_models(single, CPU, model_config="someone/tiny-sd"), reference)
    with pytest.raises(CurateError, match=r"someone/missing.*neither a folder nor a Hub repository"):
        load_models(single, CPU, model_config="someone/missing")


def test_missing_tokenizer_names_the_repo_to_download(single: Path, empty_hub_cache: Path) -> None:
    with pytest.raises(CurateError) as err:
        load_models(single, CPU)
    message = str(err.value)
    assert str(single) in message and "openai/clip-vit-large-patch14" in message
    assert "model_config" in message and "\n" not in message


def test_cached_tokenizer_is_found_then_shipped_sd1_config_mismatch_is_clear(
        single: Path, model_dir: Path, empty_hub_cache: Path) -> None:
    cache_repo(empty_hub_cache, "openai/clip-vit-large-patch14", model_dir / "tokenizer")
    # the tokenizer is found, so the shipped SD 1.5 configs are tried against toy-width weights
    mismatch = r"cannot build the UNet .*configs/sd1 .*expected shape.*model_config=DIR"
    with pytest.raises(CurateError, match=mismatch):
        load_models(single, CPU)


def test_ckpt_refused_without_allow_pickle(single: Path, tmp_path: Path) -> None:
    ckpt = tmp_path / "model.ckpt"
    torch.save({"state_dict": read_checkpoint(single)}, ckpt)
    with pytest.raises(CurateError) as err:
        load_models(ckpt, CPU)
    assert str(ckpt) in str(err.value) and "--allow-pickle" in str(err.value)


def test_ckpt_loads_with_allow_pickle(single: Path, model_dir: Path, reference: Models,
                                      tmp_path: Path) -> None:
    ckpt = tmp_path / "model.ckpt"
    # as lightning saves them: the weights nested under state_dict beside plain bookkeeping
    torch.save({"state_dict": read_checkpoint(single), "global_step": 470000, "epoch": 6}, ckpt)
    got = load_models(ckpt, CPU, model_config=str(model_dir), allow_pickle=True)
    assert_same_weights(got, reference)


class WritesMarker:
    """Unpickling this runs open(marker, "w"): the code execution a pickle checkpoint can carry."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, tuple[str, str]]:
        return (open, (str(self.marker), "w"))


def test_malicious_pickle_is_not_run_even_with_allow_pickle(single: Path, model_dir: Path,
                                                            tmp_path: Path) -> None:
    marker, control = tmp_path / "pwned", tmp_path / "pwned-control"
    ckpt = tmp_path / "evil.ckpt"
    torch.save({"state_dict": read_checkpoint(single), "payload": WritesMarker(marker)}, ckpt)
    with pytest.raises(CurateError) as err:
        load_models(ckpt, CPU, model_config=str(model_dir), allow_pickle=True)
    assert not marker.exists()
    assert str(ckpt) in str(err.value) and "Python objects besides tensors" in str(err.value)
    # the payload is live: a plain unpickler would have run it
    evil = tmp_path / "control.pkl"
    evil.write_bytes(pickle.dumps(WritesMarker(control)))
    pickle.loads(evil.read_bytes())
    assert control.exists()


def test_non_checkpoints_are_refused_clearly(tmp_path: Path) -> None:
    from safetensors.torch import save_file

    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(b"this is not a safetensors file at all")
    with pytest.raises(CurateError, match=r"garbage\.safetensors: not a readable \.safetensors file"):
        load_models(garbage, CPU)
    lora = tmp_path / "lora.safetensors"
    save_file({"lora_unet_down_blocks_0_attentions_0_proj_in.lora_down.weight": torch.zeros(4, 32)},
              str(lora))
    with pytest.raises(CurateError, match=r"lora\.safetensors: not a Stable Diffusion 1\.x/2\.x checkpoint"):
        load_models(lora, CPU)
    text = tmp_path / "model.txt"
    text.write_text("hello")
    with pytest.raises(CurateError, match=r"model\.txt: not a model checkpoint"):
        load_models(text, CPU)
    with pytest.raises(CurateError, match="no such model"):
        load_models(tmp_path / "absent.safetensors", CPU)


def test_sd2_is_told_from_its_openclip_text_encoder(model_dir: Path, tmp_path: Path) -> None:
    state = {k: v for k, v in ldm_state_dict(model_dir).items() if not k.startswith("cond_stage_model.")}
    assert detect_family({**state, "cond_stage_model.model.token_embedding.weight": torch.zeros(1)},
                         tmp_path) == "sd2"
    with pytest.raises(CurateError, match="no text encoder weights"):
        detect_family(state, tmp_path)


@pytest.mark.parametrize(("family", "counts", "prediction"), [
    # parameter counts of stable-diffusion-v1-5 and stable-diffusion-2-1 (UNet, VAE, text encoder)
    ("sd1", (859_520_964, 83_653_863, 123_060_480), "epsilon"),
    ("sd2", (865_910_724, 83_653_863, 340_387_840), "v_prediction"),
])
def test_shipped_configs_build_the_published_models(family: str, counts: tuple[int, int, int],
                                                    prediction: str) -> None:
    import json

    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    folder = CONFIGS / family
    with torch.device("meta"):
        unet = UNet2DConditionModel.from_config(UNet2DConditionModel.load_config(folder, subfolder="unet"))
        vae = AutoencoderKL.from_config(AutoencoderKL.load_config(folder, subfolder="vae"))
        text = CLIPTextModel(CLIPTextConfig.from_pretrained(folder, subfolder="text_encoder"))
    assert tuple(sum(p.numel() for p in m.parameters()) for m in (unet, vae, text)) == counts
    scheduler = json.loads((folder / "scheduler" / "scheduler_config.json").read_text(encoding="utf-8"))
    assert scheduler["prediction_type"] == prediction


def test_checkpoint_missing_tensors_is_refused(model_dir: Path, tmp_path: Path) -> None:
    from safetensors.torch import save_file

    state = ldm_state_dict(model_dir)
    text_norm = "cond_stage_model.transformer.text_model.final_layer_norm.weight"
    for dropped, name in (("model.diffusion_model.out.2.weight", "UNet"),
                          ("first_stage_model.decoder.conv_out.bias", "VAE"), (text_norm, "text encoder")):
        partial = tmp_path / f"partial-{name[0]}.safetensors"
        save_file({k: v.contiguous() for k, v in state.items() if k != dropped}, str(partial))
        with pytest.raises(CurateError, match=rf"{partial.name}: the {name} weights are incomplete"):
            load_models(partial, CPU, model_config=str(model_dir))


def test_half_precision_file_loads_in_float32(model_dir: Path, reference: Models, tmp_path: Path) -> None:
    """Most shared checkpoints are fp16; training keeps float32 masters (and SD's VAE needs fp32)."""
    from safetensors.torch import save_file

    half = tmp_path / "half.safetensors"
    save_file({k: v.half().contiguous() for k, v in ldm_state_dict(model_dir).items()}, str(half))
    got = load_models(half, CPU, model_config=str(model_dir))
    for name in ("unet", "vae", "text_encoder"):
        params = dict(getattr(got, name).named_parameters())
        assert {p.dtype for p in params.values()} == {torch.float32}, name
        key, want = next(iter(getattr(reference, name).named_parameters()))
        assert torch.equal(params[key], want.half().float()), name
