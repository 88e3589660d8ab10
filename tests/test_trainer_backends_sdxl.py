"""The kohya backend for SDXL base models: sdxl_train_network.py, its options (pinned from
sd-scripts 48d368f), the model family from folders and single files, sd-scripts' dataset checks."""

from __future__ import annotations

import os
import shlex
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from backend_helpers import (
    RICH,
    cli_train,
    fake_model,
    folder_dataset,
    layout_toml,
    sd_args,
    sd_scripts_checkout,
)

from curate.errors import CurateError
from curate.trainer.backends import kohya
from curate.trainer.config import TrainConfig


@pytest.fixture
def model(tmp_path: Path) -> Path:
    return fake_model(tmp_path / "model")


@pytest.fixture
def dataset(tmp_path: Path) -> Path:
    return folder_dataset(tmp_path / "ds")


SDXL_CACHED = TrainConfig(cache_text_encoder_outputs=True, train_text_encoder=False, mixed_precision="bf16")


def sdxl_model(root: Path) -> Path:
    """An SDXL diffusers folder as the kohya plan reads one: told by model_index.json's class name."""
    return fake_model(root, cross_attention_dim=80, index={"_class_name": "StableDiffusionXLPipeline",
                                                           "text_encoder": ["transformers", "CLIPTextModel"]})


def test_sd1_command_is_the_documented_one(model: Path, dataset: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    plan = kohya.plan(dataset, model, out, TrainConfig())
    assert plan.shell() == (
        "accelerate launch --num_cpu_threads_per_process 1 train_network.py --pretrained_model_name_or_path "
        f"{model} --dataset_config {out}/kohya-dataset.toml --output_dir {out} --network_module "
        "networks.lora --network_dim 8 --network_alpha 1 --optimizer_type AdamW --lr_scheduler constant "
        "--max_train_steps 1600 --learning_rate 0.0001 --max_grad_norm 1 --gradient_accumulation_steps 1 "
        "--seed 42 --prior_loss_weight 1 --output_name last --save_precision fp16 --mixed_precision no "
        f"--tokenizer_cache_dir {out}/tokenizer-cache")
    # SD 1.x has no text encoder cache in sd-scripts: same command, and a note (not a warning) says so
    cached = kohya.plan(dataset, model, out, replace(SDXL_CACHED, mixed_precision="no"))
    assert cached.command == kohya.plan(dataset, model, out, TrainConfig(train_text_encoder=False)).command
    assert not cached.warnings and any("cache_text_encoder_outputs" in n for n in cached.notes)


@pytest.mark.parametrize("name", [*RICH, "cached"])
def test_sdxl_options_are_sdxl_train_network_ones(name: str, dataset: Path, tmp_path: Path) -> None:
    config = RICH.get(name, SDXL_CACHED)
    xl = sdxl_model(tmp_path / "xl")
    plan = kohya.plan(dataset, xl, tmp_path / "out", config)
    args = sd_args(plan.command or [], sdxl=True)
    assert args.pretrained_model_name_or_path == str(xl) and args.no_half_vae  # curate's fp32 VAE
    assert "--v2" not in (plan.command or []) and "--clip_skip" not in (plan.command or [])
    assert args.cache_text_encoder_outputs == config.cache_text_encoder_outputs
    assert not args.cache_text_encoder_outputs_to_disk
    assert args.network_module == ("lycoris.kohya" if config.network == "ia3" else "networks.lora")
    assert args.v_parameterization == bool(config.v_parameterization)  # forced on by LORA_CONV only
    assert any("clip_skip" in w for w in plan.warnings) == (config.clip_skip is not None)
    # everything else is what train_network.py gets for an SD 1.x model
    sd1 = kohya.plan(dataset, fake_model(tmp_path / "sd1"), tmp_path / "out", config).command or []
    rest = [a for a in (plan.command or []) if a not in ("--no_half_vae", "--cache_text_encoder_outputs")]
    if "--clip_skip" in sd1:
        del sd1[sd1.index("--clip_skip"):sd1.index("--clip_skip") + 2]
    assert rest[5:] == [str(xl) if a == str(tmp_path / "sd1") else a for a in sd1[5:]]


def write_safetensors(path: Path, names: list[str]) -> Path:
    torch = pytest.importorskip("torch")
    from safetensors.torch import save_file

    save_file({name: torch.zeros(1) for name in names}, str(path))
    return path


def test_sdxl_is_detected_from_folders_and_single_files(dataset: Path, tmp_path: Path) -> None:
    from curate.trainer.single_file import CLIP_KEY, OPEN_CLIP_KEY, SDXL_KEYS, UNET_KEY, VAE_KEY

    te2 = fake_model(tmp_path / "te2")
    (te2 / "text_encoder_2").mkdir()
    width = fake_model(tmp_path / "width", cross_attention_dim=2048)
    single = write_safetensors(tmp_path / "xl.safetensors", [UNET_KEY, VAE_KEY, *SDXL_KEYS])
    for xl in (sdxl_model(tmp_path / "xl"), te2, width, single):
        plan = kohya.plan(dataset, xl, tmp_path / "out", TrainConfig())
        assert sd_args(plan.command or [], sdxl=True).pretrained_model_name_or_path == str(xl)
    assert any("predicts v" in w for w in plan.warnings)  # a single file: epsilon assumed, said so
    sd2 = write_safetensors(tmp_path / "sd2.safetensors", [UNET_KEY, VAE_KEY, OPEN_CLIP_KEY])
    assert sd_args(kohya.plan(dataset, sd2, tmp_path / "out", TrainConfig()).command or []).v2
    sd1 = write_safetensors(tmp_path / "sd1.safetensors", [UNET_KEY, VAE_KEY, CLIP_KEY])
    assert not sd_args(kohya.plan(dataset, sd1, tmp_path / "out", TrainConfig()).command or []).v2
    refiner = write_safetensors(tmp_path / "refiner.safetensors", [UNET_KEY, VAE_KEY, SDXL_KEYS[1]])
    with pytest.raises(CurateError, match="refiner"):
        kohya.plan(dataset, refiner, tmp_path / "out", TrainConfig())
    (tmp_path / "bad.ckpt").write_bytes(b"not a pickle")
    pickled = kohya.plan(dataset, tmp_path / "bad.ckpt", tmp_path / "out", TrainConfig())
    assert sd_args(pickled.command or []) and any("allow_pickle" in w for w in pickled.warnings)


@pytest.mark.parametrize(("options", "message"), [
    ({"cache_text_encoder_outputs": True}, "train_text_encoder = false"),
    ({"cache_text_encoder_outputs": True, "train_text_encoder": False, "shuffle_caption": True},
     "shuffle_caption"),
    ({"bucket_reso_steps": 48}, "multiple of 32"),
    ({"block_lr_weights": "OUTALL"}, "an SD 1.x preset"),
])
def test_sdxl_refusals_write_nothing(options: dict[str, Any], message: str, dataset: Path,
                                     tmp_path: Path) -> None:
    with pytest.raises(CurateError, match=message):
        kohya.plan(dataset, sdxl_model(tmp_path / "xl"), tmp_path / "out", TrainConfig(**options))
    assert not (tmp_path / "out").exists()
    # SD 1.x is not held to SDXL's rules: the same settings plan (block weights, 48 px steps, no cache)
    if "cache_text_encoder_outputs" not in options:
        kohya.plan(dataset, fake_model(tmp_path / "sd1"), tmp_path / "sd1-out", TrainConfig(**options))


def test_sdxl_bucket_step_and_caption_settings_from_a_dataset_toml(tmp_path: Path) -> None:
    xl = sdxl_model(tmp_path / "xl")
    root = layout_toml(tmp_path / "lay", str(tmp_path / "lay" / "img" / "5_sks"))
    with pytest.raises(CurateError, match="shuffle_caption"):  # [general] shuffle_caption = true
        kohya.plan(root, xl, tmp_path / "o", SDXL_CACHED)
    plan = kohya.plan(root, xl, tmp_path / "o", replace(SDXL_CACHED, shuffle_caption=False))
    assert sd_args(plan.command or [], sdxl=True).cache_text_encoder_outputs
    toml = root / "dataset.toml"
    text = toml.read_text(encoding="utf-8")
    for steps in (32, 40):
        steps_line = f"resolution = 512\nbucket_reso_steps = {steps}\n"
        toml.write_text(text.replace("resolution = 512\n", steps_line), encoding="utf-8")
        if steps == 32:
            assert kohya.plan(root, xl, tmp_path / "o", TrainConfig()).files == []  # used as it is
    with pytest.raises(CurateError, match=f"{toml}: bucket_reso_steps = 40"):
        kohya.plan(root, xl, tmp_path / "o", TrainConfig())


@pytest.fixture(scope="module")
def tiny_sdxl(tmp_path_factory: pytest.TempPathFactory) -> Path:
    pytest.importorskip("diffusers")
    from fixtures.tiny_sdxl import build_single_file, build_tiny_sdxl

    model = build_tiny_sdxl(tmp_path_factory.mktemp("tiny_sdxl") / "model")
    build_single_file(model, model.parent / "tiny_sdxl.safetensors")
    return model


@pytest.mark.parametrize("single_file", [False, True])
def test_cli_print_command_for_the_tiny_sdxl(single_file: bool, tiny_sdxl: Path, dataset: Path,
                                             tmp_path: Path) -> None:
    model = tiny_sdxl.parent / "tiny_sdxl.safetensors" if single_file else tiny_sdxl
    result = cli_train(str(dataset), "--model", str(model), "--out", str(tmp_path / "out"),
                       "--backend", "kohya", "--print-command", "--set", "clip_skip=2",
                       "--set", "cache_text_encoder_outputs=true", "--set", "train_text_encoder=false")
    assert result.exit_code == 0, result.output
    (line,) = result.stdout.splitlines()
    assert line.startswith("accelerate launch --num_cpu_threads_per_process 1 sdxl_train_network.py ")
    args = sd_args(shlex.split(line), sdxl=True)
    assert args.pretrained_model_name_or_path == str(model) and args.cache_text_encoder_outputs
    assert args.no_half_vae and args.network_train_unet_only and not args.v_parameterization
    assert "clip_skip" in result.stderr and "--clip_skip" not in line


@pytest.mark.skipif(os.name != "posix", reason="a #! script stands in for accelerate")
def test_sdxl_runs_sdxl_train_network(dataset: Path, tmp_path: Path) -> None:
    xl = sdxl_model(tmp_path / "xl")
    checkout = sd_scripts_checkout(tmp_path / "sd", 0)  # train_network.py only
    with pytest.raises(CurateError, match=r"no sdxl_train_network\.py here"):
        kohya.plan(dataset, xl, tmp_path / "out", TrainConfig(), tool=checkout)
    (checkout / "sdxl_train_network.py").write_text("# sd-scripts stand-in\n")
    plan = kohya.plan(dataset, xl, tmp_path / "out", TrainConfig(), tool=checkout)
    chunks: list[bytes] = []
    result = kohya.run(plan, sink=chunks.append)
    assert str(checkout / "sdxl_train_network.py") in b"".join(chunks).decode()
    assert "sdxl_train_network.py exited 0" in result.summary


def test_sdxl_block_spec_becomes_sd_scripts_9_3_9_lists(dataset: Path, tmp_path: Path) -> None:
    plan = kohya.plan(dataset, sdxl_model(tmp_path / "xl"), tmp_path / "out",
                      TrainConfig(block_lr_weights="IN=0,MID=0.5,OUT=1"))
    args = sd_args(plan.command or [], sdxl=True).network_args
    assert "down_lr_weight=" + ",".join(["0"] * 9) in args and "mid_lr_weight=0.5,0.5,0.5" in args
    assert "up_lr_weight=" + ",".join(["1"] * 9) in args
