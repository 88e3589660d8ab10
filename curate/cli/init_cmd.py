from __future__ import annotations

from pathlib import Path

import click

from curate.cli._common import Out, output_options
from curate.workspace import Workspace, is_workspace


@click.command("init")
@click.argument("workspace", type=click.Path(file_okay=False, path_type=Path))
@output_options
def command(workspace: Path, as_json: bool, quiet: bool, verbose: bool) -> None:
    """Create a workspace folder WORKSPACE with a commented curate.toml.

    \b
    Example:
      curate init my-character
      curate import ~/gallery-dl/danbooru/my_character --into my-character

    `curate import` creates the workspace too, so init is only needed to edit curate.toml first.
    """
    out = Out(as_json, quiet, verbose)
    existed = is_workspace(workspace)
    with Workspace.open(workspace, create=True) as ws:
        result = {"workspace": str(ws.root), "created": not existed,
                  "config": str(ws.config_path)}
    if as_json:
        out.json(result)
    elif existed:
        out.line(f"{result['workspace']} is already a workspace (options: {result['config']})")
    else:
        out.line(f"created workspace {result['workspace']} (options: {result['config']})")
