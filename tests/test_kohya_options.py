"""sd-scripts' option spellings in [train] and --set, kohya_ss GUI .json recipes (the seeds' three,
tests/data/kohya_ss, made by fixtures/kohya_ss_recipes.py), --print-config, and the kohya backend's
new options (issue 17 items 4 and 6). The training and LyCORIS checks are in
tests/test_kohya_options_train.py."""

from __future__ import annotations

import ast
import json
import subprocess
import tomllib
from pathlib import Path

import pytest
from backend_helpers import MIRROR, fake_model, folder_dataset, sd_args
from click.testing import CliRunner

from curate.cli import cli
from curate.errors import CurateError
from curate.trainer.backends import kohya
from curate.trainer.config import TrainConfig, train_config
from curate.trainer.spellings import key_values

RECIPES = Path(__file__).parent / "data" / "kohya_ss"
COMMIT = "48d368fa557731ad0488c07304dfeba8c07910eb"


def _toml(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "train.toml"
    path.write_text("[train]\n" + text, encoding="utf-8")
    return path


def _sd_source(path: str) -> str:
    if not MIRROR.is_dir():
        pytest.skip("no sd-scripts mirror here")
    return subprocess.run(
        ["git", f"--git-dir={MIRROR}", "show", f"{COMMIT}:{path}"], capture_output=True, text=True, check=True
    ).stdout


@pytest.mark.parametrize("spelled", ["Prodigy", "prodigy", "PRODIGY"])
def test_optimizer_type_any_case(tmp_path: Path, spelled: str) -> None:
    config = train_config(_toml(tmp_path, f'optimizer_type = "{spelled}"\nlearning_rate = 1.0\n'))
    assert config.optimizer == "prodigy"
    for name, ours in (
        ("AdamW8bit", "adamw8bit"),
        ("DAdaptAdam", "dadaptadam"),
        ("AdamW", "adamw"),
        ("DAdaptation", "dadaptadam"),
    ):
        assert train_config(None, [f"optimizer_type={name}"]).optimizer == ours


def test_an_optimizer_we_cannot_run_names_the_ones_we_can(tmp_path: Path) -> None:
    with pytest.raises(CurateError, match="AdamW, AdamW8bit, Prodigy and DAdaptAdam"):
        train_config(_toml(tmp_path, 'optimizer_type = "Lion"\n'))
    with pytest.raises(CurateError, match="both optimizer_type"):
        train_config(_toml(tmp_path, 'optimizer_type = "Prodigy"\noptimizer = "adamw"\n'))


def test_optimizer_args_are_parsed_as_sd_scripts_parses_them(tmp_path: Path) -> None:
    items = ["d0=5e-4", "decouple=True", "betas=(0.9,0.99)", "weight_decay=0.01", "name='x'"]
    # sd-scripts' own loop (train_util.get_optimizer), taken from its pinned source and run here
    source = _sd_source("library/train_util.py")
    loop = (
        '        for arg in args.optimizer_args:\n            key, value = arg.split("=")\n'
        "            value = ast.literal_eval(value)\n"
    )
    assert loop in source
    theirs = {}
    for arg in items:
        key, value = arg.split("=")
        theirs[key] = ast.literal_eval(value)
    assert key_values(items, "optimizer_args") == theirs
    config = train_config(_toml(tmp_path, f"optimizer_args = {json.dumps(items)}\n"))
    assert config.optimizer_args == theirs
    with pytest.raises(CurateError, match="exactly one '='"):
        key_values(["a=b=c"], "optimizer_args")
    with pytest.raises(CurateError, match="literal_eval"):
        key_values(["mode=fast"], "optimizer_args")


def test_lr_scheduler_type_and_args(tmp_path: Path) -> None:
    config = train_config(
        _toml(
            tmp_path,
            'lr_scheduler_type = "torch.optim.lr_scheduler.CosineAnnealingWarm'
            'Restarts"\nlr_scheduler_args = ["T_0=120", "T_mult=2", "eta_min=1e-6"]\n',
        )
    )
    assert (config.lr_scheduler, config.T_0, config.T_mult, config.eta_min) == (
        "cosine_annealing_warm_restarts", 120, 2, 1e-6,
    )
    config = train_config(None, ['lr_scheduler="polynomial"', 'lr_scheduler_args=["power=2.0"]'])
    assert config.lr_scheduler_power == 2.0
    with pytest.raises(CurateError, match="CosineAnnealingWarmRestarts"):
        train_config(None, ["lr_scheduler_type=OneCycleLR"])
    with pytest.raises(CurateError, match="not an argument"):
        train_config(None, ["lr_scheduler_type=CosineAnnealingWarmRestarts", 'lr_scheduler_args=["gamma=2"]'])


def test_network_args_and_module(tmp_path: Path) -> None:
    config = train_config(
        _toml(
            tmp_path,
            'network_module = "networks.lora"\nnetwork_args = ["conv_dim=8", '
            '"conv_alpha=4", "down_lr_weight=sine"]\ntrain_batch_size = 4\n',
        )
    )
    assert (config.network, config.conv_dim, config.conv_alpha, config.down_lr_weight, config.batch_size) == (
        "lora", 8, 4.0, "sine", 4,
    )
    ia3 = train_config(
        None,
        ["network_module=lycoris.kohya", 'network_args=["algo=ia3", "preset=ia3", "train_on_input=False"]'],
    )
    assert (ia3.network, ia3.ia3_train_on_input) == ("ia3", False)
    with pytest.raises(CurateError, match=r"preset=full"):
        train_config(None, ["network_module=lycoris.kohya", 'network_args=["algo=ia3", "preset=full"]'])
    with pytest.raises(CurateError, match=r"rank_dropout=0\.1 is not one"):
        train_config(None, ['network_args=["rank_dropout=0.1"]'])
    with pytest.raises(CurateError, match=r"networks\.dylora"):
        train_config(None, ["network_module=networks.dylora"])


def test_lycoris_algos_by_network_args() -> None:
    """sd-scripts' spelling of a LyCORIS network: lycoris.kohya with algo= in network_args."""
    for algo in ("loha", "lokr"):
        args = f'network_args=["algo={algo}", "conv_dim=4"]'
        config = train_config(None, ["network_module=lycoris.kohya", args])
        assert (config.network, config.conv_dim) == (algo, 4)


def test_set_spellings_win_over_the_file(tmp_path: Path) -> None:
    config = train_config(
        _toml(tmp_path, 'optimizer = "adamw"\nbatch_size = 2\n'),
        ["optimizer_type=Prodigy", "train_batch_size=6", "learning_rate=1.0"],
    )
    assert (config.optimizer, config.batch_size) == ("prodigy", 6)


def test_caption_dropout_every_n_epochs_and_noise_offset_random_strength_reach_sd_scripts(
    tmp_path: Path,
) -> None:
    model, dataset = fake_model(tmp_path / "model"), folder_dataset(tmp_path / "ds")
    config = TrainConfig(
        noise_offset=0.1, noise_offset_random_strength=True, caption_dropout_every_n_epochs=3
    )
    plan = kohya.plan(dataset, model, tmp_path / "out", config)
    args = sd_args(plan.command or [])
    assert args.noise_offset == 0.1 and args.noise_offset_random_strength
    toml = tomllib.loads((tmp_path / "out" / "kohya-dataset.toml").read_text(encoding="utf-8"))
    assert toml["general"]["caption_dropout_every_n_epochs"] == 3


def test_reg_data_dir_in_folder_mode(tmp_path: Path) -> None:
    from PIL import Image

    from curate.trainer.data import load_dataset

    train, reg = tmp_path / "train", tmp_path / "reg"
    for folder in (train / "2_sks", reg / "1_woman"):
        folder.mkdir(parents=True)
        for name in ("a", "b", "c"):
            Image.new("RGB", (64, 64)).save(folder / f"{name}.png")
    dataset = load_dataset(train, reg_dir=reg)
    assert sorted((i.subset.is_reg, i.caption) for i in dataset.items)[-1] == (True, "woman")
    model = fake_model(tmp_path / "model")
    config = train_config(
        None, [f"train_data_dir={json.dumps(str(train))}", f"reg_data_dir={json.dumps(str(reg))}"]
    )
    plan = kohya.plan(train, model, tmp_path / "out", config)
    subsets = tomllib.loads((tmp_path / "out" / "kohya-dataset.toml").read_text())["datasets"][0]["subsets"]
    assert [s.get("is_reg", False) for s in subsets] == [False, True] and plan.command


def _recipe(name: str) -> tuple[TrainConfig, list[tuple[str, str]]]:
    messages: list[tuple[str, str]] = []
    return train_config(RECIPES / name, messages=messages), messages


def test_recipe_prodigy_ia3_2023_09() -> None:
    config, messages = _recipe("ia3_prodigy_2023-09.json")
    assert (config.network, config.ia3_train_on_input, config.optimizer, config.learning_rate) == (
        "ia3", True, "prodigy", 1.0,
    )
    assert config.optimizer_args == {
        "d0": 5e-4, "d_coef": 1.0, "weight_decay": 0.05, "use_bias_correction": True,
    }
    # additional_parameters' --lr_scheduler_type wins over lr_scheduler "cosine", as in sd-scripts
    assert (config.lr_scheduler, config.T_0, config.T_mult, config.eta_min) == (
        "cosine_annealing_warm_restarts", 160, 1, 0.0,
    )
    assert (config.batch_size, config.max_token_length, config.min_snr_gamma, config.clip_skip) == (
        10, 225, 1.0, 1,
    )
    assert (config.save_every_n_steps, config.save_every_n_epochs, config.scale_weight_norms) == (
        10, None, None,
    )
    assert config.cache_latents and config.cache_latents_to_disk and config.gradient_checkpointing
    assert (config.caption_extension, config.shuffle_caption, config.max_train_epochs) == (
        ".none-use-foldername", False, 31337,
    )
    assert not [m for m in messages if m[0] == "warning"]
    assert any("training_comment" in text for _, text in messages)


def test_recipe_prodigy_ia3_2023_07_with_its_trailing_comma() -> None:
    config, messages = _recipe("ia3_prodigy_2023-07.json")
    assert (
        "warning",
        f"{RECIPES / 'ia3_prodigy_2023-07.json'}: a trailing comma (line 36) is not JSON; read without it",
    ) in messages
    assert (config.network, config.optimizer, config.seed, config.max_train_epochs) == (
        "ia3", "prodigy", 31337, 300,
    )
    assert config.optimizer_args == {"d_coef": 1.0, "safeguard_warmup": False, "use_bias_correction": False}
    assert (config.noise_offset, config.adaptive_noise_scale, config.min_snr_gamma) == (0.05, 0.005, 3.0)
    assert (config.batch_size, config.gradient_accumulation_steps, config.keep_tokens) == (15, 2, 1)
    assert (config.scale_weight_norms, config.save_every_n_epochs, config.sample_every_n_epochs) == (
        1.0, 10, 10,
    )
    assert config.shuffle_caption and config.network_dim == 8  # iA3: the recipe's dim 1024 is ignored, noted
    assert any("network_dim, network_alpha, conv_dim, conv_alpha, network_dropout" in t for _, t in messages)


def test_recipe_loha_dadaptation_2023_04(tmp_path: Path) -> None:
    """Guide 002's recipe: LoHa for a character, as the guide describes it."""
    messages: list[tuple[str, str]] = []
    config = train_config(RECIPES / "loha_dadaptation_2023-04.json", messages=messages)
    assert config.network == "loha"
    assert (config.optimizer, config.learning_rate, config.unet_lr, config.text_encoder_lr) == (
        "dadaptadam", 1.0, 1.0, 1.0,
    )
    assert config.optimizer_args == {"decouple": True, "weight_decay": 0.01, "betas": (0.9, 0.99)}
    assert (config.resolution, config.max_token_length, config.seed, config.min_snr_gamma) == (
        576, 150, 31337, 3.0,
    )
    assert (config.network_dim, config.network_alpha, config.conv_dim, config.conv_alpha) == (8, 8.0, 8, 8.0)
    assert (config.lr_scheduler, config.lr_warmup_steps, config.noise_offset, config.sample_sampler) == (
        "constant", 0, 0.0, "euler_a",
    )
    assert (config.save_every_n_epochs, config.gradient_accumulation_steps, config.v_parameterization) == (
        1, 1, None,
    )
    assert any("DAdaptAdam" in t for _, t in messages) and any(
        "sample_prompts holds prompt text" in t for _, t in messages
    )
    assert any("color_aug, flip_aug" in t for _, t in messages)


def test_recipe_keys_never_dropped_silently(tmp_path: Path) -> None:
    path = tmp_path / "r.json"
    path.write_text(
        json.dumps(
            {
                "LoRA_type": "Standard", "random_crop": True, "brand_new_key": 1, "huggingface_token": "x",
                "flux1_checkbox": False,
            }
        ),
        encoding="utf-8",
    )
    messages: list[tuple[str, str]] = []
    train_config(path, messages=messages)
    texts = [t for _, t in messages]
    assert ("warning", "random_crop = True: curate does not train with it; training differs") in messages
    assert ("warning", "brand_new_key: not a kohya_ss key curate knows; ignored") in messages
    assert any("logging and uploads" in t and "huggingface_token" in t for t in texts)
    assert any("another model family" in t and "flux1_checkbox" in t for t in texts)
    path.write_text(json.dumps({"LoRA_type": "Standard", "sd3_checkbox": True}), encoding="utf-8")
    with pytest.raises(CurateError, match="another model family"):
        train_config(path)
    path.write_text('{"LoRA_type": "Standard" "x": 1}', encoding="utf-8")
    with pytest.raises(CurateError, match="not valid JSON"):
        train_config(path)


def test_print_config_reads_back(tmp_path: Path) -> None:
    result = CliRunner().invoke(
        cli,
        [
            "train", "--config",
            str(RECIPES / "ia3_prodigy_2023-09.json"),
            "--print-config", "--set", "T_0=120",
        ],
    )
    assert result.exit_code == 0, result.output
    text = result.stdout
    (tmp_path / "back.toml").write_text(text, encoding="utf-8")
    again = train_config(tmp_path / "back.toml")
    assert again == train_config(RECIPES / "ia3_prodigy_2023-09.json", ["T_0=120"])
    assert again.T_0 == 120 and tomllib.loads(text)["train"]["network"] == "ia3"


def test_cli_dataset_from_train_data_dir(tmp_path: Path) -> None:
    dataset, model = folder_dataset(tmp_path / "ds"), fake_model(tmp_path / "model")
    result = CliRunner().invoke(
        cli,
        [
            "train", "--model",
            str(model),
            "--out",
            str(tmp_path / "out"),
            "--backend", "kohya", "--print-command", "--set",
            f"train_data_dir={json.dumps(str(dataset))}",
        ],
    )
    assert result.exit_code == 0, result.output
    assert "--dataset_config" in result.stdout
    result = CliRunner().invoke(
        cli,
        [
            "train",
            str(model),
            "--model",
            str(model),
            "--out",
            str(tmp_path / "o"),
            "--set",
            f"train_data_dir={json.dumps(str(dataset))}",
        ],
    )
    assert result.exit_code != 0 and "differ" in result.output
