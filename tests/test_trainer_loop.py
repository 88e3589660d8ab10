"""Training on the tiny model: the loss falls on a memorisable set, a paused and resumed run is
bit-for-bit the uninterrupted one, and `curate train` wires it up."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("diffusers")

from click.testing import CliRunner  # noqa: E402
from trainer_helpers import eval_loss  # noqa: E402

from curate.cli import cli  # noqa: E402
from curate.errors import CurateError  # noqa: E402
from curate.trainer import loop  # noqa: E402
from curate.trainer.config import TrainConfig  # noqa: E402
from curate.trainer.formats import load_network  # noqa: E402

SMALL = TrainConfig(resolution=64, min_bucket_reso=64, max_bucket_reso=128, batch_size=4, network_dim=4,
                    save_precision="float", seed=1)

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def model(tiny_sd: Path) -> Path:
    return tiny_sd


@pytest.fixture(scope="module")
def dataset(photos_dataset: Path) -> Path:
    return photos_dataset


def test_loss_falls_on_a_memorisable_set(model: Path, dataset: Path, tmp_path: Path) -> None:
    config = replace(SMALL, max_train_steps=30, learning_rate=1e-2)
    result = loop.train(dataset, model, tmp_path, config, device=torch.device("cpu"))
    assert result.steps == 30 and result.output == tmp_path / "last.safetensors"
    run = loop.prepare(dataset, model, config, torch.device("cpu"))
    before = eval_loss(run, config)
    run.network.load_kohya_state_dict(load_network(result.output)[0])
    after = eval_loss(run, config)
    assert after < 0.85 * before, (before, after)


def _tensors(path: Path) -> dict[str, torch.Tensor]:
    return load_network(path)[0]


@pytest.mark.parametrize("network", ["lora", "ia3"])
def test_pause_and_resume_is_bit_for_bit(model: Path, dataset: Path, tmp_path: Path, network: str) -> None:
    """4 steps (2 epochs of 2 batches) straight == 2, stop, resume from the state, 2 more; with
    dropout, shuffled captions, noise offset, min-SNR, warmup + cosine: every random stream."""
    config = replace(SMALL, network=network, batch_size=2, max_train_steps=4, learning_rate=1e-3,
                     network_dropout=0.2, shuffle_caption=True, keep_tokens=1, noise_offset=0.05,
                     min_snr_gamma=5.0, lr_scheduler="cosine", lr_warmup_steps=1)
    cpu = torch.device("cpu")
    straight = loop.train(dataset, model, tmp_path / "a", config, device=cpu)
    paused = loop.train(dataset, model, tmp_path / "b", config, device=cpu, stop_after=2)
    assert paused.output.name == "last-step00000002.safetensors"
    state = tmp_path / "b" / "last-step00000002-state"
    resumed = loop.train(dataset, model, tmp_path / "b", config, device=cpu, resume=state)
    assert resumed.resumed_from == 2 and resumed.steps == 4
    assert paused.losses + resumed.losses == straight.losses
    expected, got = _tensors(straight.output), _tensors(resumed.output)
    assert expected.keys() == got.keys() and all(torch.equal(expected[k], got[k]) for k in expected)
    meta = load_network(resumed.output)[1]
    assert (meta["ss_steps"], meta["ss_epoch"]) == ("4", "2")


def test_resume_refuses_other_settings(model: Path, dataset: Path, tmp_path: Path) -> None:
    config = replace(SMALL, max_train_steps=2, save_state=True)
    loop.train(dataset, model, tmp_path, config, device=torch.device("cpu"))
    with pytest.raises(CurateError, match="network_dim"):
        loop.train(dataset, model, tmp_path, replace(config, network_dim=8), resume=tmp_path / "last-state",
                   device=torch.device("cpu"))


def test_cli_train_json_and_saves(model: Path, dataset: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    args = ["train", str(dataset), "--model", str(model), "--out", str(out), "--max-train-steps", "4",
            "--save-every-n-steps", "2", "--output-name", "sks", "--json", "--set", "resolution=64",
            "--set", "min_bucket_reso=64", "--set", "batch_size=2", "--set", "optimizer=\"prodigy\"",
            "--set", "learning_rate=1.0"]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["steps"] == 4 and data["output"] == str(out / "sks.safetensors")
    assert sorted(p.name for p in out.iterdir()) == ["sks-config.toml", "sks-step00000002.safetensors",
                                                      "sks.safetensors"]
    meta = load_network(out / "sks.safetensors")[1]
    assert meta["ss_optimizer"].endswith("Prodigy") and json.loads(meta["ss_dataset_dirs"]) == {
        "1_sks": {"n_repeats": 1, "img_count": 4}}
    assert json.loads(meta["ss_tag_frequency"])["1_sks"]["sks"] == 4


def test_cli_refuses_pickles(dataset: Path, tmp_path: Path) -> None:
    ckpt = tmp_path / "model.ckpt"
    ckpt.write_bytes(b"not really a pickle")
    args = ["train", str(dataset), "--model", str(ckpt), "--out", str(tmp_path / "o")]
    result = CliRunner().invoke(cli, [*args, "--set", "resolution=64", "--set", "min_bucket_reso=64"])
    assert result.exit_code == 2 and "pickle" in result.stderr
