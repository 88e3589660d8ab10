"""When a run saves, what it names the files, and which older saves it removes (sd-scripts' rules).

Step saves are NAME-stepNNNNNNNN, epoch saves NAME-NNNNNN (REFERENCE §7), each with a `-state`
folder when save_state is on. save_last_n_epochs keeps the last N epoch saves;
save_last_n_steps keeps the step saves of the last N steps, both computed as sd-scripts'
get_remove_epoch_no / get_remove_step_no do, so the same settings leave the same files.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from curate.trainer.checkpoint import epoch_name, step_name
from curate.trainer.config import TrainConfig


def due(config: TrainConfig, step: int, per_epoch: int, total: int) -> str | None:
    """The file stem to save after `step`, if any (the final save is made by the caller)."""
    name = config.output_name
    if step >= total:
        return None
    epoch, into_epoch = divmod(step, per_epoch)
    if config.save_every_n_epochs and not into_epoch and epoch % config.save_every_n_epochs == 0:
        return epoch_name(name, epoch)
    if config.save_every_n_steps and step % config.save_every_n_steps == 0:
        return step_name(name, step)
    return None


def expired(config: TrainConfig, step: int, per_epoch: int) -> list[str]:
    """The stems of saves that fall out of the keep-last-N windows once `step` is reached (the
    step window moves on even at a step whose save was an epoch save)."""
    epoch, into_epoch = divmod(step, per_epoch)
    stems = []
    at_epoch_save = bool(config.save_every_n_epochs and not into_epoch
                         and epoch % config.save_every_n_epochs == 0)
    if at_epoch_save and config.save_last_n_epochs is not None and config.save_every_n_epochs:
        gone = epoch - config.save_every_n_epochs * config.save_last_n_epochs
        if gone > 0:
            stems.append(epoch_name(config.output_name, gone))
    if config.save_every_n_steps and config.save_last_n_steps is not None:
        gone = step - config.save_last_n_steps - 1
        gone -= gone % config.save_every_n_steps
        if gone > 0:
            stems.append(step_name(config.output_name, gone))
    return stems


def remove_save(out: Path, stem: str) -> list[Path]:
    """Delete a save and its state folder; returns what was removed."""
    removed = []
    weights, state = out / f"{stem}.safetensors", out / f"{stem}-state"
    if weights.is_file():
        weights.unlink()
        removed.append(weights)
    if state.is_dir():
        shutil.rmtree(state)
        removed.append(state)
    return removed
