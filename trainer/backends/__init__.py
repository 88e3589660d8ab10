"""Trainer backends: who runs a `curate train` config. One module per trainer.

`curate train --backend NAME` turns one TrainConfig (sd-scripts' option names) into a run:

- `builtin` (builtin.py): curate's own loop, `curate.trainer.loop.train`, in this process.
- `kohya` (kohya.py): kohya-ss/sd-scripts' `train_network.py` (`sdxl_train_network.py` for an
  SDXL base model, kohya_model.py; `flux_train_network.py` / `sd3_train_network.py` for FLUX.1
  and SD3, with their text encoder and autoencoder files, kohya_flow.py), launched with
  accelerate. Its plan writes the dataset TOML (kohya_toml.py) and builds the command;
  `--print-command` shows it, and `--sd-scripts PATH` runs it.

The interface is two functions, so that a backend is a plain module:

    NAME: str
    def plan(dataset: Path, model: Path, out: Path, config: TrainConfig, *,
             resume: Path | None = None, tool: Path | None = None) -> Plan
    def run(plan: Plan, *, on_step: StepCallback | None = None) -> RunResult

`plan` checks everything it can without training and decides what will run: the external
command (`Plan.command`, argv with "accelerate"/"python" first) or None for an in-process run,
the input files it wrote for it (`Plan.files`, always via curate.atomic and only under `out`),
and notes and warnings for the user. `tool` is the external trainer's checkout (sd-scripts,
OneTrainer, ai-toolkit); builtin ignores it. A setting that changes training and that the
backend cannot express must become a line in `Plan.warnings`, never be dropped in silence;
settings that do not change the result (threads, ...) are skipped without one.
`run` trains; it raises CurateError with one line when the trainer fails (an external
trainer's non-zero exit code included) and returns a RunResult.

- `aitoolkit` (aitoolkit.py): ostris/ai-toolkit's `run.py` with a job file the plan writes
  (FLUX.1/2, Qwen-Image, Z-Image, Wan, SD3, ... from the base model's pipeline class);
  `--ai-toolkit PATH` runs it.

Adding a trainer (OneTrainer, ...) is one new module here with NAME, plan and run, and one line
in BACKENDS. OneTrainer takes `scripts/train.py --config-path JSON`: the plan writes that JSON
(concepts from the dataset's subsets, with repeats). `--print-command` and running then work
unchanged, since the CLI only sees Plan and RunResult.
"""

from __future__ import annotations

import dataclasses
import importlib
import shlex
from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any, Protocol

from curate.errors import CurateError

if TYPE_CHECKING:
    from curate.trainer.config import TrainConfig

# (step, total, loss, {"loss/average": ..., "lr/unet": ..., "lr/d*lr/unet": ...}); see curate.trainer.loop
StepCallback = Callable[[int, int, float, dict[str, float]], None]

# name -> module (imported on use: builtin pulls in torch, kohya needs nothing heavy)
BACKENDS: dict[str, str] = {
    "builtin": "curate.trainer.backends.builtin",
    "kohya": "curate.trainer.backends.kohya",
    "aitoolkit": "curate.trainer.backends.aitoolkit",
}


@dataclass
class Plan:
    """What a backend will run for one config: inputs, command (None: in-process), files written."""

    backend: str
    dataset: Path
    model: Path
    out: Path
    config: TrainConfig
    resume: Path | None = None
    tool: Path | None = None
    command: list[str] | None = None
    files: list[Path] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    def shell(self) -> str:
        """The command as one shell line (shlex.join), for a user to paste."""
        if self.command is None:
            raise CurateError(f"the {self.backend} backend trains in this process: there is no command "
                              "to print (use --backend kohya with --print-command)")
        return shlex.join(self.command)

    def as_dict(self) -> dict[str, Any]:
        return {"backend": self.backend, "command": self.command,
                "shell": shlex.join(self.command) if self.command else None,
                "files": [str(p) for p in self.files], "notes": self.notes, "warnings": self.warnings}


@dataclass
class RunResult:
    """A finished run: the network file it writes, a line for people, details for --json."""

    backend: str
    output: Path
    summary: str
    details: dict[str, Any] = field(default_factory=dict)
    saved: list[Path] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {"backend": self.backend, "output": str(self.output), **self.details}


class Backend(Protocol):
    """What a backend module provides (see the module docstring)."""

    NAME: str

    def plan(self, dataset: Path, model: Path, out: Path, config: TrainConfig, *,
             resume: Path | None = None, tool: Path | None = None) -> Plan: ...

    def run(self, plan: Plan, *, on_step: StepCallback | None = None) -> RunResult: ...


def changed_settings(config: TrainConfig, known: Collection[str]) -> list[tuple[str, Any]]:
    """(name, value) of every TrainConfig key outside `known` that is not at its default: what a
    backend that cannot pass such a key on must warn about (never drop in silence)."""
    out = []
    for f in dataclasses.fields(config):
        default = f.default_factory() if callable(f.default_factory) else f.default  # type: ignore[misc]
        if f.name not in known and getattr(config, f.name) != default:
            out.append((f.name, getattr(config, f.name)))
    return out


def get_backend(name: str) -> Backend:
    """The backend module registered as `name`."""
    if name not in BACKENDS:
        raise CurateError(f"unknown trainer backend {name!r}; known: {', '.join(BACKENDS)}")
    module: ModuleType = importlib.import_module(BACKENDS[name])
    backend: Backend = module  # type: ignore[assignment]  # a module satisfies the Protocol
    return backend
