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
