from __future__ import annotations

from pathlib import Path

import click

from curate.cli._common import Out, output_options
from curate.status import workspace_status


@click.command("status")
@click.argument("workspace", type=click.Path(file_okay=False, path_type=Path))
@click.option("--skipped", "list_skipped", is_flag=True, help="List every skipped file with its reason.")
@output_options
def command(workspace: Path, list_skipped: bool, as_json: bool, quiet: bool, verbose: bool) -> None:
    """Show what WORKSPACE holds: images, where they came from, and each stage's verdicts.

    \b
    Examples:
      curate status ws
      curate status ws --skipped        # every skipped file and why
      curate status ws --json | jq .verdicts
    """
    out = Out(as_json, quiet, verbose)
    status = workspace_status(workspace)
    if as_json:
        out.json(status)
        return
    out.line(f"workspace {status['workspace']}: {status['images']} images "
             f"from {status['origins']} files")
    out.table("sources", [(k, v) for k, v in status["sources"].items()], ("kind", "files"))
    out.table("decisions", [(d["stage"], d["verdict"], d["count"]) for d in status["verdicts"]],
              ("stage", "verdict", "count"))
    if list_skipped or verbose:
        out.problems("skipped", [(s["file"], s["reason"]) for s in status["skipped"]])
    elif status["skipped"]:
        out.line(f"{len(status['skipped'])} files skipped: `curate status {workspace} --skipped` "
                 "lists them with reasons")
