"""Running a planned sd-scripts command (the kohya backend's `run`): sd-scripts' own accelerate,
in its folder, its output streamed to stderr so that `--json` output stays parseable."""

from __future__ import annotations

import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

from curate.errors import CurateError
from curate.trainer.backends import Plan, RunResult, StepCallback
from curate.trainer.backends.kohya import LAUNCH, NAME, check_sd_scripts


def accelerate_program(tool: Path) -> str:
    """sd-scripts' own environment (venv/ or .venv/ in its folder) first, then PATH."""
    for env in ("venv", ".venv"):
        for rel in ("bin/accelerate", "Scripts/accelerate.exe"):
            if (tool / env / rel).is_file():
                return str(tool / env / rel)
    found = shutil.which("accelerate")
    if not found:
        raise CurateError(f"accelerate not found in {tool}/venv, {tool}/.venv or on PATH: install "
                          "sd-scripts' requirements (pip install -r requirements.txt) and activate them")
    return found


def run_plan(plan: Plan, *, on_step: StepCallback | None = None,
        sink: Callable[[bytes], None] | None = None) -> RunResult:
    """Run the planned command in the sd-scripts folder, streaming its output to stderr (or `sink`).

    sd-scripts reports its own progress, so `on_step` is not called.
    """
    if plan.tool is None or plan.command is None:
        raise CurateError("the kohya backend needs --sd-scripts PATH (a kohya-ss/sd-scripts checkout) "
                          "to run; or print the command with --print-command")
    script = Path(plan.command[len(LAUNCH)]).name
    tool = check_sd_scripts(plan.tool, script)
    argv = [accelerate_program(tool), *plan.command[1:]]
    write = sink or _to_stderr
    # stdout goes to our stderr: --json output stays parseable while the user sees the log
    with subprocess.Popen(argv, cwd=tool, stdout=subprocess.PIPE, stderr=subprocess.STDOUT) as proc:
        try:
            assert proc.stdout is not None
            while chunk := proc.stdout.read1(65536):  # chunks, not lines: tqdm redraws with \r
                write(chunk)
            code = proc.wait()
        except BaseException:
            proc.terminate()
            proc.wait()
            raise
    if code:
        raise CurateError(f"sd-scripts {script} exited with code {code} (its output is above); "
                          f"fix the problem it reports and re-run")
    output = plan.out / f"{plan.config.output_name}.safetensors"
    return RunResult(NAME, output, f"sd-scripts trained {plan.config.network} ({script} exited 0)",
                     {"command": plan.command, "returncode": code, "files": [str(p) for p in plan.files]})


def _to_stderr(chunk: bytes) -> None:
    stream = getattr(sys.stderr, "buffer", None)
    if stream is not None:
        stream.write(chunk)
    else:
        sys.stderr.write(chunk.decode("utf-8", "replace"))
    sys.stderr.flush()

