from __future__ import annotations

from collections.abc import Callable
from functools import partial
from pathlib import Path

import click

from curate.cli._common import LIST_LIMIT, Out, output_options
from curate.paths import printable

TARGET = click.argument("target", type=click.Path(path_type=Path))
EXT = click.option("--caption-ext", default=".txt", show_default=True, help="Caption files in plain folders.")
DRY = click.option("--dry-run", is_flag=True, help="Show the diff; change nothing.")


@click.group("captions")
def command() -> None:
    """Edit every caption of a workspace or dataset folder at once.

    \b
    Examples:
      curate captions trigger ws sks --class-token woman
      curate captions replace ./dataset/10_sks "brown hair" "blonde hair" --dry-run
      curate captions stats ws --tag "hat"
    """


def _report(out: Out, run) -> None:  # type: ignore[no-untyped-def]
    if out.as_json:
        out.json(run.as_dict())
        return
    out.problems("skipped", run.skipped)
    for line in run.diff if out.verbose else run.diff[: LIST_LIMIT * 4]:
        out.line(line)
    if len(run.diff) > LIST_LIMIT * 4 and not out.verbose:
        out.line(f"... {len(run.diff) - LIST_LIMIT * 4} more lines (-v lists all)")
    for key, value in run.settings.items():
        if value is not None:  # an unset class token or separator is not a setting to show
            out.line(f"{key} = {printable(str(value))}")
    verb = "would change" if run.dry_run else "changed"
    out.line(f"{verb} {len(run.changed)} of {run.images} captions in {run.target}")


def _edit(target: Path, edit: Callable, caption_ext: str, dry_run: bool, out: Out) -> None:  # type: ignore[type-arg]
    from curate.stages.captions.edit import apply_edit

    _report(out, apply_edit(target, edit, caption_ext=caption_ext, dry_run=dry_run))


@command.command("trigger")
@TARGET
@click.argument("word")
@click.option("--class-token", default=None, help="Class token placed right after the trigger word.")
@click.option("--separator", is_flag=True,
              help="Plain folders: write 'trigger ||| tags' for sd-scripts' keep_tokens_separator.")
@EXT
@DRY
@output_options
def trigger_cmd(target: Path, word: str, class_token: str | None, separator: bool, caption_ext: str,
                dry_run: bool, as_json: bool, quiet: bool, verbose: bool) -> None:
    """Put the trigger WORD first, exactly once, in every caption; record keep_tokens.

    \b
    Examples:
      curate captions trigger ws sks
      curate captions trigger ./dataset/10_sks "sks" --class-token woman --separator
    """
    from curate.stages.captions.edit import set_trigger

    _report(Out(as_json, quiet, verbose), set_trigger(target, word, class_token, separator=separator,
                                                      caption_ext=caption_ext, dry_run=dry_run))


@command.command("add")
@TARGET
@click.argument("tag")
@click.option("--position", default="end", help="start, end or an index (default end).")
@EXT
@DRY
@output_options
def add_cmd(target: Path, tag: str, position: str, caption_ext: str, dry_run: bool, as_json: bool,
            quiet: bool, verbose: bool) -> None:
    """Add TAG to every caption that lacks it.

    \b
    Example:
      curate captions add ws "outdoors" --position start
    """
    from curate.tagging.captions import add_tag

    where: str | int = int(position) if position.lstrip("-").isdigit() else position
    _edit(target, partial(add_tag, tag=tag, position=where), caption_ext, dry_run,
          Out(as_json, quiet, verbose))


@command.command("remove")
@TARGET
@click.argument("tags", nargs=-1, required=True)
@EXT
@DRY
@output_options
def remove_cmd(target: Path, tags: tuple[str, ...], caption_ext: str, dry_run: bool, as_json: bool,
               quiet: bool, verbose: bool) -> None:
    """Remove TAGS from every caption.

    \b
    Example:
      curate captions remove ws "simple background" "white background"
    """
    from curate.tagging.captions import remove_tags

    _edit(target, partial(remove_tags, tags=tags), caption_ext, dry_run, Out(as_json, quiet, verbose))


@command.command("replace")
@TARGET
@click.argument("old")
@click.argument("new")
@EXT
@DRY
@output_options
def replace_cmd(target: Path, old: str, new: str, caption_ext: str, dry_run: bool, as_json: bool,
                quiet: bool, verbose: bool) -> None:
    """Replace (rename) tag OLD by NEW everywhere; merged where NEW is already there.

    \b
    Example:
      curate captions replace ws "brown hair" "blonde hair" --dry-run
    """
    from curate.tagging.captions import replace_tag

    _edit(target, partial(replace_tag, old=old, new=new), caption_ext, dry_run, Out(as_json, quiet, verbose))


@command.command("regex")
@TARGET
@click.argument("pattern")
@click.argument("replacement")
@EXT
@DRY
@output_options
def regex_cmd(target: Path, pattern: str, replacement: str, caption_ext: str, dry_run: bool, as_json: bool,
              quiet: bool, verbose: bool) -> None:
    """re.sub(PATTERN, REPLACEMENT) on every tag (anchor with ^...$ for whole tags).

    \b
    Example:
      curate captions regex ws "^(.*) \\(cosplay\\)$" "\\1" --dry-run
    """
    from curate.tagging.captions import regex_replace

    _edit(target, partial(regex_replace, pattern=pattern, repl=replacement), caption_ext, dry_run,
          Out(as_json, quiet, verbose))


@command.command("sort")
@TARGET
@click.option("--by", type=click.Choice(["confidence", "alpha", "frequency"]), default="confidence",
              show_default=True)
@click.option("--keep-first", type=int, default=0, help="Leave the first N tags (trigger...) in place.")
@EXT
@DRY
@output_options
def sort_cmd(target: Path, by: str, keep_first: int, caption_ext: str, dry_run: bool, as_json: bool,
             quiet: bool, verbose: bool) -> None:
    """Sort the tags of every caption.

    \b
    Example:
      curate captions sort ws --by frequency --keep-first 1
    """
    from curate.tagging.captions import sort_tags

    _edit(target, partial(sort_tags, by=by, keep_first=keep_first), caption_ext, dry_run,
          Out(as_json, quiet, verbose))


@command.command("dedupe")
@TARGET
@EXT
@DRY
@output_options
def dedupe_cmd(target: Path, caption_ext: str, dry_run: bool, as_json: bool, quiet: bool,
               verbose: bool) -> None:
    """Remove repeated tags within each caption.

    \b
    Example:
      curate captions dedupe ./dataset/10_sks
    """
    from curate.tagging.captions import dedupe_tags

    _edit(target, dedupe_tags, caption_ext, dry_run, Out(as_json, quiet, verbose))


@command.command("stats")
@TARGET
@click.option("--tag", "tags", multiple=True, help="Show what co-occurs with this tag (repeatable).")
@click.option("--top", type=int, default=30, show_default=True, help="Rows in the frequency table.")
@EXT
@output_options
def stats_cmd(target: Path, tags: tuple[str, ...], top: int, caption_ext: str, as_json: bool, quiet: bool,
              verbose: bool) -> None:
    """Tag frequencies: images per tag and share, and co-occurrence of chosen tags.

    \b
    Example:
      curate captions stats ws --tag "hat" --top 50
    """
    from curate.stages.captions.store import load
    from curate.tagging.captions import stats

    out = Out(as_json, quiet, verbose)
    found = stats(load(target, caption_ext).tags)
    rows = found.frequency if verbose else found.frequency[:top]
    together = {t: found.cooccurrence(t, limit=top) for t in tags}
    if as_json:
        out.json({"images": found.images, "tags": [r.__dict__ for r in found.frequency],
                  "cooccurrence": {t: [{"tag": o, "images": n} for o, n in v] for t, v in together.items()}})
        return
    out.table(f"{found.images} captions: tags by images", [(r.tag, r.images, f"{r.share:.0%}") for r in rows],
              ("tag", "images", "share"))
    for tag, pairs in together.items():
        out.table(f"with '{tag}' ({found.count(tag)} images)", pairs, ("tag", "images"))
