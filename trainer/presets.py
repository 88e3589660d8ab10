"""Named starting points for `curate train --preset NAME`: the seed guides' recipes as `[train]` TOML.

A preset sits between the defaults and the user's settings: defaults < preset < --config file
< --set < flags. Dataset settings (resolution, batch size, repeats) stay with the dataset.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass
from typing import Any

from curate.errors import CurateError


@dataclass(frozen=True)
class Preset:
    name: str
    summary: str
    toml: str

    def table(self) -> dict[str, Any]:
        table: dict[str, Any] = tomllib.loads(self.toml)["train"]
        return table


PRESETS: dict[str, Preset] = {p.name: p for p in (
    Preset("prodigy-ia3", "iA3 + Prodigy + CosineAnnealingWarmRestarts (the Prodigy iA3 guide)",
           """[train]
network = "ia3"
ia3_train_on_input = true
optimizer = "prodigy"
learning_rate = 1.0
optimizer_args = { d0 = 5e-4, d_coef = 1.0, weight_decay = 0.05, use_bias_correction = true }
lr_scheduler = "cosine_annealing_warm_restarts"
T_0 = 160          # the guide: set T_0 to the steps you want (40-180), stop when the LR reaches 0
T_mult = 1
eta_min = 0.0
max_train_steps = 160
min_snr_gamma = 1.0
"""),
    Preset("easy-lora", "LoRA dim 64 / alpha 1, Prodigy, constant LR, min_snr_gamma 5 (the guide names "
           "DAdaptAdam: --set optimizer=\"dadaptadam\" trains with it; Prodigy is its successor, same args)",
           """[train]
network = "lora"
network_dim = 64
network_alpha = 1.0
optimizer = "prodigy"
learning_rate = 1.0
optimizer_args = { decouple = true, weight_decay = 0.01, betas = [0.9, 0.99] }
lr_scheduler = "constant"
min_snr_gamma = 5.0
"""),
)}


def preset_table(name: str | None) -> dict[str, Any]:
    """The `[train]` table of preset `name` ({} for None); an unknown name lists the known ones."""
    if name is None:
        return {}
    if name not in PRESETS:
        raise CurateError(f"unknown preset {name!r}; known: {', '.join(PRESETS)} "
                          "(curate train --list-presets)")
    return PRESETS[name].table()


def describe() -> str:
    """Every preset's name, summary and TOML, for `curate train --list-presets`."""
    return "\n".join(f"{p.name}: {p.summary}\n{p.toml}" for p in PRESETS.values()).rstrip() + "\n"
