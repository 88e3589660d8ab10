"""Presets, their precedence (defaults < preset < --config < --set < flags), the LR schedules and
the CPU thread default."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from curate.cli import cli
from curate.errors import CurateError
from curate.trainer.config import TrainConfig, train_config
from curate.trainer.presets import PRESETS, describe, preset_table


def test_presets_build_and_match_the_recipes() -> None:
    ia3 = train_config(None, preset="prodigy-ia3")
    assert (ia3.network, ia3.optimizer) == ("ia3", "prodigy")
    assert ia3.lr_scheduler == "cosine_annealing_warm_restarts"
    assert (ia3.T_0, ia3.T_mult, ia3.eta_min, ia3.learning_rate) == (160, 1, 0.0, 1.0)
    lora = train_config(None, preset="easy-lora")
    assert (lora.network, lora.network_dim, lora.network_alpha) == ("lora", 64, 1.0)
    assert (lora.optimizer, lora.lr_scheduler, lora.min_snr_gamma) == ("prodigy", "constant", 5.0)
    assert lora.optimizer_args["betas"] == [0.9, 0.99]


def test_precedence_defaults_preset_file_set_flags(tmp_path: Path) -> None:
    config_file = tmp_path / "train.toml"
    config_file.write_text("[train]\nnetwork_dim = 32\nmin_snr_gamma = 3.0\nseed = 7\n", encoding="utf-8")
    config = train_config(config_file, ["min_snr_gamma=2.0", "train.seed=8"], {"seed": 9, "network": None},
                          preset="easy-lora")
    assert config.network_alpha == 1.0  # preset over default
    assert config.network_dim == 32  # file over preset
    assert config.min_snr_gamma == 2.0  # --set over file
    assert config.seed == 9  # flag over --set
    assert config.optimizer == "prodigy"  # untouched preset value stays
    assert train_config(None, flags={"network_dim": 16}, preset="easy-lora").network_dim == 16


def test_unknown_preset_names_the_known_ones() -> None:
    with pytest.raises(CurateError, match="prodigy-ia3"):
        preset_table("nope")


def test_list_presets_prints_every_preset_without_dataset_arguments() -> None:
    result = CliRunner().invoke(cli, ["train", "--list-presets"])
    assert result.exit_code == 0, result.output
    assert result.output == describe()
    for name in PRESETS:
        assert f"{name}:" in result.output
    assert 'lr_scheduler = "cosine_annealing_warm_restarts"' in result.output


def test_cli_rejects_unknown_preset(tmp_path: Path) -> None:
    result = CliRunner().invoke(cli, ["train", str(tmp_path), "--model", str(tmp_path), "--out",
                                      str(tmp_path / "o"), "--preset", "nope"])
    assert result.exit_code == 2
    assert "unknown preset 'nope'" in result.output


@pytest.mark.parametrize("name", ["constant", "constant_with_warmup", "linear", "cosine",
                                  "cosine_with_restarts", "polynomial", "cosine_annealing_warm_restarts"])
def test_every_scheduler_builds_and_steps(name: str) -> None:
    torch = pytest.importorskip("torch")
    pytest.importorskip("diffusers")
    from curate.trainer.loop import make_lr_scheduler

    config = TrainConfig(lr_scheduler=name, lr_warmup_steps=2, T_0=4, learning_rate=0.1)  # type: ignore[arg-type]
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)
    scheduler = make_lr_scheduler(config, optimizer, total_steps=10)
    rates = []
    for _ in range(8):
        optimizer.step()
        scheduler.step()
        rates.append(optimizer.param_groups[0]["lr"])
    assert all(0 <= r <= 0.1 + 1e-12 for r in rates)
    if name == "cosine_annealing_warm_restarts":  # back at the top after each T_0 steps
        assert rates[3] == pytest.approx(0.1) and rates[7] == pytest.approx(0.1)
        assert rates[1] == pytest.approx(0.05)


def test_thread_default() -> None:
    torch = pytest.importorskip("torch")
    pytest.importorskip("diffusers")
    import os

    from curate.trainer.loop import cpu_threads

    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert cpu_threads(TrainConfig(threads=3), cpu) == 3
    assert cpu_threads(TrainConfig(threads=0), cpu) is None
    assert cpu_threads(TrainConfig(threads=3), cuda) is None
    assert cpu_threads(TrainConfig(), cpu) == (1 if (os.cpu_count() or 1) <= 2 else None)
    with pytest.raises(CurateError, match="threads"):
        TrainConfig(threads=-1).check()


def test_cli_trains_with_the_ia3_preset_and_resumes_its_schedule(tmp_path: Path) -> None:
    """--preset prodigy-ia3 end to end on the tiny model; a paused run resumes the warm restarts."""
    torch = pytest.importorskip("torch")
    pytest.importorskip("diffusers")
    import json

    from PIL import Image

    from curate.trainer import loop
    from fixtures.tiny_sd import build_tiny_sd

    model = build_tiny_sd(tmp_path / "model")
    folder = tmp_path / "data" / "1_sks"
    folder.mkdir(parents=True)
    for i in range(2):
        Image.new("RGB", (64, 64), (60 * i, 90, 200)).save(folder / f"{i}.png")
    settings = ["T_0=2", "resolution=64", "min_bucket_reso=64", "batch_size=2"]
    args = ["train", str(tmp_path / "data"), "--model", str(model), "--out", str(tmp_path / "out"),
            "--preset", "prodigy-ia3", "--max-train-steps", "4", "--threads", "1", "--json",
            *(part for item in settings for part in ("--set", item))]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["steps"] == 4
    config = train_config(None, settings, {"max_train_steps": 4}, preset="prodigy-ia3")
    paused = loop.train(tmp_path / "data", model, tmp_path / "p", config, stop_after=3,
                        device=torch.device("cpu"))
    resumed = loop.train(tmp_path / "data", model, tmp_path / "p", config, device=torch.device("cpu"),
                         resume=paused.saved[-1])
    whole = loop.train(tmp_path / "data", model, tmp_path / "w", config, device=torch.device("cpu"))
    assert paused.losses + resumed.losses == whole.losses
