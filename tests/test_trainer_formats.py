"""Network files: keys, precision, sd-scripts metadata and hashes, and loading by other tools
(diffusers' `load_lora_weights` for LoRA, A1111's merge formula for iA3 in test_trainer_networks)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("diffusers")
pytest.importorskip("peft")  # diffusers loads LoRA files through peft

from trainer_helpers import unet_and_text_outputs  # noqa: E402

from curate.trainer.formats import (  # noqa: E402
    addnet_hashes,
    as_metadata,
    load_network,
    modelspec,
    save_network,
    tensor_hash,
)
from curate.trainer.networks import create_network  # noqa: E402
from fixtures.tiny_sd import build_components  # noqa: E402


@pytest.fixture(scope="module")
def tiny_folder(tiny_sd: Path) -> Path:
    return tiny_sd


def _randomise(net: torch.nn.Module) -> None:
    gen = torch.Generator().manual_seed(7)
    with torch.no_grad():
        for name, param in net.named_parameters():
            param.copy_(torch.randn(param.shape, generator=gen) * (0.2 if "up" in name else 1.0))


def _metadata(net: Any) -> dict[str, str]:
    return as_metadata({
        **net.metadata(), "ss_output_name": "sks", "ss_steps": 30, "ss_tag_frequency": {"10_sks": {"sks": 3}},
        "ss_dataset_dirs": {"10_sks": {"n_repeats": 10, "img_count": 3}}, "ss_clip_skip": None,
        **modelspec("sks", (64, 64), timestamp=1.7e9),
    })


@pytest.mark.parametrize(("precision", "dtype"), [("fp16", torch.float16), ("bf16", torch.bfloat16),
                                                  ("float", torch.float32)])
def test_saved_keys_dtypes_and_metadata(tmp_path: Path, precision: str, dtype: Any) -> None:
    from curate.trainer.formats import save_dtype

    parts = build_components()
    net = create_network("ia3", parts["unet"], [parts["text_encoder"]])
    path = tmp_path / "sks.safetensors"
    save_network(path, net.kohya_state_dict(save_dtype(precision)), _metadata(net))
    tensors, meta = load_network(path)
    assert set(tensors) == set(net.state_dict())
    assert {t.dtype for k, t in tensors.items() if k.endswith(".weight")} == {dtype}
    assert {t.dtype for k, t in tensors.items() if k.endswith(".on_input")} == {torch.int64}
    assert meta["ss_network_module"] == "lycoris.kohya"
    assert json.loads(meta["ss_network_args"])["algo"] == "ia3"
    assert json.loads(meta["ss_dataset_dirs"]) == {"10_sks": {"n_repeats": 10, "img_count": 3}}
    assert "ss_clip_skip" not in meta and meta["modelspec.architecture"] == "stable-diffusion-v1/lora"
    assert meta["sshs_model_hash"] == tensor_hash(path)


def test_hashes_follow_sd_scripts_rules(tmp_path: Path) -> None:
    """The model hash covers tensor bytes only; the legacy hash reads 64 KiB at 1 MiB of the file
    serialised with the ss_* fields, so it moves with them but not with modelspec or others."""
    parts = build_components()
    net = create_network("lora", parts["unet"], [parts["text_encoder"]], dim=64)  # > 1 MiB of tensors
    _randomise(net)
    tensors = net.kohya_state_dict()
    meta = _metadata(net)
    model, legacy = addnet_hashes(tensors, meta)
    assert addnet_hashes(tensors, {**meta, "modelspec.title": "other", "note": "x"}) == (model, legacy)
    longer = {**meta, "ss_output_name": "a longer name, header moves"}
    other_model, other_legacy = addnet_hashes(tensors, longer)
    assert other_model == model and other_legacy != legacy
    written = save_network(tmp_path / "a.safetensors", tensors, meta)
    assert (written["sshs_model_hash"], written["sshs_legacy_hash"]) == (model, legacy)
    assert tensor_hash(tmp_path / "a.safetensors") == model


def test_diffusers_loads_our_lora(tiny_folder: Path, tmp_path: Path) -> None:
    """alpha != rank, UNet and text encoder: what diffusers computes is what we trained."""
    from diffusers import StableDiffusionPipeline

    ours = StableDiffusionPipeline.from_pretrained(tiny_folder)
    base = unet_and_text_outputs(ours.unet, ours.text_encoder)
    net = create_network("lora", ours.unet, [ours.text_encoder], dim=4, alpha=2.0)
    _randomise(net)
    net.apply_to()
    net.eval()
    expected = unet_and_text_outputs(ours.unet, ours.text_encoder)
    path = tmp_path / "sks.safetensors"
    save_network(path, net.kohya_state_dict(torch.float32), _metadata(net))

    theirs = StableDiffusionPipeline.from_pretrained(tiny_folder)
    theirs.load_lora_weights(str(path))
    context, sample = unet_and_text_outputs(theirs.unet, theirs.text_encoder)
    assert torch.allclose(context, expected[0], atol=1e-4)
    assert torch.allclose(sample, expected[1], atol=1e-4)
    assert not torch.allclose(sample, base[1], atol=1e-2)  # the LoRA does change the output


def test_load_back_into_network(tmp_path: Path) -> None:
    parts = build_components()
    net = create_network("lora", parts["unet"], [parts["text_encoder"]], dim=4)
    _randomise(net)
    save_network(tmp_path / "n.safetensors", net.kohya_state_dict(), _metadata(net))
    again = create_network("lora", build_components()["unet"], [parts["text_encoder"]], dim=4)
    again.load_kohya_state_dict(load_network(tmp_path / "n.safetensors")[0])
    assert all(torch.equal(a, b) for a, b in zip(net.state_dict().values(), again.state_dict().values(),
                                                  strict=True))
    with pytest.raises(ValueError, match="do not fit"):
        create_network("lora", parts["unet"], [], dim=4, train_text_encoder=False).load_kohya_state_dict(
            load_network(tmp_path / "n.safetensors")[0])
