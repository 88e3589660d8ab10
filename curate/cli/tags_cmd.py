from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from curate.cli._common import LIST_LIMIT, Out, config_options, output_options
from curate.cli._flags import Flag, config_flags
from curate.config import CONFIG_NAME, stage_config
from curate.stages.captions.filter import FilterStageConfig


@click.group("tags")
def command() -> None:
    """Dataset-level tag work: false-positive filtering.

    \b
    Examples:
      curate tags filter ws --dry-run
      curate tags filter ./dataset/10_sks --trigger sks --prune-intrinsic
    """


@command.command("filter")
@click.argument("target", type=click.Path(path_type=Path))
@config_flags(FilterStageConfig, "min_share", "prune_intrinsic", "trigger", Flag("blacklist",
              metavar="TAG,..."),
              Flag("min_confidence", multiple=True, metavar="CATEGORY=P"), "implications", "exclusive",
              Flag("single_character", ("--multi-character",), sets=False),
              Flag("rules", multiple=True, type=click.Path(dir_okay=False, exists=True)), "caption_ext")
@click.option("--dry-run", is_flag=True, help="Show the diff of removed tags; change nothing.")
@config_options
@output_options
def filter_command(target: Path, flags: dict[str, Any], dry_run: bool, config_file: Path | None,
                   overrides: tuple[str, ...], as_json: bool, quiet: bool, verbose: bool) -> None:
    """Remove tags that contradict the dataset: a lone 'brown hair' in a blonde character's set,
    'shirt' beside 'white shirt', low-confidence guesses, blacklisted tags.

    \b
    Works on a workspace's captions (each removal recorded with its rule) or on the caption
    files of a plain folder. Rules are data: tagging/rules/default.toml, plus --rules FILE.
    Options: the [tags-filter] table of curate.toml.

    \b
    Examples:
      curate tags filter ws --dry-run                # the diff, nothing written
      curate tags filter ws --trigger sks --prune-intrinsic --min-confidence general=0.4
      curate tags filter ./dataset/10_sks --blacklist "watermark,signature"
    """
    from curate.stages.captions.filter import run_filter

    out = Out(as_json, quiet, verbose)
    config = stage_config(FilterStageConfig, "tags-filter", config_file or target / CONFIG_NAME, overrides,
                          flags)
    run = run_filter(target, config, dry_run=dry_run)
    if as_json:
        out.json(run.as_dict())
        return
    out.problems("skipped", run.skipped)
    lines = run.diff if (dry_run or verbose) else []
    for line in lines[: None if verbose else LIST_LIMIT * 4]:
        out.line(line)
    verb = "would change" if dry_run else "changed"
    out.table(f"tags removed by rule ({run.images} captions, {len(run.changed)} {verb})",
              sorted(run.counts.items()), ("rule", "tags"))
    if not run.counts:
        out.line("nothing to remove")
