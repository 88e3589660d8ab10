from __future__ import annotations

import click

from curate.cli._common import Out, output_options


@click.command("doctor")
@output_options
def command(as_json: bool, quiet: bool, verbose: bool) -> None:
    """Show what works on this machine: onnxruntime, its providers, CUDA, the Hub client.

    \b
    Examples:
      curate doctor
      curate doctor --json
    """
    from tagging.engine import doctor

    out = Out(as_json, quiet, verbose)
    lines = doctor()
    if as_json:
        out.json({"checks": [{"check": c, "ok": ok, "detail": d} for c, ok, d in lines]})
        return
    for check, ok, detail in lines:
        out.line(f"{'ok  ' if ok else 'FAIL'} {check}: {detail}")
