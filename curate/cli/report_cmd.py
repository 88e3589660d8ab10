from __future__ import annotations

import webbrowser
from pathlib import Path

import click

from curate.cli._common import Out, output_options


@click.command("report")
@click.argument("workspace", type=click.Path(file_okay=False, path_type=Path))
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Folder for index.html and thumbs/ (default WORKSPACE/report).")
@click.option("--open", "open_browser", is_flag=True, help="Open the page in a web browser.")
@output_options
def command(workspace: Path, out: Path | None, open_browser: bool, as_json: bool, quiet: bool,
            verbose: bool) -> None:
    """Write a static HTML review of WORKSPACE: one page that opens from disk.

    \b
    Every kept image with its caption (tags coloured by category, tags a rule removed struck
    through), duplicate clusters side by side, rejected and skipped files with their reasons,
    crops drawn over the originals, the bucket histogram, the tag frequency chart and the
    training plan `curate layout` would follow. Thumbnails are kept in OUT/thumbs/ by content
    hash, so a re-run only makes those of new images.

    \b
    Examples:
      curate report ws                    # ws/report/index.html
      curate report ws --out review --open
      curate report ws --json | jq .counts
    """
    from curate.report import write_report

    o = Out(as_json, quiet, verbose)
    result = write_report(workspace, out)
    if open_browser:
        webbrowser.open(result.index.as_uri())
    if as_json:
        o.json(result.as_dict())
        return
    o.problems("warning", [(p, "cannot read the image: no thumbnail") for p in result.unreadable])
    counts = result.data.counts
    o.line(", ".join(f"{name.replace('_', ' ')} {n}" for name, n in counts.items()))
    if not quiet:
        o.line(f"thumbnails made {result.thumbs_made}, reused {result.thumbs_reused}")
    o.line(f"wrote {result.index}")
