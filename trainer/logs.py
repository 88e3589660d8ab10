"""TensorBoard logs of a training run, with sd-scripts' tag names (train_network.py, commit 48d368f).

Each run writes to its own folder, `logging_dir/{log_prefix}{YYYYmmddHHMMSS}`, as sd-scripts'
`prepare_accelerator` names it (sd-scripts' accelerate tracker adds a `network_train/` level
below; here the event files sit in the run folder itself). Per optimiser step sd-scripts logs
`loss/current`, `loss/average` (the mean of the last epoch's worth of step losses, `LossRecorder`),
`lr/{group}` from the scheduler, and for D-Adaptation and Prodigy `lr/d*lr/{group}` = d x lr of
the group; per epoch `loss/epoch_average` at the epoch number. Groups are `textencoder` and
`unet`, or `group{i}` for other layouts. Adaptive optimisers are recognised by the `d` they keep
in every parameter group rather than by name, so any D-Adaptation variant is covered.

Without a logging_dir, `TrainLog` does nothing and tensorboard is never imported.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from pathlib import Path
from types import TracebackType
from typing import Any

from curate.errors import CurateError


class LossRecorder:
    """sd-scripts' moving average: the first epoch averages every step so far; later epochs replace
    the loss of the same step of the previous epoch, so the window is one epoch long."""

    def __init__(self) -> None:
        self.losses: list[float] = []
        self.total = 0.0

    def add(self, epoch: int, step_in_epoch: int, loss: float) -> None:
        """`epoch` counts from 0; `step_in_epoch` is the step's index inside its epoch."""
        if epoch == 0:
            self.losses.append(loss)
        else:
            while len(self.losses) <= step_in_epoch:
                self.losses.append(0.0)
            self.total -= self.losses[step_in_epoch]
            self.losses[step_in_epoch] = loss
        self.total += loss

    @property
    def average(self) -> float:
        return self.total / len(self.losses) if self.losses else 0.0


def _group_names(optimizer: Any, network: Any | None) -> list[str]:
    """`unet` / `textencoder` for the network's two groups (found by their parameters), else group{i}."""
    groups = optimizer.param_groups
    if network is None or len(groups) > 2:
        return [f"group{i}" for i in range(len(groups))]
    unet = {id(p) for name in network.unet_names for p in network.get_submodule(name).parameters()}
    names = []
    for i, group in enumerate(groups):
        ids = {id(p) for p in group["params"]}
        if ids and ids <= unet:
            names.append("unet")
        else:
            names.append("textencoder" if ids and not ids & unet else f"group{i}")
    return names


def lr_values(optimizer: Any, lr_scheduler: Any | None, network: Any | None = None) -> dict[str, float]:
    """`lr/{group}` (the scheduler's last rates) and, for d-adapting optimisers, `lr/d*lr/{group}`."""
    groups = optimizer.param_groups
    rates = lr_scheduler.get_last_lr() if lr_scheduler is not None else [g["lr"] for g in groups]
    values: dict[str, float] = {}
    for name, rate, group in zip(_group_names(optimizer, network), rates, groups, strict=True):
        values[f"lr/{name}"] = float(rate)
        if "d" in group:
            values[f"lr/d*lr/{name}"] = float(group["d"]) * float(group["lr"])
    return values


def step_values(current_loss: float, average_loss: float, optimizer: Any, lr_scheduler: Any | None,
                network: Any | None = None) -> dict[str, float]:
    """What sd-scripts' `generate_step_logs` logs after each optimiser step."""
    return {"loss/current": float(current_loss), "loss/average": float(average_loss),
            **lr_values(optimizer, lr_scheduler, network)}


def run_folder(logging_dir: str | Path, log_prefix: str | None, when: float | None = None) -> Path:
    stamp = time.strftime("%Y%m%d%H%M%S", time.localtime(when))
    return Path(logging_dir) / f"{log_prefix or ''}{stamp}"


class TrainLog:
    """A TensorBoard writer for one run; a no-op when `logging_dir` is None.

        with TrainLog(config.logging_dir, config.log_prefix) as log:
            log.log(step, step_values(loss, recorder.average, optimizer, lr_scheduler, network))
    """

    def __init__(self, logging_dir: str | Path | None, log_prefix: str | None = None) -> None:
        self.folder: Path | None = None
        self._writer: Any = None
        if logging_dir is not None:
            from torch.utils.tensorboard import SummaryWriter

            self.folder = run_folder(logging_dir, log_prefix)
            try:
                self.folder.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise CurateError(f"{self.folder}: cannot write TensorBoard logs ({exc.strerror}); "
                                  "set logging_dir to a writable folder") from exc
            self._writer = SummaryWriter(log_dir=str(self.folder))

    def log(self, step: int, values: Mapping[str, float]) -> None:
        if self._writer is None:
            return
        for tag, value in values.items():
            self._writer.add_scalar(tag, float(value), global_step=step)

    def flush(self) -> None:
        if self._writer is not None:
            self._writer.flush()

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None

    def __enter__(self) -> TrainLog:
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 trace: TracebackType | None) -> None:
        self.close()
