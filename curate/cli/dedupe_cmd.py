from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from curate.cli import _executor
from curate.cli._common import Out, config_options, output_options
from curate.cli._flags import config_flags
from curate.config import CONFIG_NAME, stage_config
from curate.stages.dedupe.config import DedupeConfig


@click.command("dedupe")
@click.argument("target", required=False, type=click.Path(path_type=Path))
@config_flags(DedupeConfig, "hash", "hash_size", "threshold", "similarity", "keep")
@click.option("--keep-list", type=click.Path(dir_okay=False, exists=True, path_type=Path),
              help="Images that always stay, one per line (default TARGET/keep.txt if present).")
@config_flags(DedupeConfig, "flip_invariant", "decode", "verify", "workers")
@_executor.executor_flags
@click.option("--move-to", type=click.Path(file_okay=False, path_type=Path),
              help="Plain folder: move duplicates (and their sidecars) here; never deletes.")
@click.option("--report", type=click.Path(dir_okay=False, path_type=Path),
              help="Write a static HTML page showing every group side by side.")
@click.option("--undo", type=click.Path(dir_okay=False, path_type=Path),
              help="Move files back as recorded in DIR/dedupe.json by an earlier --move-to DIR.")
@click.option("--dry-run", is_flag=True, help="Show what would be moved or marked; change nothing.")
@config_options
@output_options
def command(target: Path | None, flags: dict[str, Any], keep_list: Path | None, move_to: Path | None,
            report: Path | None, undo: Path | None, dry_run: bool,
            config_file: Path | None, overrides: tuple[str, ...], as_json: bool, quiet: bool,
            verbose: bool) -> None:
    """Find exact and near-duplicate images in TARGET: a plain folder or a workspace.

    \b
    A plain folder gets a report of each group and which file is kept and why; --move-to
    moves the others aside (with their sidecars; undo with --undo DIR/dedupe.json). In a
    workspace, duplicates are marked in the manifest and left out of later stages; each run
    replaces the previous run's marks. Hashes are cached, so a re-run only hashes new files.

    \b
    Examples:
      curate dedupe ./raw                              # report only
      curate dedupe ./raw --similarity 90 --report dedupe.html
      curate dedupe ./raw --move-to ./raw-duplicates   # then: --undo raw-duplicates/dedupe.json
      curate dedupe ws --keep first --json
      curate dedupe ws --executor ray --ray-address ray://head:10001   # hashing on a Ray cluster
    """
    out = Out(as_json, quiet, verbose)
    if undo is not None:
        _undo(out, undo, dry_run)
        return
    if target is None:
        raise click.UsageError("name a folder or workspace to deduplicate (or --undo RECORD)")
    from curate.stages.dedupe.run import dedupe

    config_file = config_file or target / CONFIG_NAME
    # a dry run still hashes every image: it runs on the executor too
    executor = _executor.executor(config_file, overrides, _executor.take(flags))
    config = stage_config(DedupeConfig, "dedupe", config_file, overrides, flags)
    with out.progress("hashing") as progress:
        result = dedupe(target, config, keep_list=keep_list, move_to=move_to, report=report,
                        dry_run=dry_run, on_progress=progress, executor=executor)
    _print(out, result, move_to)


def _print(out: Out, result, move_to: Path | None) -> None:  # type: ignore[no-untyped-def]
    if out.as_json:
        out.json(result.as_dict())
        return
    out.problems("skipped", result.skipped)
    out.problems("warning", result.warnings)
    out.problems("ignored", result.ignored, always=False)
    if len(result.items) < 2:
        found = "no images" if not result.items else "only one image"
        out.line(f"{found} in {result.target}: nothing to compare")
        return
    if not out.quiet:
        out.listing([_group_lines(result, g) for g in result.groups], "groups")
    counts = result.counts
    out.summary(f"dedupe of {result.target} ({result.hash_key}, threshold {result.threshold})", counts)
    _next_step(out, result, move_to)


def _group_lines(result, g) -> str:  # type: ignore[no-untyped-def]
    """One group as printed: the kept image, then the others indented."""
    lines = [f"keep {result.items[g.keeper].shown}  ({g.why})"]
    lines += [f"  keep {result.items[i].shown}  (listed in the keep list)" for i in g.also_kept]
    lines += [f"  dup  {result.items[m.index].shown}  ({m.relation}, distance {m.distance})"
              for m in g.duplicates]
    return "\n".join(lines)


def _next_step(out: Out, result, move_to: Path | None) -> None:  # type: ignore[no-untyped-def]
    if result.report:
        out.line(f"report: {result.report}")
    if result.mode == "workspace":
        verb = "would mark" if result.dry_run else "marked"
        out.line(f"{verb} {result.duplicates} duplicates; later stages leave them out")
    elif move_to is None and result.duplicates:
        out.line(f"report only, nothing moved: add --move-to DIR to move the {result.duplicates} "
                 "duplicates aside")
    elif move_to is not None:
        verb = "would move" if result.dry_run else "moved"
        out.line(f"{verb} {len(result.moved)} files to {move_to}"
                 + (f"; undo with: curate dedupe --undo {result.undo_record}" if result.undo_record else ""))


def _undo(out: Out, record: Path, dry_run: bool) -> None:
    from curate.stages.dedupe.move import undo_moves

    restored, refused = undo_moves(record, dry_run)
    if out.as_json:
        out.json({"restored": restored, "dry_run": dry_run,
                  "refused": [{"file": f, "reason": r} for f, r in refused]})
        return
    out.problems("refused", refused)
    out.line(f"{'would restore' if dry_run else 'restored'} {len(restored)} files")
