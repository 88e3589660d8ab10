from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from curate.cli._common import Out, config_options, output_options
from curate.cli._flags import Flag, config_flags
from curate.config import CONFIG_NAME, stage_config
from curate.stages.layout.config import LayoutConfig


@click.command("layout")
@click.argument("workspace", type=click.Path(file_okay=False, path_type=Path))
@click.option("--out", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="Dataset folder to write (replaced only if an earlier layout wrote it).")
@config_flags(LayoutConfig, "name", "class_tokens", "repeats", "target_steps", "epochs", "batch_size",
              Flag("concepts", type=click.Path(dir_okay=False, exists=True)),
              Flag("reg", type=click.Path(file_okay=False, exists=True)), "link", "caption_ext", "resolution")
@click.option("--dry-run", is_flag=True, help="Print the plan; write nothing.")
@config_options
@output_options
def command(workspace: Path, out: Path, flags: dict[str, Any], dry_run: bool, config_file: Path | None,
            overrides: tuple[str, ...], as_json: bool,
            quiet: bool, verbose: bool) -> None:
    """Write the workspace's kept images and captions as a Kohya dataset.

    \b
    OUT/img/N_name/ holds each image with its caption (same stem), OUT/reg/1_class/ the
    regularisation images, and OUT/dataset.toml the settings sd-scripts' --dataset_config reads
    (caption_extension always explicit: sd-scripts would default to .caption). Duplicates and
    other excluded images are left out. Repeats follow the seeds' formula:
    steps = images x repeats x epochs / batch size.

    \b
    Examples:
      curate layout ws --out dataset --repeats 10
      curate layout ws --out dataset --target-steps 1500 --epochs 10 --batch-size 2
      curate layout ws --out dataset --concepts concepts.toml --reg reg_images --dry-run
    """
    from curate.stages.layout import layout

    o = Out(as_json, quiet, verbose)
    from curate.tagging.compile import CaptionFormat

    config_path = config_file or workspace / CONFIG_NAME
    config = stage_config(LayoutConfig, "layout", config_path, overrides, flags)
    captions = stage_config(CaptionFormat, "captions", config_path, overrides)
    result = layout(workspace, out, config, captions=captions, dry_run=dry_run)
    if as_json:
        o.json(result.as_dict())
        return
    o.problems("warning", result.warnings)
    o.problems("kept your edit", [(e.file, e.text) for e in result.kept_edits])
    o.problems("conflict", [(e.file, f"your edit kept; curate would have written {ours!r}")
                            for e, ours in result.conflicts])
    rows = [(p["folder"], p["images"], p["repeats"], p["images_x_repeats"]) for p in result.plan]
    verb = "would write" if dry_run else "wrote"
    o.table(f"{verb} {result.out}", rows, ("folder", "images", "repeats", "images x repeats"))
    how = "" if dry_run else f"; train with --dataset_config {result.out}/dataset.toml"
    o.line(f"{result.total_steps} steps = images x repeats x {result.epochs} epochs / batch size "
           f"{result.batch_size}{how}")
