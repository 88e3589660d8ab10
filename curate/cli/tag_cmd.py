from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from curate.cli._common import Out, config_options, output_options
from curate.cli._flags import Flag, config_flags
from curate.config import CONFIG_NAME, stage_config
from curate.stages.tag.config import TagConfig


@click.command("tag")
@click.argument("target", type=click.Path(path_type=Path))
@config_flags(TagConfig, "model", "threshold", "character_threshold", "mcut", "rating", "character_first",
              "max_tags", Flag("undesired", metavar="TAG,..."),
              Flag("replace", multiple=True, metavar="OLD=NEW"),
              Flag("existing", ("--append",), sets="append"), Flag("existing", ("--overwrite",),
              sets="overwrite"),
              Flag("existing", note="--append / --overwrite for short; skip undoes a curate.toml setting."),
              "caption_ext", "escape", "batch_size", Flag("providers", metavar="NAME,..."))
@click.option("--rethreshold", is_flag=True,
              help="Workspace: re-apply thresholds to stored probabilities, without the model.")
@click.option("--dry-run", is_flag=True, help="Show the captions; write nothing.")
@config_options
@output_options
def command(target: Path, flags: dict[str, Any], rethreshold: bool,
            dry_run: bool, config_file: Path | None, overrides: tuple[str, ...], as_json: bool,
            quiet: bool, verbose: bool) -> None:
    """Tag images with a WD14 (SmilingWolf) ONNX tagger and write captions.

    \b
    TARGET is a workspace (probabilities go to the manifest, captions to its working caption;
    images already tagged by the model are skipped) or a plain folder (NAME.txt beside each
    image; existing captions are kept unless --append or --overwrite). Runs on CUDA when
    onnxruntime can use it, else on the CPU, and says which (`curate doctor` explains).

    \b
    Examples:
      curate tag ws --threshold 0.4
      curate tag ./dataset/10_sks --model ~/models/wd-swinv2-tagger-v3 --overwrite
      curate tag ws --rethreshold --threshold 0.5 --mcut      # no model run
      curate tag ws --undesired "watermark,signature" --replace brown_hair=blonde_hair
    """
    from curate.stages.tag import tag

    out = Out(as_json, quiet, verbose)
    config = stage_config(TagConfig, "tag", config_file or target / CONFIG_NAME, overrides, flags)
    with out.progress("tagging") as progress:
        result = tag(target, config, rethreshold=rethreshold, dry_run=dry_run, on_progress=progress)
    _print(out, result)


def _print(out: Out, result) -> None:  # type: ignore[no-untyped-def]
    if out.as_json:
        out.json(result.as_dict())
        return
    if result.providers:
        out.line(f"model {result.model} on {result.providers[0]}")
    if result.provider_note:
        out.line(f"note: {result.provider_note}")
    for note in result.notes:
        out.line(f"note: {note}")
    out.problems("skipped", result.skipped)
    out.problems("ignored", result.ignored, always=False)
    if result.dry_run or out.verbose:
        out.listing([f"{image}: {caption}" for image, caption in result.captions])
    verb = "would write" if result.dry_run else "captions"
    out.summary(f"{verb} for {result.target}", result.counts, "images")
