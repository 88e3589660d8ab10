from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import click

from curate.check.config import CheckConfig
from curate.check.output import RENDER, render, rule_table
from curate.cli._common import Out, config_options, output_options
from curate.cli._flags import Flag, config_flags
from curate.config import help_of
from curate.errors import CurateError
from curate.paths import display

FIELDS = {f.name: f for f in dataclasses.fields(CheckConfig)}


@click.command("check")
@click.argument("paths", nargs=-1, type=click.Path(path_type=Path))
@click.option("--format", "fmt", type=click.Choice(list(RENDER)), default="human", show_default=True,
              help="human lines, a JSON result, or GitHub Actions annotations.")
@click.option("--disable", multiple=True, metavar="RULE",
              help=f"{help_of(FIELDS['disable'])} Repeatable; adds to the [check] list.")
@config_flags(CheckConfig, "caption_ext", "trigger",
              Flag("check_duplicates", ("--no-duplicates",), sets=False))
@click.option("--list-rules", is_flag=True, help="Print every rule id, its severity and message; exit.")
@config_options
@output_options
def command(paths: tuple[Path, ...], fmt: str, disable: tuple[str, ...], flags: dict[str, Any],
            list_rules: bool, config_file: Path | None,
            overrides: tuple[str, ...], as_json: bool, quiet: bool, verbose: bool) -> None:
    """Lint Kohya datasets in PATHS (folders or files; default: the current folder).

    \b
    Checks what sd-scripts would silently get wrong: missing, empty, multi-line or non-UTF-8
    captions; the trigger word; N_name folders, subfolders, extensions, shared stems;
    duplicates (cached hashes); small images; alpha without alpha_mask; caption_extension;
    escaped parentheses, blacklisted and contradicting tags; captions over the CLIP token
    limit; network_alpha > network_dim in training configs. Options: [check] in curate.toml
    or [tool.curate.check] in pyproject.toml. Exit status 1 when there is an error (warnings
    alone exit 0), 2 for a usage problem. Given file names (as pre-commit passes them), only
    findings about those files are shown.

    \b
    Examples:
      curate check                          # the datasets under the current folder
      curate check dataset --trigger sks --disable caption-too-long
      curate check --format github          # annotations in a GitHub Actions job
      curate check dataset/img/10_sks/a.png dataset/img/10_sks/a.txt   # what pre-commit runs
      curate check --list-rules
    """
    out = Out(as_json, quiet, verbose)
    fmt = "json" if as_json else fmt
    if list_rules:
        _list_rules(out)
        return
    from curate.check.config import load_config
    from curate.check.run import check

    folders, files = _split(paths)
    start = folders[0] if folders else files[0].parent if files else Path.cwd()
    loaded = load_config(start, config_file, overrides, flags, disable)
    result = check(folders, loaded.config, files or None)
    if verbose and fmt == "human":
        for dataset in result.datasets:
            click.echo(f"checked: {dataset}")
        source = display(loaded.source) if loaded.source else "defaults"
        click.echo(f"options: {source}; token counts: {result.tokens}")
    text = render(result, fmt, quiet)
    if text:
        click.echo(text)
    if result.exit_code:
        click.get_current_context().exit(result.exit_code)


def _split(paths: tuple[Path, ...]) -> tuple[list[Path], list[Path]]:
    folders, files = [], []
    for path in paths:
        if path.is_dir():
            folders.append(path)
        elif path.exists():
            files.append(path)
        else:
            raise CurateError(f"{display(path)}: no such file or folder")
    return folders, files


def _list_rules(out: Out) -> None:
    rows = rule_table()
    if out.as_json:
        out.json({"rules": [{"id": i, "severity": s, "message": m} for i, s, m in rows]})
        return
    width = max(len(i) for i, _, _ in rows)
    for rule_id, severity, message in rows:
        click.echo(f"{rule_id:<{width}}  {severity:<7}  {message}")
