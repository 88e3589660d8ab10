"""`curate run`: the configured stages in order, each skipped when nothing it depends on changed.

The order lives in config.ORDER, the stages in stages.STAGES, and what makes a stage "unchanged"
in state.py. A stage that runs does exactly what its single command does (same options table,
same library entry point), so `curate run` after a hand fix is the same as re-typing the
commands from the first one that sees the change. A failing stage stops the run; every stage
before it has stored its key, so the next run starts where this one stopped.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from curate.config import CONFIG_NAME, stage_config
from curate.errors import CurateError
from curate.pipeline.config import ORDER, RunConfig
from curate.pipeline.stages import BY_NAME, Context, Stage
from curate.pipeline.state import stage_key, store_keys, stored_keys, view_digest
from curate.workspace import Workspace, is_workspace

__all__ = ["ORDER", "PipelineResult", "RunConfig", "StageOutcome", "run_pipeline"]

# (stage, "start" | "ran" | "unchanged", the stage's result dict when it ran)
StageCallback = Callable[[str, str, "dict[str, Any] | None"], None]


@dataclass
class StageOutcome:
    name: str
    status: str  # "ran" or "unchanged" (skipped: same settings, inputs and outputs as last time)
    seconds: float = 0.0
    result: dict[str, Any] | None = None


@dataclass
class PipelineResult:
    workspace: str
    stages: list[StageOutcome] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def check_errors(self) -> int:
        for outcome in self.stages:
            if outcome.name == "check" and outcome.result:
                return int(outcome.result.get("counts", {}).get("errors", 0))
        return 0

    def as_dict(self) -> dict[str, Any]:
        return {"workspace": self.workspace, "seconds": round(self.seconds, 3),
                "stages": [{"stage": o.name, "status": o.status, "seconds": round(o.seconds, 3),
                            "result": o.result} for o in self.stages]}


def run_config(config_file: Path, overrides: Iterable[str],
               flags: Mapping[str, Any] | None = None) -> RunConfig:
    config = stage_config(RunConfig, "run", config_file, overrides, flags)
    config.check()
    return config


def select(run: RunConfig, only: str | None, start: str | None) -> list[str]:
    """The stages this run considers: [run] stages in pipeline order, or --only, from --from on."""
    for name in (only, start):
        if name is not None and name not in ORDER:
            raise CurateError(f"unknown stage {name!r}; stages: {', '.join(ORDER)}")
    names = [only] if only else run.ordered()
    if start:
        if start not in names:
            raise CurateError(f"--from {start}: not one of this run's stages ({', '.join(names)})")
        names = names[names.index(start):]
    return names


def _settings(options: Any) -> Any:
    return dataclasses.asdict(options) if dataclasses.is_dataclass(options) else options


def _key(ctx: Context, stage: Stage, options: Any) -> str:
    with Workspace.open(ctx.root) as ws:
        return stage_key(_settings(options), view_digest(ws, stage.view, ctx.files()))


def _store(ctx: Context, keys: dict[str, str]) -> None:
    if keys:
        with Workspace.open(ctx.root) as ws, ws.lock():
            store_keys(ws, keys)


def _run_stage(ctx: Context, stage: Stage, options: Any, forced: bool,
               on_stage: StageCallback | None) -> StageOutcome:
    if stage.view and not forced and is_workspace(ctx.root):
        with Workspace.open(ctx.root) as ws:
            previous = stored_keys(ws).get(stage.name)
        if previous == _key(ctx, stage, options):
            if on_stage:
                on_stage(stage.name, "unchanged", None)
            return StageOutcome(stage.name, "unchanged")
    if on_stage:
        on_stage(stage.name, "start", None)
    started = time.perf_counter()
    try:
        result = stage.runner(ctx, options)
    except CurateError as exc:
        raise CurateError(f"stage {stage.name}: {exc}") from exc
    outcome = StageOutcome(stage.name, "ran", time.perf_counter() - started, result)
    if stage.view:
        _store(ctx, {stage.name: _key(ctx, stage, options)})
    if on_stage:
        on_stage(stage.name, "ran", result)
    return outcome


def run_pipeline(root: Path, *, config_file: Path | None = None, overrides: Iterable[str] = (),
                 only: str | None = None, start: str | None = None, force: Iterable[str] = (),
                 on_stage: StageCallback | None = None,
                 progress: Callable[[int, int], None] | None = None,
                 flags: Mapping[str, Any] | None = None) -> PipelineResult:
    """Run the workspace's configured stages (see the module doc); `force` names stages to run
    even when unchanged ("all" for every one); `flags`: [run] options given as flags."""
    root = Path(root).absolute()
    config_file = config_file or root / CONFIG_NAME
    run = run_config(config_file, overrides, flags)
    names = select(run, only, start)
    forced = set(force)
    unknown = forced - set(ORDER) - {"all"}
    if unknown:
        raise CurateError(f"--force {', '.join(sorted(unknown))}: unknown stage; stages: {', '.join(ORDER)}")
    if not is_workspace(root) and names[0] != "import":
        raise CurateError(f"{root} is not a workspace: run `curate init {root}` or start with the "
                          "import stage")
    ctx = Context(root, config_file, tuple(overrides), run, progress)
    result = PipelineResult(str(root))
    started = time.perf_counter()
    # every stage's options are read (types, ranges) before the first stage runs: a bad value
    # in [crop] must not cost an import and a dedupe first
    options = {}
    for name in names:
        try:
            options[name] = BY_NAME[name].options(ctx)
        except CurateError as exc:
            raise CurateError(f"stage {name}: {exc}") from exc
    for name in names:
        result.stages.append(_run_stage(ctx, BY_NAME[name], options[name], "all" in forced or name in forced,
                                         on_stage))
    # the end state is what a re-run will see: key every stage on it, so one that a later stage
    # touched (captions after tags-filter) is not taken for changed. When no keyed stage ran,
    # every key was just computed on this very state (import and check come first and last).
    if any(o.status == "ran" and BY_NAME[o.name].view for o in result.stages):
        _store(ctx, {o.name: _key(ctx, BY_NAME[o.name], options[o.name])
                     for o in result.stages if BY_NAME[o.name].view})
    result.seconds = time.perf_counter() - started
    return result
