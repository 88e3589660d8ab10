from __future__ import annotations

from pathlib import Path

import click

from curate.cli._common import LIST_LIMIT, Out, comma_list, config_options, output_options
from curate.config import CONFIG_NAME, stage_config


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
@click.option("--min-share", type=float, default=None,
              help="Exclusive groups: a tag in fewer than this share of the images with the group's "
                   "majority tag is removed (default 0.15).")
@click.option("--prune-intrinsic", is_flag=True, default=None,
              help="Drop hair/eye colour and other fixed-look tags the trigger word should carry.")
@click.option("--trigger", default=None, help="Trigger word: never removed.")
@click.option("--blacklist", default=None, metavar="TAG,...", help="Tags always removed.")
@click.option("--min-confidence", multiple=True, metavar="CATEGORY=P",
              help="Remove tagger tags below P, e.g. general=0.4 or '*=0.3' (repeatable).")
@click.option("--no-implications", "implications", flag_value=False, default=None,
              help="Keep 'shirt' beside 'white shirt' (and do not merge tags).")
@click.option("--no-exclusive", "exclusive", flag_value=False, default=None,
              help="Skip the exclusive-group rule.")
@click.option("--multi-character", "single_character", flag_value=False, default=None,
              help="The dataset shows several characters: do not treat hair/eye colours as exclusive.")
@click.option("--rules", multiple=True, type=click.Path(dir_okay=False, exists=True),
              help="Extra rules file (TOML, as tagging/rules/default.toml); repeatable.")
@click.option("--caption-ext", default=None, help="Caption files in plain folders (default .txt).")
@click.option("--dry-run", is_flag=True, help="Show the diff of removed tags; change nothing.")
@config_options
@output_options
def filter_command(target: Path, min_share: float | None, prune_intrinsic: bool | None, trigger: str | None,
                   blacklist: str | None, min_confidence: tuple[str, ...], implications: bool | None,
                   exclusive: bool | None, single_character: bool | None, rules: tuple[str, ...],
                   caption_ext: str | None, dry_run: bool, config_file: Path | None,
                   overrides: tuple[str, ...], as_json: bool, quiet: bool, verbose: bool) -> None:
    """Remove tags that contradict the dataset: a lone 'brown hair' in a blonde character's set,
    'shirt' beside 'white shirt', low-confidence guesses, blacklisted tags.

    \b
    Works on a workspace's captions (each removal recorded with its rule) or on the caption
    files of a plain folder. Rules are data: tagging/rules/default.toml, plus --rules FILE.

    \b
    Examples:
      curate tags filter ws --dry-run                # the diff, nothing written
      curate tags filter ws --trigger sks --prune-intrinsic --min-confidence general=0.4
      curate tags filter ./dataset/10_sks --blacklist "watermark,signature"
    """
    from curate.stages.captions.filter import FilterStageConfig, run_filter

    out = Out(as_json, quiet, verbose)
    config = stage_config(FilterStageConfig, "filter", config_file or target / CONFIG_NAME, overrides, {
        "min_share": min_share, "prune_intrinsic": prune_intrinsic, "trigger": trigger,
        "blacklist": comma_list(blacklist), "min_confidence": min_confidence or None,
        "implications": implications, "exclusive": exclusive, "single_character": single_character,
        "rules": rules or None, "caption_ext": caption_ext})
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
