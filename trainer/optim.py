"""Optimisers and learning-rate schedules by sd-scripts' names.

Prodigy and D-Adaptation estimate one step size `d` for the whole network, so they refuse
per-part learning rates (sd-scripts warns; we stop, since the result silently differs from
what the user asked). AdamW8bit needs bitsandbytes and a CUDA device.
"""

from __future__ import annotations

import contextlib
import sys
from typing import Any

import torch

from curate.errors import CurateError
from curate.trainer.config import TrainConfig
from curate.trainer.networks import AdapterNetwork

# ss_optimizer values, as sd-scripts writes them (module.Class)
OPTIMIZER_NAMES = {"adamw": "torch.optim.adamw.AdamW",
                   "adamw8bit": "bitsandbytes.optim.adamw.AdamW8bit", "prodigy": "prodigyopt.prodigy.Prodigy",
                   "dadaptadam": "dadaptation.dadapt_adam.DAdaptAdam"}
ADAPTIVE = ("prodigy", "dadaptadam")


def _one_rate(config: TrainConfig, groups: list[dict[str, Any]]) -> None:
    rates = {g.get("lr", config.learning_rate) for g in groups}
    if len(rates) > 1:
        raise CurateError(f"{config.optimizer} needs one learning rate: leave unet_lr and text_encoder_lr "
                          "unset (learning_rate = 1.0 is the usual choice)")


def block_multipliers(config: TrainConfig, network: AdapterNetwork) -> dict[str, float] | None:
    """Per-module learning-rate factors from the block settings, or None when none is set. An
    SDXL network (sd-scripts' original-layout UNet names, two text encoders) takes SDXL's blocks."""
    given = (config.down_lr_weight, config.mid_lr_weight, config.up_lr_weight, config.block_lr_weights)
    if all(value is None for value in given):
        return None
    from curate.trainer.blocks import lr_weights

    names = network.unet_names + network.te_names
    sdxl_names = ("lora_unet_input_blocks", "lora_unet_middle_block", "lora_unet_output_blocks", "lora_te1_")
    return lr_weights(names, down_lr_weight=config.down_lr_weight, mid_lr_weight=config.mid_lr_weight,
                      up_lr_weight=config.up_lr_weight, block_weights=config.block_lr_weights,
                      zero_threshold=config.block_lr_zero_threshold,
                      sdxl=any(name.startswith(sdxl_names) for name in names))


def param_groups(config: TrainConfig, network: AdapterNetwork) -> list[dict[str, Any]]:
    multipliers = block_multipliers(config, network)
    if multipliers is None:
        return network.param_groups(config.unet_lr, config.text_encoder_lr)
    from curate.trainer.blocks import weighted_param_groups

    groups = weighted_param_groups(network, multipliers, config.unet_lr, config.text_encoder_lr,
                                   config.learning_rate)
    if not groups:
        raise CurateError("the block learning rates leave nothing to train (every block at 0)")
    return groups


def make_optimizer(config: TrainConfig, network: AdapterNetwork) -> torch.optim.Optimizer:
    groups = param_groups(config, network)
    args, lr = config.optimizer_args, config.learning_rate
    if config.optimizer in ADAPTIVE:
        _one_rate(config, groups)
    if config.optimizer == "prodigy":
        from prodigyopt import Prodigy

        # Prodigy prints "Using decoupled weight decay" to stdout, which would corrupt --json output
        with contextlib.redirect_stdout(sys.stderr):
            return Prodigy(groups, lr=lr, **args)
    if config.optimizer == "dadaptadam":
        try:
            from dadaptation import DAdaptAdam
        except ImportError as exc:
            raise CurateError("optimizer dadaptadam needs the dadaptation package: "
                              "pip install dadaptation") from exc
        with contextlib.redirect_stdout(sys.stderr):
            return DAdaptAdam(groups, lr=lr, **args)
    if config.optimizer == "adamw8bit":
        return _adamw8bit(groups, lr, args)
    return torch.optim.AdamW(groups, lr=lr, **args)


def _adamw8bit(groups: list[dict[str, Any]], lr: float, args: dict[str, Any]) -> torch.optim.Optimizer:
    if not torch.cuda.is_available():
        raise CurateError("optimizer adamw8bit runs on a CUDA GPU only; use adamw on this machine")
    try:
        import bitsandbytes as bnb
    except ImportError as exc:
        raise CurateError("optimizer adamw8bit needs bitsandbytes: pip install bitsandbytes") from exc
    optimizer: torch.optim.Optimizer = bnb.optim.AdamW8bit(groups, lr=lr, **args)
    return optimizer


def make_lr_scheduler(config: TrainConfig, optimizer: torch.optim.Optimizer, total_steps: int) -> Any:
    """The schedule, stepped once per optimiser step (so T_0 counts steps, as in sd-scripts)."""
    if config.lr_scheduler == "cosine_annealing_warm_restarts":
        return torch.optim.lr_scheduler.CosineAnnealingWarmRestarts(
            optimizer, T_0=config.T_0, T_mult=config.T_mult, eta_min=config.eta_min)
    from diffusers.optimization import get_scheduler

    name = config.lr_scheduler
    if name == "constant" and config.lr_warmup_steps:
        name = "constant_with_warmup"
    return get_scheduler(name, optimizer, num_warmup_steps=config.lr_warmup_steps,
                         num_training_steps=total_steps, num_cycles=config.lr_scheduler_num_cycles,
                         power=config.lr_scheduler_power)
