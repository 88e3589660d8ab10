from __future__ import annotations

from pathlib import Path

import click

from curate.cli._common import Out, config_options, output_options
from curate.config import CONFIG_NAME, stage_config


@click.command("layout")
@click.argument("workspace", type=click.Path(file_okay=False, path_type=Path))
@click.option("--out", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="Dataset folder to write (replaced only if an earlier layout wrote it).")
@click.option("--name", default=None, help="Concept name after N_ (default: the trigger word).")
@click.option("--class-tokens", default=None,
              help="class_tokens for dataset.toml (default: trigger + class token).")
@click.option("--repeats", type=int, default=None, help="Repeats for every concept.")
@click.option("--target-steps", type=int, default=None,
              help="Compute repeats so training takes about this many steps (balanced per concept).")
@click.option("--epochs", type=int, default=None, help="Epochs for --target-steps (default 10).")
@click.option("--batch-size", type=int, default=None, help="Batch size (default 2).")
@click.option("--concepts", default=None, type=click.Path(dir_okay=False, exists=True),
              help="concepts.toml: [concept.NAME] tags = [...] or folders = [...].")
@click.option("--reg", default=None, type=click.Path(file_okay=False, exists=True),
              help="Folder of regularisation images (written to reg/1_CLASS).")
@click.option("--link", type=click.Choice(["copy", "hardlink", "symlink"]), default=None,
              help="How images get into the dataset (default copy).")
@click.option("--caption-ext", default=None, help="Caption extension (default .txt; stated in dataset.toml).")
@click.option("--resolution", type=int, default=None,
              help="Training resolution (default 512); min/max_bucket_reso follow it unless set: "
                   "half (at most 256) and twice it, rounded to the bucket step.")
@click.option("--dry-run", is_flag=True, help="Print the plan; write nothing.")
@config_options
@output_options
def command(workspace: Path, out: Path, name: str | None, class_tokens: str | None, repeats: int | None,
            target_steps: int | None, epochs: int | None, batch_size: int | None, concepts: str | None,
            reg: str | None, link: str | None, caption_ext: str | None, resolution: int | None,
            dry_run: bool, config_file: Path | None, overrides: tuple[str, ...], as_json: bool,
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
    from curate.stages.layout import LayoutConfig, layout

    o = Out(as_json, quiet, verbose)
    config = stage_config(LayoutConfig, "layout", config_file or workspace / CONFIG_NAME, overrides, {
        "name": name, "class_tokens": class_tokens, "repeats": repeats, "target_steps": target_steps,
        "epochs": epochs, "batch_size": batch_size, "concepts": concepts, "reg": reg, "link": link,
        "caption_ext": caption_ext, "resolution": resolution})
    result = layout(workspace, out, config, dry_run=dry_run)
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
