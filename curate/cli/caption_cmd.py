from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from curate.cli import _executor
from curate.cli._common import Out, config_options, output_options
from curate.cli._flags import Flag, config_flags
from curate.config import CONFIG_NAME, stage_config
from curate.stages.caption.config import CaptionConfig


class Rate:
    """The progress callback with captions/s after the bar's description."""

    def __init__(self, progress: Callable[..., None]) -> None:
        self.progress, self.started = progress, time.monotonic()

    def __call__(self, done: int, total: int) -> None:
        elapsed = time.monotonic() - self.started
        self.progress(done, total, f"{done / elapsed:.2f} captions/s" if done and elapsed > 0 else None)


@click.command("caption")
@click.argument("target", type=click.Path(path_type=Path))
@config_flags(CaptionConfig, "preset", "prompt", "model", "revision", "device", "dtype", "api_base",
              "api_model", "api_key_env", "concurrency", "timeout_s", "max_tokens", "temperature",
              "batch_size",
              Flag("checks", metavar="NAME,..."), "budget", "tokenizer", Flag("names", metavar="NAME,..."),
              "trigger", "class_word",
              Flag("existing", ("--append",), sets="append"),
              Flag("existing", ("--overwrite",), sets="overwrite"),
              Flag("existing", note="--append / --overwrite for short."), "caption_ext")
@_executor.executor_flags
@click.option("--dry-run", is_flag=True, help="List the images that would be captioned, with their prompt.")
@click.option("--show", "show_image", type=click.Path(dir_okay=False, path_type=Path), metavar="IMAGE",
              help="Caption this one image with the current prompt and print it; nothing is stored.")
@config_options
@output_options
def command(target: Path, flags: dict[str, Any], dry_run: bool, show_image: Path | None,
            config_file: Path | None, overrides: tuple[str, ...], as_json: bool, quiet: bool,
            verbose: bool) -> None:
    """Write a sentence caption per image with a vision-language model.

    \b
    TARGET is a workspace (each sentence becomes the image's text, which `curate layout` compiles
    in the nl, hybrid or json caption format; user edits win) or a plain folder (NAME.caption
    beside each image). The model is local (--model: Florence-2, Qwen2.5-VL, JoyCaption and other
    LLaVA models, SmolVLM, through transformers) or any OpenAI-compatible server (--api-base and
    --api-model; the key comes from $OPENAI_API_KEY, or the variable --api-key-env names).
    Answers are cached by image content, model, prompt and settings: a re-run asks nothing again.
    A caption that fails a check (empty, refusal, repetition, token budget, a name in a no-names
    caption) is not stored; its reason is recorded.

    \b
    Examples:
      curate caption ws --model microsoft/Florence-2-large --preset detailed
      curate caption ws --api-base http://127.0.0.1:8000/v1 --api-model Qwen/Qwen2.5-VL-7B-Instruct
      curate caption ws --preset no-names --trigger sks --budget clip-225
      curate caption ./dataset/10_sks --model ~/models/joycaption --prompt "Describe {class} in one sentence."
      curate caption ws --show ws/raw/001.jpg --preset hybrid
      curate caption ws --model ~/models/florence-2-large --executor ray   # one model per Ray actor
    """
    out = Out(as_json, quiet, verbose)
    config_file = config_file or target / CONFIG_NAME
    where = _executor.take(flags)
    config = stage_config(CaptionConfig, "caption", config_file, overrides, flags)
    if show_image is not None:
        _show(out, target, show_image, config)
        return
    from curate.stages.caption import caption

    # a dry run loads no model: no cluster to start for it
    executor = _executor.executor(config_file, overrides, where, dry_run=dry_run)
    with out.progress("captioning") as progress:
        result = caption(target, config, dry_run=dry_run, on_progress=Rate(progress), executor=executor)
    _print(out, result)


def _show(out: Out, target: Path, image: Path, config: CaptionConfig) -> None:
    from curate.stages.caption import show

    shown = show(target, image, config)
    if out.as_json:
        out.json(shown.as_dict())
        return
    out.line(f"prompt: {shown.prompt}")
    out.line(f"caption: {shown.caption if shown.caption is not None else '(none)'}")
    if shown.problem:
        out.line(f"problem: {shown.problem}")


def _print(out: Out, result) -> None:  # type: ignore[no-untyped-def]
    if out.as_json:
        out.json(result.as_dict())
        return
    where = f" on {result.device}" if result.device else ""
    out.line(f"model {result.model} ({result.backend}{where}), prompt {result.prompt}")
    for note in result.notes:
        out.line(f"note: {note}")
    out.problems("rejected", result.rejected)
    out.problems("skipped", result.skipped)
    out.problems("ignored", result.ignored, always=False)
    if result.dry_run:
        out.listing([f"{image}: {prompt}" for image, prompt in result.planned], "images")
    elif out.verbose:
        out.listing([f"{image}: {text}" for image, text in result.captions])
    if result.generated:
        out.line(f"{result.generated} captions in {result.seconds:.1f} s ({result.rate:.2f} captions/s)")
    verb = "would caption" if result.dry_run else "captions"
    # skipped images are not a caption outcome, but a run that skipped them all is not empty
    counts = {**result.counts, **({"skipped": len(result.skipped)} if result.skipped else {})}
    out.summary(f"{verb} for {result.target}", counts, "images")
