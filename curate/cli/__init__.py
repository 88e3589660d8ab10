"""The `curate` command. Subcommands live one per module and load only when invoked, so
`curate --help` and the pre-commit hook never import heavy libraries."""

from __future__ import annotations

import importlib
import sys
from typing import Any

import click

from curate import __version__
from curate.cli._common import handle_errors

# verb -> (module, one-line help shown by `curate --help` without importing the module)
COMMANDS: dict[str, tuple[str, str]] = {
    "init": ("curate.cli.init_cmd", "Create a workspace with a commented curate.toml."),
    "run": ("curate.cli.run_cmd",
            "Run the pipeline of curate.toml's [run] stages; unchanged ones are skipped."),
    "import": ("curate.cli.import_cmd", "Import scraped images, tags and captions into a workspace."),
    "dedupe": ("curate.cli.dedupe_cmd", "Find exact and near-duplicate images; report, move or mark them."),
    "filter": ("curate.cli.filter_cmd", "Reject blurry, small, dark, greyscale or badly framed images."),
    "crop": ("curate.cli.crop_cmd", "Crop images around their subject (faces, cut-outs, your boxes)."),
    "bg": ("curate.cli.bg_cmd",
           "Remove backgrounds (rembg models or GrabCut); keep the mask for alpha_mask."),
    "tag": ("curate.cli.tag_cmd", "Tag images with a WD14 ONNX tagger and write captions."),
    "caption": ("curate.cli.caption_cmd",
                "Write a sentence caption per image with a vision-language model (local or a server)."),
    "tags": ("curate.cli.tags_cmd", "Dataset-level tag work: false-positive filtering."),
    "captions": ("curate.cli.captions_cmd", "Edit every caption at once: trigger word, add, replace, stats."),
    "layout": ("curate.cli.layout_cmd", "Write a Kohya dataset (N_name folders, captions, dataset.toml)."),
    "buckets": ("curate.cli.buckets_cmd", "Aspect-ratio buckets as sd-scripts makes them; fix strays."),
    "train": ("curate.cli.train_cmd", "Train a LoRA or iA3 on a Kohya dataset (needs the train extra)."),
    "lora": ("curate.cli.lora_cmd", "LoRA/iA3 files: info, resize, extract, merge, blocks, iA3 to LoRA."),
    "check": ("curate.cli.check_cmd", "Lint a dataset folder or repo (also a pre-commit hook)."),
    "doctor": ("curate.cli.doctor_cmd", "Show what works on this machine (onnxruntime, CUDA, Hub)."),
    "status": ("curate.cli.status_cmd", "Show what a workspace holds and every stage's verdicts."),
    "report": ("curate.cli.report_cmd",
               "Write a static HTML review of a workspace: images, captions, duplicates, plan."),
}


class LazyGroup(click.Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        return list(COMMANDS)

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name not in COMMANDS:
            return None
        module = importlib.import_module(COMMANDS[name][0])
        command: click.Command = module.command
        return command

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        rows = [(name, help_) for name, (_, help_) in COMMANDS.items()]
        with formatter.section("Commands"):
            formatter.write_dl(rows)

    def invoke(self, ctx: click.Context) -> Any:
        with handle_errors(ctx):
            return super().invoke(ctx)


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="curate")
@click.option("--debug", is_flag=True, help="Show Python tracebacks for errors.")
@click.pass_context
def cli(ctx: click.Context, debug: bool) -> None:
    """curate: turn a pile of scraped images into a training-ready Stable Diffusion dataset.

    \b
    A 30-second tour:
      curate import ./raw ./gallery-dl --into ws   # copy in images, tags, captions
      curate dedupe ws --report dedupe.html        # duplicates marked, shown side by side
      curate filter ws && curate tag ws            # quality checks, then WD14 tags
      curate tags filter ws && curate captions trigger ws sks
      curate layout ws --out dataset --target-steps 1500 && curate check dataset
      curate status ws                             # what came in, what was skipped and why
    Every command takes --json for scripts and --help with examples.
    """
    ctx.meta["curate.debug"] = debug or ctx.meta.get("curate.debug", False)


def main() -> None:
    cli.main(args=sys.argv[1:], prog_name="curate")
