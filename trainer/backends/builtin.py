"""The builtin backend: curate's own training loop (`curate.trainer.loop.train`) in this process.

Its plan writes nothing and has no command; torch is imported only when it runs, so planning
(and `--backend kohya` on a machine without torch) stays light.
"""

from __future__ import annotations

from pathlib import Path

from curate.errors import CurateError
from curate.trainer.backends import Plan, RunResult, StepCallback
from curate.trainer.config import TrainConfig

NAME = "builtin"


def plan(dataset: Path, model: Path, out: Path, config: TrainConfig, *, resume: Path | None = None,
         tool: Path | None = None) -> Plan:
    config.check()
    result = Plan(NAME, dataset, model, out, config, resume=resume)
    if tool is not None:
        result.warnings.append(f"{tool}: the builtin backend trains in this process; the external "
                               "trainer's folder is not used (pick --backend kohya to run sd-scripts)")
    result.warnings += [f"train.{key} = {getattr(config, key)}: the builtin trainer trains SD 1.x/2.x/SDXL "
                        "and does not read it (FLUX.1/SD3 files are for --backend kohya)"
                        for key in ("clip_l", "clip_g", "t5xxl", "ae") if getattr(config, key) is not None]
    return result


def run(plan: Plan, *, on_step: StepCallback | None = None) -> RunResult:
    try:
        from curate.trainer.loop import train
    except ImportError as exc:
        raise CurateError(f"the trainer needs the train extra ({exc}); pip install 'curate[train]'") from exc
    config = plan.config
    result = train(plan.dataset, plan.model, plan.out, config, resume=plan.resume, on_step=on_step)
    data = result.as_dict()
    summary = (f"trained {config.network} for {result.steps} steps ({result.epochs} epochs, "
               f"{result.steps_per_epoch} steps each) on {result.device} in {result.seconds:.1f} s; "
               f"loss {data['first_loss']:.4f} -> {data['last_loss']:.4f}" if result.losses else
               f"nothing to train: already at step {result.steps}")
    if result.processes > 1:
        summary += f" ({result.processes} processes, weights equal on all)"
    if result.interrupted:
        summary += (f"\ninterrupted at step {result.steps}: saved {result.output}; continue with "
                    f"--resume {result.output.with_suffix('')}-state")
    for file, reason in result.skipped:
        summary += f"\nskipped {file}: {reason}"
    if result.samples:
        summary += f"\n{len(result.samples)} sample images in {result.samples[0].parent}"
    return RunResult(NAME, result.output, summary, data, list(result.saved))
