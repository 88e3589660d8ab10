"""Shared by the backend tests: sd-scripts' option spec (extracted from its source), rich
configs, and the fake model / dataset folders the kohya plan reads."""

from __future__ import annotations

import argparse
import json
import stat
import sys
from pathlib import Path
from typing import Any

from click.testing import CliRunner
from PIL import Image

from curate.cli import cli
from curate.trainer.config import TrainConfig

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


# each script -> its option list in SPEC (tests/data/extract_sd_scripts_args.py)
OPTION_LISTS = {"train_network.py": "options", "sdxl_train_network.py": "sdxl_options",
                "flux_train_network.py": "flux_options", "sd3_train_network.py": "sd3_options"}


def _script(sdxl: bool, script: str | None) -> str:
    return script or ("sdxl_train_network.py" if sdxl else "train_network.py")


def sd_scripts_parser(sdxl: bool = False, script: str | None = None) -> argparse.ArgumentParser:
    """argparse from the extracted spec: names, flags, arity, types and choices as sd-scripts has them."""
    parser = argparse.ArgumentParser(allow_abbrev=False)
    types = {"int": int, "float": float, "int_or_float": float}
    for name, option in SPEC[OPTION_LISTS[_script(sdxl, script)]].items():
        if option["action"] != "store":
            parser.add_argument(name, action=option["action"])
            continue
        extra: dict[str, Any] = {"nargs": option["nargs"]} if option["nargs"] is not None else {}
        if option["choices"]:
            extra["choices"] = option["choices"]
        parser.add_argument(name, type=types.get(option["type"], str), **extra)
    return parser


def sd_args(command: list[str], sdxl: bool = False, script: str | None = None) -> argparse.Namespace:
    """The command parsed as its sd-scripts script would; every flag must be one the script has."""
    script = _script(sdxl, script)
    assert command[:4] == ["accelerate", "launch", "--num_cpu_threads_per_process", "1"]
    assert Path(command[4]).name == script
    known = set(SPEC[OPTION_LISTS[script]])
    flags = [a for a in command[5:] if a.startswith("--")]
    assert not set(flags) - known, set(flags) - known
    assert len(flags) == len(set(flags)), "an option given twice"
    return sd_scripts_parser(script=script).parse_args(command[5:])


def fake_model(root: Path, cross_attention_dim: int = 768, prediction: str = "epsilon",
               index: dict[str, Any] | None = None) -> Path:
    """A diffusers folder as far as the kohya plan reads one (the configs; no weights)."""
    (root / "unet").mkdir(parents=True)
    (root / "scheduler").mkdir()
    (root / "model_index.json").write_text(json.dumps(index or {}), encoding="utf-8")
    (root / "unet" / "config.json").write_text(json.dumps({"cross_attention_dim": cross_attention_dim}))
    (root / "scheduler" / "scheduler_config.json").write_text(json.dumps({"prediction_type": prediction}))
    for name in ("tokenizer", "tokenizer_2"):  # what the kohya plan copies into its tokenizer cache
        (root / name).mkdir()
        (root / name / "vocab.json").write_text(json.dumps({"a</w>": 0}), encoding="utf-8")
    return root


def folder_dataset(root: Path) -> Path:
    for folder in ("img/10_sks woman", "img/3_style", "reg/1_woman", "img/notrepeated"):
        (root / folder).mkdir(parents=True)
        Image.new("RGB", (64, 64), "red").save(root / folder / "a.png")
    return root


def layout_toml(root: Path, image_dir: str, extra: str = "") -> Path:
    (root / "img" / "5_sks").mkdir(parents=True)
    Image.new("RGB", (64, 64)).save(root / "img" / "5_sks" / "a.png")
    text = ('[general]\ncaption_extension = ".txt"\nshuffle_caption = true\n\n'
            '[[datasets]]\nresolution = 512\n'
            f'batch_size = 2\n\n  [[datasets.subsets]]\n  image_dir = "{image_dir}"\n  num_repeats = 5\n'
            f'  class_tokens = "sks"\n{extra}')
    (root / "dataset.toml").write_text(text, encoding="utf-8")
    return root


def cli_train(*args: str) -> Any:
    return CliRunner().invoke(cli, ["train", *args])


def sd_scripts_checkout(root: Path, exit_code: int) -> Path:
    """A folder shaped like sd-scripts whose venv's `accelerate` prints its arguments and exits."""
    (root / "venv" / "bin").mkdir(parents=True)
    (root / "train_network.py").write_text("# sd-scripts stand-in\n")
    program = root / "venv" / "bin" / "accelerate"
    program.write_text(f"#!{sys.executable}\nimport os, sys\nprint('cwd', os.getcwd())\n"
                       f"print('argv', *sys.argv[1:5])\nsys.exit({exit_code})\n")
    program.chmod(program.stat().st_mode | stat.S_IXUSR)
    return root
