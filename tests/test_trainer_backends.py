"""Trainer backends: the kohya plan is an sd-scripts command and dataset TOML that sd-scripts'
own parsers and schema accept (train_network.py's and sdxl_train_network.py's, pinned in
tests/data/sd_scripts_train_network_args.json, made by tests/data/extract_sd_scripts_args.py
from sd-scripts 48d368f), SDXL models get the SDXL script, the CLI prints or runs it, and the
builtin backend trains through the registry."""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
import tomllib
from dataclasses import field, make_dataclass, replace
from pathlib import Path
from typing import Any

import pytest
from backend_helpers import (
    DATA,
    IA3_PRODIGY,
    LORA_CONV,
    MIRROR,
    RICH,
    SPEC,
    cli_train,
    fake_model,
    folder_dataset,
    layout_toml,
    sd_args,
    sd_scripts_checkout,
)
from PIL import Image

from curate.errors import CurateError
from curate.trainer.backends import BACKENDS, Plan, get_backend, kohya
from curate.trainer.config import TrainConfig


@pytest.fixture
def model(tmp_path: Path) -> Path:
    return fake_model(tmp_path / "model")


@pytest.fixture
def dataset(tmp_path: Path) -> Path:
    return folder_dataset(tmp_path / "ds")


def test_extracted_list_matches_the_extractor_and_knows_train_network() -> None:
    assert SPEC["commit"].startswith("48d368f")
    assert {"--network_module", "--dataset_config", "--optimizer_args", "--lr_scheduler_type", "--unet_lr",
            "--reg_data_dir", "--masked_loss"} <= set(SPEC["options"])
    assert SPEC["options"]["--network_args"]["nargs"] == "*"
    assert SPEC["options"]["--gradient_checkpointing"]["action"] == "store_true"
    # sdxl_train_network.py: train_network.py's parser plus add_sdxl_training_arguments
    assert SPEC["sdxl_script"] == "sdxl_train_network.py"
    assert {k: v for k, v in SPEC["sdxl_options"].items() if k in SPEC["options"]} == SPEC["options"]
    assert set(SPEC["sdxl_options"]) - set(SPEC["options"]) == {"--cache_text_encoder_outputs",
                                                                 "--cache_text_encoder_outputs_to_disk",
                                                                 "--disable_mmap_load_safetensors"}
    schema = SPEC["dataset_schema"]
    assert "image_dir" in schema["subsets"] and "resolution" in schema["datasets"]
    if not MIRROR.is_dir():
        pytest.skip("no sd-scripts mirror here to re-extract from")
    run = subprocess.run([sys.executable, "-c", "import sys, json; sys.path.insert(0, sys.argv[1]); "
                          "import extract_sd_scripts_args as e; "
                          "print(json.dumps(e.extract(sys.argv[2], sys.argv[3]), sort_keys=True))",
                          str(DATA), str(MIRROR), SPEC["commit"]], capture_output=True, text=True, check=True)
    assert json.loads(run.stdout) == SPEC


@pytest.mark.parametrize("name", RICH)
def test_every_emitted_option_is_one_sd_scripts_accepts(name: str, model: Path, dataset: Path,
                                                        tmp_path: Path) -> None:
    plan = kohya.plan(dataset, model, tmp_path / "out", RICH[name])
    args = sd_args(plan.command or [])
    assert args.pretrained_model_name_or_path == str(model.absolute())
    assert args.output_dir == str((tmp_path / "out").absolute())
    assert args.dataset_config == str(tmp_path / "out" / "kohya-dataset.toml")
    assert shlex.split(plan.shell()) == plan.command


def test_lora_values(model: Path, dataset: Path, tmp_path: Path) -> None:
    plan = kohya.plan(dataset, model, tmp_path / "out", LORA_CONV)
    args = sd_args(plan.command or [])
    assert (args.network_module, args.network_dim, args.network_alpha) == ("networks.lora", 16, 8.0)
    assert args.network_args == ["conv_dim=4", "conv_alpha=1"]  # unset conv_alpha: 1.0 in both trainers
    assert (args.optimizer_type, args.optimizer_args) == ("AdamW8bit", ["betas=(0.9, 0.99)"])
    assert (args.unet_lr, args.text_encoder_lr, args.learning_rate) == (2e-4, [5e-5], 1e-4)
    assert (args.lr_scheduler, args.lr_warmup_steps, args.lr_scheduler_num_cycles) == ("cosine_with_restarts",
                                                                                       10, 3)
    assert args.network_train_unet_only and not args.network_train_text_encoder_only
    assert (args.max_train_epochs, args.max_train_steps) == (10, None)  # epochs win, as in the builtin
    assert (args.noise_offset, args.adaptive_noise_scale, args.min_snr_gamma) == (0.05, 0.01, 5.0)
    assert (args.max_token_length, args.clip_skip, args.scale_weight_norms) == (225, 2, 1.0)
    assert args.sample_prompts == str(Path("prompts.txt").absolute()) and args.sample_sampler == "euler_a"
    assert (args.save_precision, args.mixed_precision) == ("bf16", "bf16")
    assert (args.output_name, args.seed, args.max_grad_norm) == ("sks", 7, 0.5)
    assert args.v_parameterization and not args.v2 and args.cache_latents_to_disk and args.save_state


def test_ia3_prodigy_cawr_values(model: Path, dataset: Path, tmp_path: Path) -> None:
    plan = kohya.plan(dataset, model, tmp_path / "out", IA3_PRODIGY)
    args = sd_args(plan.command or [])
    assert args.network_module == "lycoris.kohya"
    preset = tmp_path / "out" / "lycoris-ia3-preset.toml"
    assert args.network_args == ["algo=ia3", f"preset={preset}", "train_on_input=False"]
    assert args.network_dim is None and preset in plan.files
    assert args.network_train_text_encoder_only
    assert args.optimizer_type == "Prodigy"
    assert args.optimizer_args == ["d0=0.0005", "decouple=True", "weight_decay=0.05"]
    assert args.lr_scheduler_type == "torch.optim.lr_scheduler.CosineAnnealingWarmRestarts"
    assert args.lr_scheduler_args == ["T_0=120", "T_mult=2", "eta_min=1e-06"]
    assert args.lr_warmup_steps is None  # sd-scripts refuses warm-up with a custom scheduler
    assert (args.multires_noise_iterations, args.multires_noise_discount) == (6, 0.3)
    assert any("LyCORIS" in note for note in plan.notes)


def test_constant_with_warmup_and_model_kind(tmp_path: Path, dataset: Path) -> None:
    v2 = fake_model(tmp_path / "sd2", cross_attention_dim=1024, prediction="v_prediction")
    args = sd_args(kohya.plan(dataset, v2, tmp_path / "o", TrainConfig(lr_warmup_steps=20)).command or [])
    assert args.v2 and args.v_parameterization and args.lr_scheduler == "constant_with_warmup"
    sd1 = kohya.plan(dataset, fake_model(tmp_path / "sd1"), tmp_path / "o", TrainConfig()).command or []
    assert not (sd_args(sd1).v2 or sd_args(sd1).v_parameterization)


def schema_check(data: dict[str, Any]) -> None:
    schema = SPEC["dataset_schema"]
    assert set(data) <= {"general", "datasets"}
    assert set(data.get("general", {})) <= set(schema["general"])
    for dataset in data["datasets"]:
        assert set(dataset) <= set(schema["datasets"]), set(dataset) - set(schema["datasets"])
        for subset in dataset["subsets"]:
            assert set(subset) <= set(schema["subsets"]), set(subset) - set(schema["subsets"])


def test_folder_mode_writes_a_dataset_toml(model: Path, dataset: Path, tmp_path: Path) -> None:
    config = TrainConfig(resolution=768, batch_size=3, shuffle_caption=True, keep_tokens=1)
    plan = kohya.plan(dataset, model, tmp_path / "out", config)
    path = tmp_path / "out" / "kohya-dataset.toml"
    assert plan.files == [path]
    data = tomllib.loads(path.read_text(encoding="utf-8"))
    schema_check(data)
    assert data["general"] == {"caption_extension": ".txt", "shuffle_caption": True, "keep_tokens": 1}
    (only,) = data["datasets"]
    assert (only["resolution"], only["batch_size"], only["enable_bucket"]) == (768, 3, True)
    subsets = {Path(s["image_dir"]).name: s for s in only["subsets"]}
    assert set(subsets) == {"10_sks woman", "3_style", "1_woman"}  # no N_ prefix: skipped, as sd-scripts
    assert subsets["10_sks woman"] == {"image_dir": str(dataset / "img" / "10_sks woman"), "num_repeats": 10,
                                       "class_tokens": "sks woman"}
    assert subsets["1_woman"]["is_reg"] is True and subsets["3_style"]["num_repeats"] == 3
    assert not list((tmp_path / "out").glob(".curate-tmp-*"))


def test_layout_dataset_toml_is_used_as_is(model: Path, tmp_path: Path) -> None:
    root = tmp_path / "lay"
    layout_toml(root, str(root / "img" / "5_sks"), "  alpha_mask = true\n  color_aug = true\n")
    plan = kohya.plan(root, model, tmp_path / "out", TrainConfig())
    assert sd_args(plan.command or []).dataset_config == str(root / "dataset.toml")
    assert plan.files == [] and not (tmp_path / "out" / "kohya-dataset.toml").exists()
    # the builtin trainer masks the loss too; color_aug it does not apply
    assert any("color_aug" in note and "builtin" in note and "alpha_mask" not in note for note in plan.notes)


def test_layout_dataset_toml_rewritten_for_overrides_and_relative_dirs(model: Path, tmp_path: Path) -> None:
    root = layout_toml(tmp_path / "lay", "img/5_sks")
    plan = kohya.plan(root / "dataset.toml", model, tmp_path / "out", TrainConfig(batch_size=4,
                                                                                    caption_dropout_rate=0.1))
    path = tmp_path / "out" / "kohya-dataset.toml"
    assert plan.files == [path] and sd_args(plan.command or []).dataset_config == str(path)
    data = tomllib.loads(path.read_text(encoding="utf-8"))
    schema_check(data)
    (subset,) = data["datasets"][0]["subsets"]
    assert subset["image_dir"] == str(root / "img" / "5_sks") and subset["caption_dropout_rate"] == 0.1
    assert data["datasets"][0]["batch_size"] == 4 and data["general"]["shuffle_caption"] is True


def test_unknown_setting_is_a_warning_never_dropped(model: Path, dataset: Path, tmp_path: Path) -> None:
    extended = make_dataclass("Extended", [("ema_decay", float, field(default=0.0))], bases=(TrainConfig,),
                              frozen=True)
    plan = kohya.plan(dataset, model, tmp_path / "o", extended(ema_decay=0.999))
    assert any("train.ema_decay = 0.999" in w for w in plan.warnings)
    assert not kohya.plan(dataset, model, tmp_path / "o", extended()).warnings
    assert not kohya.plan(dataset, model, tmp_path / "o", TrainConfig(threads=3)).warnings


def test_resume_from_a_builtin_state_folder_is_refused(model: Path, dataset: Path, tmp_path: Path) -> None:
    state = tmp_path / "last-state"
    state.mkdir()
    (state / "state.json").write_text("{}")
    (state / "optimizer.pt").write_bytes(b"")
    with pytest.raises(CurateError, match="builtin"):
        kohya.plan(dataset, model, tmp_path / "o", TrainConfig(), resume=state)
    other = tmp_path / "sd-state"
    other.mkdir()
    plan = kohya.plan(dataset, model, tmp_path / "o", TrainConfig(), resume=other)
    assert sd_args(plan.command or []).resume == str(other)


def test_cli_print_command(model: Path, dataset: Path, tmp_path: Path) -> None:
    result = cli_train(str(dataset), "--model", str(model), "--out", str(tmp_path / "out"),
                       "--backend", "kohya", "--print-command", "--network", "ia3",
                       "--set", "min_snr_gamma=5")
    assert result.exit_code == 0, result.output
    (line,) = result.stdout.splitlines()
    assert line.startswith("accelerate launch --num_cpu_threads_per_process 1 train_network.py ")
    assert sd_args(shlex.split(line)).min_snr_gamma == 5.0
    assert "lycoris" in result.stderr.lower()
    builtin = cli_train(str(dataset), "--model", str(model), "--out", str(tmp_path / "b"), "--print-command")
    assert builtin.exit_code == 2 and len(builtin.stderr.splitlines()) == 1 and "builtin" in builtin.stderr


def test_cli_sd_scripts_without_train_network(model: Path, dataset: Path, tmp_path: Path) -> None:
    fake = tmp_path / "not-sd-scripts"
    fake.mkdir()
    result = cli_train(str(dataset), "--model", str(model), "--out", str(tmp_path / "o"),
                       "--backend", "kohya", "--sd-scripts", str(fake))
    assert result.exit_code == 2
    assert result.stderr.splitlines() == [f"error: {fake}: no train_network.py here; --sd-scripts must be a "
                                          "kohya-ss/sd-scripts checkout"]


@pytest.mark.skipif(os.name != "posix", reason="a #! script stands in for accelerate")
def test_run_streams_the_output_and_reports_the_exit_code(model: Path, dataset: Path, tmp_path: Path) -> None:
    good = sd_scripts_checkout(tmp_path / "good", 0)
    plan = kohya.plan(dataset, model, tmp_path / "out", TrainConfig(), tool=good)
    assert plan.command and plan.command[4] == str(good / "train_network.py")
    chunks: list[bytes] = []
    result = kohya.run(plan, sink=chunks.append)
    text = b"".join(chunks).decode()
    assert f"cwd {good}" in text and "argv launch --num_cpu_threads_per_process 1 " + str(good) in text
    assert result.output == tmp_path / "out" / "last.safetensors" and result.details["returncode"] == 0
    bad = sd_scripts_checkout(tmp_path / "bad", 3)
    with pytest.raises(CurateError, match="exited with code 3"):
        kohya.run(replace(plan, tool=bad), sink=chunks.append)
    with pytest.raises(CurateError, match="--sd-scripts"):
        kohya.run(replace(plan, tool=None))


def test_registry_and_the_builtin_backend_trains(tmp_path: Path) -> None:
    assert set(BACKENDS) == {"builtin", "kohya", "aitoolkit"} and get_backend("kohya") is kohya
    with pytest.raises(CurateError, match="unknown trainer backend"):
        get_backend("onetrainer")
    pytest.importorskip("torch")
    pytest.importorskip("diffusers")
    from fixtures.tiny_sd import build_tiny_sd

    model = build_tiny_sd(tmp_path / "model")
    dataset = tmp_path / "ds"
    (dataset / "1_sks").mkdir(parents=True)
    for n, colour in enumerate(("red", "blue")):
        Image.new("RGB", (64, 64), colour).save(dataset / "1_sks" / f"{n}.png")
    config = TrainConfig(resolution=64, min_bucket_reso=64, max_bucket_reso=128, batch_size=1, network_dim=2,
                         max_train_steps=2, save_precision="float", threads=1)
    backend = get_backend("builtin")
    plan = backend.plan(dataset, model, tmp_path / "out", config)
    assert isinstance(plan, Plan) and plan.command is None
    with pytest.raises(CurateError, match="no command"):
        plan.shell()
    steps: list[int] = []
    result = backend.run(plan, on_step=lambda step, total, loss, info: steps.append(step))
    assert steps == [1, 2] and result.output == tmp_path / "out" / "last.safetensors"
    assert result.output.is_file()
    assert result.details["steps"] == 2 and "trained lora for 2 steps" in result.summary


def test_block_weights_become_sd_scripts_network_args(tmp_path: Path) -> None:
    from curate.trainer.backends.kohya import block_args

    notes: list[str] = []
    config = TrainConfig(block_lr_weights="IN=0,MID=0.5,OUT=1,BASE=0", block_lr_zero_threshold=0.1)
    args = block_args(config, notes)
    assert args["down_lr_weight"] == ",".join(["0"] * 12) and args["mid_lr_weight"] == "0.5"
    assert args["up_lr_weight"] == ",".join(["1"] * 12) and args["block_lr_zero_threshold"] == 0.1
    assert notes and "text encoder" in notes[0]
    assert block_args(TrainConfig(up_lr_weight="sine"), []) == {"up_lr_weight": "sine"}


# ---- SDXL: sdxl_train_network.py ----

