"""Parity with sd-scripts, pinned by running its own source (issue 17): LoRA's alpha defaults,
the regularisation-image cap, the training metadata keys and the addnet hashes.

The pieces of sd-scripts' source come from tests/data/sd_scripts_parity.json, which
tests/data/extract_sd_scripts_parity.py cuts out of a pinned commit; the first test extracts
them again from the sd-scripts mirror when there is one, so the file cannot drift from it.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("diffusers")

from backend_helpers import MIRROR  # noqa: E402
from torch import nn  # noqa: E402

from curate.trainer.config import TrainConfig  # noqa: E402
from curate.trainer.networks import LoRAModule, create_network  # noqa: E402
from fixtures.tiny_sd import build_components  # noqa: E402

DATA = Path(__file__).parent / "data"
PARITY = json.loads((DATA / "sd_scripts_parity.json").read_text(encoding="utf-8"))


def test_pinned_source_matches_the_mirror() -> None:
    if not MIRROR.is_dir():
        pytest.skip("no sd-scripts mirror here to re-extract from")
    run = subprocess.run([sys.executable, "-c", "import sys, json; sys.path.insert(0, sys.argv[1]); "
                          "import extract_sd_scripts_parity as e; "
                          "print(json.dumps(e.extract(sys.argv[2], sys.argv[3]), sort_keys=True))",
                          str(DATA), str(MIRROR), PARITY["commit"]],
                         capture_output=True, text=True, check=True)
    assert json.loads(run.stdout) == PARITY


class _Module:
    """What LoRAModule's alpha line reads from `self`."""

    def __init__(self, lora_dim: int) -> None:
        self.lora_dim = lora_dim


def sd_scripts_scales(network_dim: int | None, network_alpha: float | None,
                      kwargs: dict[str, str]) -> tuple[float, float | None]:
    """(linear scale, conv scale) sd-scripts' create_network + LoRAModule give these arguments."""
    source = PARITY["lora_defaults"].splitlines()
    body, rule = "\n".join(source[:-1]), source[-1]
    scope: dict[str, Any] = {"network_dim": network_dim, "network_alpha": network_alpha, "kwargs": kwargs}
    exec(body, scope)  # sd-scripts' own statements, from the pinned file

    def scale(dim: int, alpha: float | None) -> float:
        local = {"self": _Module(dim), "alpha": alpha}
        exec(rule, {}, local)
        return float(local["alpha"]) / dim

    linear = scale(scope["network_dim"], scope["network_alpha"])
    conv = scale(scope["conv_dim"], scope["conv_alpha"]) if scope["conv_dim"] is not None else None
    return linear, conv


def our_scales(config: TrainConfig) -> tuple[float, float | None]:
    parts = build_components()
    net = create_network("lora", parts["unet"], [parts["text_encoder"]], **config.network_options())
    linear, conv = set(), set()
    for module in net.adapters():
        assert isinstance(module, LoRAModule)
        down = module.lora_down
        is_conv = isinstance(down, nn.Conv2d) and down.kernel_size != (1, 1)
        (conv if is_conv else linear).add(module.scale)
    assert len(linear) == 1 and len(conv) <= 1
    return linear.pop(), conv.pop() if conv else None


@pytest.mark.parametrize(("dim", "alpha", "conv_dim", "conv_alpha"), [
    (8, None, 8, None),  # a guide's `conv_dim = 8` alone: conv alpha 1.0, scale 1/8
    (8, 0.0, 4, 0.0),  # alpha 0: the rank (scale 1)
    (16, 8.0, 4, 2.0),
    (4, None, None, None),  # no conv_dim: no 3x3 conv layers
])
def test_lora_alpha_defaults_match_create_network(dim: int, alpha: float | None, conv_dim: int | None,
                                                  conv_alpha: float | None) -> None:
    kwargs = {k: str(v) for k, v in (("conv_dim", conv_dim), ("conv_alpha", conv_alpha)) if v is not None}
    # train_network.py's --network_alpha defaults to 1 (and so does TrainConfig): unset means that
    assert TrainConfig().network_alpha == 1.0
    given = {"network_alpha": alpha} if alpha is not None else {}
    config = TrainConfig(network_dim=dim, conv_dim=conv_dim, conv_alpha=conv_alpha, **given)
    expected = sd_scripts_scales(dim, config.network_alpha, kwargs)
    assert our_scales(config) == pytest.approx(expected)
    # create_network with no alpha at all (a script calling it directly) reads it as 1.0 too
    assert sd_scripts_scales(dim, None, kwargs)[0] == pytest.approx(1.0 / dim)


class _Info:
    def __init__(self, name: str, num_repeats: int) -> None:
        self.name, self.num_repeats = name, num_repeats


class _Registry:
    """The `self` of DreamBoothDataset's balancing block: records what it registers."""

    def __init__(self) -> None:
        self.registered: list[_Info] = []

    def register_image(self, info: _Info, _subset: object) -> None:
        self.registered.append(info)


class _Subset:
    def __init__(self, is_reg: bool) -> None:
        self.is_reg = is_reg


def sd_scripts_reg(subsets: list[tuple[int, int, bool]]) -> tuple[int, int, dict[str, int]]:
    """(num_train_images, num_reg_images, {reg image: repeats it trains with}) as sd-scripts'
    DreamBoothDataset counts and registers (repeats, image count, is_reg) subsets."""
    scope: dict[str, Any] = {"num_train_images": 0, "num_reg_images": 0}
    reg_infos = []
    for index, (num_repeats, count, is_reg) in enumerate(subsets):
        scope |= {"subset": _Subset(is_reg), "num_repeats": num_repeats, "img_paths": [None] * count}
        exec(PARITY["reg_count"], scope)
        if is_reg:
            reg_infos += [(_Info(f"{index}/{k}", num_repeats), None) for k in range(count)]
    registry = _Registry()
    logger = type("Logger", (), {"warning": staticmethod(lambda *_a: None)})
    exec(PARITY["reg_balance"], {**scope, "self": registry, "reg_infos": reg_infos, "logger": logger})
    return (scope["num_train_images"], scope["num_reg_images"],
            {info.name: info.num_repeats for info in registry.registered})


def _dataset_toml(root: Path, subsets: list[tuple[int, int, bool]]) -> Path:
    from PIL import Image

    lines = ['[general]\ncaption_extension = ".txt"\n\n[[datasets]]\nresolution = 64\nbatch_size = 1\n'
             'min_bucket_reso = 64\nmax_bucket_reso = 128\n']
    for index, (num_repeats, count, is_reg) in enumerate(subsets):
        folder = root / str(index)
        folder.mkdir(parents=True)
        for k in range(count):
            Image.new("RGB", (64, 64), (k * 9 % 256, 80, 160)).save(folder / f"{k:02d}.png")
        lines.append(f'  [[datasets.subsets]]\n  image_dir = "{folder}"\n  num_repeats = {num_repeats}\n'
                     f'  class_tokens = "sks"\n  is_reg = {"true" if is_reg else "false"}\n')
    (root / "dataset.toml").write_text("\n".join(lines), encoding="utf-8")
    return root


@pytest.mark.parametrize("subsets", [
    [(3, 2, False), (1, 15, True)],  # the example: 12 items per epoch, not 21
    [(3, 2, False), (5, 3, True)],  # the last registered image brings all its repeats: 10
    [(10, 3, False), (1, 4, True), (2, 2, True)],  # too few: one more repeat each, in turn
    [(2, 2, False), (1, 3, False), (4, 1, True), (1, 9, True)],  # two of each
    [(1, 3, False)],  # no reg images
])
def test_reg_images_capped_as_dreambooth_dataset(subsets: list[tuple[int, int, bool]],
                                                 tmp_path: Path) -> None:
    from collections import Counter

    from curate.trainer.checkpoint import training_metadata
    from curate.trainer.data import load_dataset, steps_per_epoch

    num_train, num_reg, registered = sd_scripts_reg(subsets)
    dataset = load_dataset(_dataset_toml(tmp_path, subsets))
    reg = Counter(f"{i.path.parent.name}/{int(i.path.stem)}" for i in dataset.repeated() if i.subset.is_reg)
    assert dict(reg) == registered
    assert steps_per_epoch(dataset) == num_train + sum(registered.values())  # batch 1, one bucket
    parts = build_components()
    network = create_network("lora", parts["unet"], [parts["text_encoder"]], dim=2)
    meta = training_metadata(TrainConfig(), dataset, network, tmp_path / "model", 0.0, 10)
    assert (meta["ss_num_train_images"], meta["ss_num_reg_images"]) == (num_train, num_reg)


# ss_* keys train_network.py writes that curate does not, and why
NOT_WRITTEN = {
    "ss_sd_scripts_commit_hash": "curate is not sd-scripts; modelspec.implementation_version names "
                                 "curate's version",
    "ss_vae_name": "no separate VAE: curate trains with the base model's own (sd-scripts: only with --vae)",
    "ss_vae_hash": "as ss_vae_name",
    "ss_new_vae_hash": "as ss_vae_name",
}
SAVE_KEYS = {"ss_steps", "ss_epoch", "ss_training_finished_at"}  # added to each file when it is saved


def _metadata(tmp_path: Path, subsets: list[tuple[int, int, bool]], config: TrainConfig,
              model: Path, processes: int = 1) -> dict[str, Any]:
    from curate.trainer.checkpoint import training_metadata
    from curate.trainer.data import load_dataset
    from curate.trainer.loop import dataset_overrides

    dataset = load_dataset(_dataset_toml(tmp_path / "data", subsets), dataset_overrides(config))
    parts = build_components()
    network = create_network("lora", parts["unet"], [parts["text_encoder"]], **config.network_options())
    return training_metadata(config, dataset, network, model, 0.0, 25, processes=processes)


def test_metadata_keys_are_a_superset_of_train_network(tmp_path: Path) -> None:
    config = TrainConfig(conv_dim=2, network_dim=2, batch_size=2)
    meta = _metadata(tmp_path, [(3, 2, False), (1, 15, True)], config, tmp_path / "model")
    ours = set(meta) | SAVE_KEYS
    assert set(PARITY["metadata_keys"]) - ours == set(NOT_WRITTEN)
    (dataset,) = json.loads(json.dumps(meta["ss_datasets"]))
    assert set(PARITY["datasets_keys"]["dataset"]) <= set(dataset)
    # metadata_file: a fine-tuning subset's; curate trains DreamBooth-style subsets only
    for subset in dataset["subsets"]:
        assert set(PARITY["datasets_keys"]["subset"]) - {"metadata_file"} <= set(subset)
    assert (dataset["num_train_images"], dataset["num_reg_images"]) == (6, 15)
    assert [(s["image_dir"], s["img_count"], s["is_reg"]) for s in dataset["subsets"]] == [
        ("0", 2, False), ("1", 15, True)]


@pytest.mark.parametrize(("subsets", "batch", "accumulation", "processes"), [
    ([(3, 2, False), (1, 15, True)], 2, 1, 1),  # 12 items, batch 2: 6 batches, 25 steps: 5 epochs
    ([(5, 3, False)], 4, 2, 1),  # 15 items: 4 batches, 2 optimiser steps an epoch, 13 epochs
    ([(5, 3, False), (2, 2, True)], 1, 3, 2),  # 30 items over 2 processes: 15 batches each, 5 steps
])
def test_epoch_counts_as_train_network(subsets: list[tuple[int, int, bool]], batch: int, accumulation: int,
                                       processes: int, tmp_path: Path) -> None:
    import math

    config = TrainConfig(batch_size=batch, gradient_accumulation_steps=accumulation, caption_dropout_rate=0.1)
    meta = _metadata(tmp_path, subsets, config, tmp_path / "model", processes)
    num_train, _num_reg, registered = sd_scripts_reg(subsets)
    # one bucket: len(train_dataloader) is ceil(items / batch), split over the processes by accelerate
    batches = math.ceil(math.ceil((num_train + sum(registered.values())) / batch) / processes)
    # train_network.py: num_update_steps_per_epoch = ceil(len(train_dataloader) / accumulation);
    # num_train_epochs = ceil(max_train_steps / num_update_steps_per_epoch)
    assert meta["ss_num_batches_per_epoch"] == batches
    assert meta["ss_num_epochs"] == math.ceil(25 / math.ceil(batches / accumulation))
    assert meta["ss_total_batch_size"] == batch * processes * accumulation
    assert (meta["ss_caption_dropout_rate"], meta["ss_caption_dropout_every_n_epochs"],
            meta["ss_caption_tag_dropout_rate"]) == (0.1, 0, 0.0)


def _sd_scripts(source: str) -> dict[str, Any]:
    import hashlib
    import io

    import safetensors.torch

    scope: dict[str, Any] = {"hashlib": hashlib, "BytesIO": io.BytesIO, "safetensors": safetensors}
    exec(PARITY[source], scope)
    return scope


def test_addnet_hashes_are_sd_scripts(tmp_path: Path) -> None:
    """sshs_model_hash / sshs_legacy_hash of a saved LoRA (over 1 MiB, so the legacy hash reads
    tensor bytes) against sd-scripts' precalculate_safetensors_hashes on what was saved."""
    import io

    from curate.trainer.formats import as_metadata, modelspec, save_network
    from curate.trainer.formats import load_network as load

    config = TrainConfig(network_dim=64)
    meta = as_metadata({**_metadata(tmp_path, [(2, 2, False)], config, tmp_path / "model"),
                        "ss_steps": 25, **modelspec("sks", (64, 64), timestamp=1.7e9)})
    parts = build_components()
    network = create_network("lora", parts["unet"], [parts["text_encoder"]], **config.network_options())
    with torch.no_grad():
        for param in network.parameters():
            param.normal_(generator=torch.Generator().manual_seed(3))
    tensors = network.kohya_state_dict(torch.float16)
    path = tmp_path / "sks.safetensors"
    save_network(path, tensors, meta)
    _tensors, written = load(path)
    theirs = _sd_scripts("hashes")
    assert theirs["precalculate_safetensors_hashes"](tensors, meta) == (written["sshs_model_hash"],
                                                                        written["sshs_legacy_hash"])
    assert theirs["addnet_hash_safetensors"](io.BytesIO(path.read_bytes())) == written["sshs_model_hash"]
    assert path.stat().st_size > 0x110000


def test_base_model_hashes_are_sd_scripts(tmp_path: Path) -> None:
    import numpy as np

    from curate.trainer.metadata import model_hashes

    model = tmp_path / "model.safetensors"
    model.write_bytes(np.random.default_rng(5).bytes(0x100000 + 0x18000))
    theirs = _sd_scripts("model_hashes")
    assert model_hashes(model) == (theirs["model_hash"](str(model)), theirs["calculate_sha256"](str(model)))
    meta = _metadata(tmp_path, [(1, 2, False)], TrainConfig(), model)
    assert (meta["ss_sd_model_hash"], meta["ss_new_sd_model_hash"]) == model_hashes(model)
    assert model_hashes(tmp_path) == (None, None)  # a diffusers folder: sd-scripts' "IsADirectory"


def test_trained_file_carries_them_and_lora_info_shows_them(tiny_sd: Path, photos_dataset: Path,
                                                            tmp_path: Path) -> None:
    from click.testing import CliRunner

    from curate.cli import cli
    from curate.trainer import loop
    from curate.trainer.formats import load_network as load

    config = TrainConfig(resolution=64, min_bucket_reso=64, max_bucket_reso=128, batch_size=2, network_dim=2,
                         max_train_steps=3, threads=1)
    result = loop.train(photos_dataset, tiny_sd, tmp_path, config, device=torch.device("cpu"))
    tensors, meta = load(result.output)
    assert (meta["ss_num_batches_per_epoch"], meta["ss_num_epochs"], meta["ss_epoch"]) == ("2", "2", "2")
    datasets = json.loads(meta["ss_datasets"])
    assert datasets[0]["subsets"][0]["image_dir"] == "1_sks" and datasets[0]["num_train_images"] == 4
    ss_meta = {k: v for k, v in meta.items() if not k.startswith("sshs_")}
    model_hash, _legacy = _sd_scripts("hashes")["precalculate_safetensors_hashes"](tensors, ss_meta)
    assert meta["sshs_model_hash"] == model_hash
    info = CliRunner().invoke(cli, ["lora", "info", str(result.output), "--json"])
    assert info.exit_code == 0, info.output
    shown = json.loads(info.output)
    assert shown["base_model"]["sshs_model_hash"] == meta["sshs_model_hash"]
    assert shown["base_model"]["sshs_legacy_hash"] == meta["sshs_legacy_hash"]
    assert shown["training"]["num_epochs"] == "2" and shown["training"]["num_batches_per_epoch"] == "2"
    human = CliRunner().invoke(cli, ["lora", "info", str(result.output)])
    # an 80-column table cuts the 64-digit model hash short (--json has it whole)
    assert meta["sshs_model_hash"][:40] in human.output and meta["sshs_legacy_hash"] in human.output
