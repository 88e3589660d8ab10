from __future__ import annotations

import contextlib
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import click

from curate.cli._common import Out, config_options, output_options
from curate.cli._flags import Flag, config_flags
from curate.paths import is_url
from curate.pipeline.config import RunConfig

OnStage = Callable[[str, str, "dict[str, Any] | None"], None]


def _done_lines(name: str, result: dict[str, Any] | None, workspace: Path) -> list[str]:
    """What a stage that ran did, for people: import says what it found and where the skipped
    files are listed; the others say done, or their note (caption: skipped, no model), and their
    own commands report the details."""
    if name != "import" or not result:
        return [f"{name}: {result['note']}" if result and result.get("note") else f"{name}: done"]
    counts = result.get("counts", {})
    new = sum(counts.get(k, 0) for k in ("imported", "repaired", "merged"))
    lines = [result["note"]] if result.get("note") else []
    lines.append(f"import: {new} new, {counts.get('unchanged', 0)} unchanged, "
                 f"{counts.get('skipped', 0)} skipped")
    if counts.get("skipped"):
        lines[-1] += f"; see `curate status {workspace} --skipped`"
    return lines


@contextlib.contextmanager
def _display(out: Out, workspace: Path) -> Iterator[tuple[OnStage, Callable[[int, int], None]]]:
    """A line per stage, and a progress bar for the stage running when stderr is a terminal."""
    bar = None
    task: list[int] = []

    def on_stage(name: str, event: str, result: dict[str, Any] | None) -> None:
        if event == "unchanged":
            out.line(f"{name}: unchanged, skipped")
        elif event == "start" and bar is not None:
            task[:] = [bar.add_task(name, total=None)]
        elif event == "ran":
            if bar is not None and task:
                bar.remove_task(task[0])
                task.clear()
            for line in _done_lines(name, result, workspace):
                out.line(line)

    def progress(done: int, total: int) -> None:
        if bar is not None and task:
            bar.update(task[0], completed=done, total=total)

    if out.as_json or out.quiet or not sys.stderr.isatty():
        yield on_stage, progress
        return
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeRemainingColumn

    bar = Progress("[progress.description]{task.description}", BarColumn(), MofNCompleteColumn(),
                   TimeRemainingColumn(), console=Console(stderr=True), transient=True)
    with bar:
        yield on_stage, progress


HERE = "As a flag: relative to where you run curate."


def _here(value: Any) -> Any:
    """Paths given as flags are the shell's (relative to the current folder); in curate.toml they
    are the workspace's, so make them absolute before they meet the file's."""
    if isinstance(value, tuple):
        return tuple(_here(v) for v in value)
    return value if is_url(value) else str(Path(value).absolute())  # s3://... stays a URL


@click.command("run")
@click.argument("workspace", type=click.Path(file_okay=False, path_type=Path))
@click.option("--only", default=None, help="Run this one stage (even if [run] stages leaves it out).")
@click.option("--from", "start", default=None,
              help="Start at this stage; the ones before it are not looked at.")
@click.option("--force", multiple=True,
              help="Run this stage even if nothing it depends on changed (repeatable; 'all': every stage).")
@config_flags(RunConfig, Flag("sources", multiple=True, metavar="SRC", convert=_here, note=HERE),
              "trigger", "class_token", Flag("model", convert=_here, note=HERE),
              Flag("stages", metavar="NAME,..."), "executor", "ray_address")
@config_options
@output_options
def command(workspace: Path, only: str | None, start: str | None, force: tuple[str, ...],
            flags: dict[str, Any], config_file: Path | None, overrides: tuple[str, ...], as_json: bool,
            quiet: bool, verbose: bool) -> None:
    """Run the workspace's pipeline: the stages listed in [run] of curate.toml, in order.

    \b
    Stages, in pipeline order: import, dedupe, filter, bg, crop, tag, tags-filter, captions,
    layout, check, train. Each reads its options from its own curate.toml table, as its single
    command does. A stage whose settings, inputs and outputs are what they were after the last
    run is skipped, so re-running after a hand fix (a caption, keep.txt, crops.csv) redoes only
    what the fix touches. Exit status 1 when check finds errors.

    \b
    Examples:
      curate init ws && $EDITOR ws/curate.toml      # [run] sources, trigger, stages
      curate run ws
      curate run ws --sources ./raw --trigger sks --class-token woman
      curate run ws --only tag --force tag
      curate run ws --from layout --json
      curate run ws --executor ray                  # per-image work on Ray (RAY_ADDRESS or local)
    """
    from curate.pipeline import run_pipeline

    out = Out(as_json, quiet, verbose)
    with _display(out, workspace) as (on_stage, progress):
        result = run_pipeline(workspace, config_file=config_file, overrides=overrides, only=only, start=start,
                              force=force, on_stage=on_stage, progress=progress, flags=flags)
    if as_json:
        out.json(result.as_dict())
    else:
        ran = [o.name for o in result.stages if o.status == "ran"]
        rest = "; the rest were unchanged" if len(ran) < len(result.stages) else ""
        out.line(f"{len(ran)} of {len(result.stages)} stages ran ({', '.join(ran) or 'none'}) in "
                 f"{result.seconds:.1f} s{rest}")
        if result.check_errors:
            out.line(f"check found {result.check_errors} error(s): `curate check "
                     f"{workspace}/<dataset>` lists them")
    if result.check_errors:
        raise SystemExit(1)
