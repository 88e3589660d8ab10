from __future__ import annotations

import click

from curate.cli._common import Out, output_options

# What curate can do without: tagging falls back to the CPU, models can be given as folders.
# Their absence is reported as "not available", not as a failure of the machine.
# So can captioning: its lines ("caption: ...") say which caption backends work here.
OPTIONAL = frozenset({"CUDA", "huggingface_hub"})
OPTIONAL_PREFIX = "caption:"


def optional(check: str) -> bool:
    return check in OPTIONAL or check.startswith(OPTIONAL_PREFIX)


def _label(check: str, ok: bool) -> str:
    if ok:
        return "ok  "
    return "--  " if optional(check) else "FAIL"


@click.command("doctor")
@click.option("--api-base", metavar="URL",
              help="Probe this OpenAI-compatible caption server (GET URL/models).")
@click.option("--api-model", metavar="NAME", help="With --api-base: say whether the server lists this model.")
@output_options
def command(api_base: str | None, api_model: str | None, as_json: bool, quiet: bool, verbose: bool) -> None:
    """Show what works on this machine: onnxruntime, its providers, CUDA, the Hub client, and
    the caption backends (transformers for local models; a server when --api-base names one).

    A FAIL line is something curate needs; "not available" marks an optional part (CUDA, the
    Hub client) whose absence only means the CPU, or a model folder, is used instead.

    \b
    Examples:
      curate doctor
      curate doctor --json
      curate doctor --api-base http://127.0.0.1:8000/v1 --api-model Qwen/Qwen2.5-VL-7B-Instruct
    """
    from curate.stages.caption.doctor import caption_backends
    from curate.tagging.engine import doctor

    out = Out(as_json, quiet, verbose)
    lines = doctor() + caption_backends(api_base, api_model)
    if as_json:
        out.json({"checks": [{"check": c, "ok": ok, "optional": optional(c), "detail": d}
                             for c, ok, d in lines]})
        return
    for check, ok, detail in lines:
        shown = detail if ok or not optional(check) else f"not available: {detail}"
        out.line(f"{_label(check, ok)} {check}: {shown}")
