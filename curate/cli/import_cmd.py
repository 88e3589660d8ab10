from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from curate.cli import _executor
from curate.cli._common import Out, config_options, output_options
from curate.cli._flags import config_flags
from curate.config import stage_config
from curate.stages.ingest import ImportConfig, import_sources
from curate.workspace import CONFIG_NAME


@click.command("import")
@click.argument("sources", nargs=-1, required=True)  # str: a Path would mangle s3://
@click.option("--into", "workspace", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="Workspace folder to import into (created if missing).")
@config_flags(ImportConfig, "animated", "max_pixels", "max_file_mb", "max_sidecar_kb", "workers",
              "strict")
@_executor.executor_flags
@click.option("--dry-run", is_flag=True, help="Read and check everything, write nothing.")
@config_options
@output_options
def command(sources: tuple[str, ...], workspace: Path, flags: dict[str, Any], dry_run: bool,
            config_file: Path | None,
            overrides: tuple[str, ...], as_json: bool, quiet: bool, verbose: bool) -> None:
    """Import images from SOURCES (folders, .zip/.tar archives, single images or fsspec URLs
    such as s3://bucket/scrape, with the backend installed) into a workspace.

    \b
    Reads what scrapers leave beside images: gallery-dl .json/.txt sidecars, Hydrus and
    imgbrd-grabber namespaced tags, img2dataset shards, and existing Kohya datasets
    (N_name folders: repeats and captions kept). Sources are never modified. Bad files are
    skipped with a one-line reason; re-importing the same sources is a no-op.

    \b
    Examples:
      curate import ~/gallery-dl/danbooru/my_character --into ws
      curate import scrape.zip old_dataset/img --into ws --animated skip
      curate import raw --into ws --dry-run --json
      curate import s3://bucket/shards --into ws --executor ray   # pip install s3fs
    """
    out = Out(as_json, quiet, verbose)
    config_file = config_file or workspace / CONFIG_NAME
    executor = _executor.executor(config_file, overrides, _executor.take(flags), dry_run=dry_run)
    config = stage_config(ImportConfig, "import", config_file, overrides, flags)
    with out.progress("importing") as progress:
        result = import_sources(workspace, sources, config, dry_run=dry_run, on_progress=progress,
                                executor=executor)
    report(out, result)
    if config.strict and result.skipped:
        raise SystemExit(1)


def report(out: Out, result) -> None:  # type: ignore[no-untyped-def]
    if out.as_json:
        out.json(result.as_dict())
        return
    out.problems("skipped", result.skipped)
    out.problems("warning", result.warnings)
    out.problems("repaired", result.repaired, always=False)
    out.problems("ignored", result.ignored, always=False)
    c = result.counts
    verb = "would import" if result.dry_run else "imported"
    if result.nothing_new:
        out.line(f"nothing new: all {c['unchanged']} files are unchanged since the last import "
                 f"into {result.workspace}")
        return
    out.summary(f"{verb} into {result.workspace}", c, "files")
