"""Trainer backends: the kohya plan is an sd-scripts command and dataset TOML that sd-scripts'
own parsers and schema accept (train_network.py's and sdxl_train_network.py's, pinned in
tests/data/sd_scripts_train_network_args.json, made by tests/data/extract_sd_scripts_args.py
from sd-scripts 48d368f), SDXL models get the SDXL script, the CLI prints or runs it, and the
builtin backend trains through the registry."""

from __future__ import annotations

import argparse
import json
import os
import shlex
import stat
import subprocess
import sys
import tomllib
from dataclasses import field, make_dataclass, replace
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from PIL import Image

from curate.cli import cli
from curate.errors import CurateError
from trainer.backends import BACKENDS, Plan, get_backend, kohya
from trainer.config import TrainConfig

DATA = Path(__file__).parent / "data"
SPEC = json.loads((DATA / "sd_scripts_train_network_args.json").read_text(encoding="utf-8"))
MIRROR = Path("/work/.mirror/kohya-ss+sd-scripts/repo")

LORA_CONV = TrainConfig(conv_dim=4, network_dim=16, network_alpha=8.0, network_dropout=0.1, unet_lr=2e-4,
                        text_encoder_lr=5e-5, optimizer="adamw8bit", optimizer_args={"betas": [0.9, 0.99]},
                        lr_scheduler="cosine_with_restarts", lr_warmup_steps=10, lr_scheduler_num_cycles=3,
                        noise_offset=0.05, adaptive_noise_scale=0.01, min_snr_gamma=5.0, clip_skip=2,
                        max_token_length=225, scale_weight_norms=1.0, save_every_n_steps=100,
                        save_every_n_epochs=1, save_state=True, save_last_n_steps=300, save_last_n_epochs=2,
                        sample_prompts="prompts.txt", sample_every_n_steps=50, sample_every_n_epochs=1,
                        sample_sampler="euler_a", logging_dir="logs", log_prefix="run",
                        mixed_precision="bf16", save_precision="bf16", gradient_checkpointing=True,
                        gradient_accumulation_steps=2,
                        cache_latents=True, cache_latents_to_disk=True, v_parameterization=True,
                        max_train_epochs=10, prior_loss_weight=0.5, train_text_encoder=False,
                        max_grad_norm=0.5, seed=7, output_name="sks")
IA3_PRODIGY = TrainConfig(network="ia3", ia3_train_on_input=False, optimizer="prodigy", learning_rate=1.0,
                          optimizer_args={"d0": 5e-4, "decouple": True, "weight_decay": 0.05},
                          lr_scheduler="cosine_annealing_warm_restarts", T_0=120, T_mult=2, eta_min=1e-6,
                          multires_noise_iterations=6, multires_noise_discount=0.3, train_unet=False)
DADAPT_POLY = TrainConfig(optimizer="dadaptadam", learning_rate=1.0, lr_scheduler="polynomial",
                          lr_scheduler_power=2.0, lr_warmup_steps=5)
RICH = {"lora_conv": LORA_CONV, "ia3_prodigy_cawr": IA3_PRODIGY, "dadapt_polynomial": DADAPT_POLY}


def sd_scripts_parser(sdxl: bool = False) -> argparse.ArgumentParser:
    """argparse from the extracted spec: names, flags, arity, types and choices as sd-scripts has them."""
    parser = argparse.ArgumentParser(allow_abbrev=False)
    types = {"int": int, "float": float, "int_or_float": float}
    for name, option in SPEC["sdxl_options" if sdxl else "options"].items():
        if option["action"] != "store":
            parser.add_argument(name, action=option["action"])
            continue
        extra: dict[str, Any] = {"nargs": option["nargs"]} if option["nargs"] is not None else {}
        if option["choices"]:
            extra["choices"] = option["choices"]
        parser.add_argument(name, type=types.get(option["type"], str), **extra)
    return parser


def sd_args(command: list[str], sdxl: bool = False) -> argparse.Namespace:
    """The command parsed as its sd-scripts script would; every flag must be one the script has."""
    assert command[:4] == ["accelerate", "launch", "--num_cpu_threads_per_process", "1"]
    assert Path(command[4]).name == ("sdxl_train_network.py" if sdxl else "train_network.py")
    known = set(SPEC["sdxl_options" if sdxl else "options"])
    flags = [a for a in command[5:] if a.startswith("--")]
    assert not set(flags) - known, set(flags) - known
    assert len(flags) == len(set(flags)), "an option given twice"
    return sd_scripts_parser(sdxl).parse_args(command[5:])


def fake_model(root: Path, cross_attention_dim: int = 768, prediction: str = "epsilon",
               index: dict[str, Any] | None = None) -> Path:
    """A diffusers folder as far as the kohya plan reads one (the configs; no weights)."""
    (root / "unet").mkdir(parents=True)
    (root / "scheduler").mkdir()
    (root / "model_index.json").write_text(json.dumps(index or {}), encoding="utf-8")
    (root / "unet" / "config.json").write_text(json.dumps({"cross_attention_dim": cross_attention_dim}))
    (root / "scheduler" / "scheduler_config.json").write_text(json.dumps({"prediction_type": prediction}))
    return root


def folder_dataset(root: Path) -> Path:
    for folder in ("img/10_sks woman", "img/3_style", "reg/1_woman", "img/notrepeated"):
        (root / folder).mkdir(parents=True)
        Image.new("RGB", (64, 64), "red").save(root / folder / "a.png")
    return root


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
    assert args.network_args == ["conv_dim=4", "conv_alpha=4"]  # builtin: unset conv_alpha = conv_dim
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
    assert args.network_args == ["algo=ia3", "train_on_input=False"] and args.network_dim is None
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


def layout_toml(root: Path, image_dir: str, extra: str = "") -> Path:
    (root / "img" / "5_sks").mkdir(parents=True)
    Image.new("RGB", (64, 64)).save(root / "img" / "5_sks" / "a.png")
    text = ('[general]\ncaption_extension = ".txt"\nshuffle_caption = true\n\n'
            '[[datasets]]\nresolution = 512\n'
            f'batch_size = 2\n\n  [[datasets.subsets]]\n  image_dir = "{image_dir}"\n  num_repeats = 5\n'
            f'  class_tokens = "sks"\n{extra}')
    (root / "dataset.toml").write_text(text, encoding="utf-8")
    return root


def test_layout_dataset_toml_is_used_as_is(model: Path, tmp_path: Path) -> None:
    root = tmp_path / "lay"
    layout_toml(root, str(root / "img" / "5_sks"), "  alpha_mask = true\n")
    plan = kohya.plan(root, model, tmp_path / "out", TrainConfig())
    assert sd_args(plan.command or []).dataset_config == str(root / "dataset.toml")
    assert plan.files == [] and not (tmp_path / "out" / "kohya-dataset.toml").exists()
    assert any("alpha_mask" in note and "builtin" in note for note in plan.notes)


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


def cli_train(*args: str) -> Any:
    return CliRunner().invoke(cli, ["train", *args])


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


def sd_scripts_checkout(root: Path, exit_code: int) -> Path:
    """A folder shaped like sd-scripts whose venv's `accelerate` prints its arguments and exits."""
    (root / "venv" / "bin").mkdir(parents=True)
    (root / "train_network.py").write_text("# sd-scripts stand-in\n")
    program = root / "venv" / "bin" / "accelerate"
    program.write_text(f"#!{sys.executable}\nimport os, sys\nprint('cwd', os.getcwd())\n"
                       f"print('argv', *sys.argv[1:5])\nsys.exit({exit_code})\n")
    program.chmod(program.stat().st_mode | stat.S_IXUSR)
    return root


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
    assert set(BACKENDS) == {"builtin", "kohya"} and get_backend("kohya") is kohya
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
    from trainer.backends.kohya import block_args

    notes: list[str] = []
    config = TrainConfig(block_lr_weights="IN=0,MID=0.5,OUT=1,BASE=0", block_lr_zero_threshold=0.1)
    args = block_args(config, notes)
    assert args["down_lr_weight"] == ",".join(["0"] * 12) and args["mid_lr_weight"] == "0.5"
    assert args["up_lr_weight"] == ",".join(["1"] * 12) and args["block_lr_zero_threshold"] == 0.1
    assert notes and "text encoder" in notes[0]
    assert block_args(TrainConfig(up_lr_weight="sine"), []) == {"up_lr_weight": "sine"}


# ---- SDXL: sdxl_train_network.py ----

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
        "--seed 42 --prior_loss_weight 1 --output_name last --save_precision fp16 --mixed_precision no")
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
    from trainer.single_file import CLIP_KEY, OPEN_CLIP_KEY, SDXL_KEYS, UNET_KEY, VAE_KEY

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
    ({"block_lr_weights": "OUTALL"}, "down/mid/up_lr_weight"),
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
