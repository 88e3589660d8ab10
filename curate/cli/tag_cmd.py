from __future__ import annotations

from pathlib import Path

import click

from curate.cli._common import Out, comma_list, config_options, output_options
from curate.config import CONFIG_NAME, stage_config


@click.command("tag")
@click.argument("target", type=click.Path(path_type=Path))
@click.option("--model", default=None,
              help="Tagger folder (model.onnx + selected_tags.csv) or Hub repo id "
                   "(default SmilingWolf/wd-swinv2-tagger-v3).")
@click.option("--threshold", type=float, default=None, help="General tags above this (default 0.35).")
@click.option("--character-threshold", type=float, default=None,
              help="Character tags above this (default 0.85).")
@click.option("--mcut/--no-mcut", default=None, help="Pick thresholds per image by MCut.")
@click.option("--rating", type=click.Choice(["drop", "keep", "first"]), default=None,
              help="Rating tags: drop (default, as sd-scripts), keep last, or first.")
@click.option("--character-first", is_flag=True, default=None, help="Character tags before general ones.")
@click.option("--max-tags", type=int, default=None, help="At most N general tags per image.")
@click.option("--undesired", default=None, metavar="TAG,...", help="Tags never written.")
@click.option("--replace", "replace_", multiple=True, metavar="OLD=NEW", help="Replace a tag (repeatable).")
@click.option("--append", "existing", flag_value="append", default=None,
              help="Add new tags to existing captions.")
@click.option("--overwrite", "existing", flag_value="overwrite", help="Replace existing captions.")
@click.option("--existing", "existing_choice", default=None,
              type=click.Choice(["skip", "append", "overwrite"]),
              help="Images that have a caption: skip (default), append new tags, or overwrite "
                   "(--append / --overwrite for short; skip undoes a curate.toml setting).")
@click.option("--caption-ext", default=None, help="Caption file extension in plain folders (default .txt).")
@click.option("--escape/--no-escape", default=None, help="Escape parentheses (for prompts, not training).")
@click.option("--batch-size", type=int, default=None, help="Images per model run (default 8).")
@click.option("--providers", default=None, metavar="NAME,...",
              help="onnxruntime providers, e.g. CUDAExecutionProvider,CPUExecutionProvider.")
@click.option("--rethreshold", is_flag=True,
              help="Workspace: re-apply thresholds to stored probabilities, without the model.")
@click.option("--dry-run", is_flag=True, help="Show the captions; write nothing.")
@config_options
@output_options
def command(target: Path, model: str | None, threshold: float | None, character_threshold: float | None,
            mcut: bool | None, rating: str | None, character_first: bool | None, max_tags: int | None,
            undesired: str | None, replace_: tuple[str, ...], existing: str | None,
            existing_choice: str | None, caption_ext: str | None,
            escape: bool | None, batch_size: int | None, providers: str | None, rethreshold: bool,
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
    from curate.errors import CurateError
    from curate.stages.tag import TagConfig, tag

    if existing and existing_choice and existing != existing_choice:
        raise CurateError(f"--{existing} and --existing {existing_choice} disagree: give one of them")
    existing = existing_choice or existing
    out = Out(as_json, quiet, verbose)
    config = stage_config(TagConfig, "tag", config_file or target / CONFIG_NAME, overrides, {
        "model": model, "threshold": threshold, "character_threshold": character_threshold,
        "mcut": mcut, "rating": rating, "character_first": character_first, "max_tags": max_tags,
        "undesired": comma_list(undesired), "replace": replace_ or None, "existing": existing,
        "caption_ext": caption_ext, "escape": escape, "batch_size": batch_size,
        "providers": comma_list(providers)})
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
