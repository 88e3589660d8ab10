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
