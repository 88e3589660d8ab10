"""What every command shares: output modes, one-line errors, progress bars, summaries."""

from __future__ import annotations

import json
import os
import re
import sqlite3
import sys
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import click

from curate.errors import CurateError, os_error_line
from curate.paths import printable

F = TypeVar("F", bound=Callable[..., Any])
LIST_LIMIT = 50
# json.dumps(ensure_ascii=False) escapes C0 controls but passes C1 ones (\x9b is a terminal's CSI)
# and lone surrogates (undecodable bytes) through; they only occur inside strings, as \uXXXX
_JSON_UNSAFE = re.compile(r"[\x7f-\x9f\ud800-\udfff]")


def _set_debug(ctx: click.Context, _param: click.Parameter, value: bool) -> bool:
    if value:
        ctx.meta["curate.debug"] = True
    return value


def comma_list(value: str | None) -> tuple[str, ...] | None:
    """A `--flag a,b,c` value as a tuple (None when the flag was not given, so config wins)."""
    return None if value is None else tuple(t.strip() for t in value.split(",") if t.strip())


def output_options(fn: F) -> F:
    """--json, -q, -v and --debug, the same on every command."""
    fn = click.option("--debug", is_flag=True, expose_value=False, callback=_set_debug,
                      is_eager=True, help="Show Python tracebacks for errors.")(fn)
    fn = click.option("-v", "--verbose", is_flag=True, help="List every file, not only problems.")(fn)
    fn = click.option("-q", "--quiet", is_flag=True, help="Print only problems and one summary line.")(fn)
    fn = click.option("--json", "as_json", is_flag=True, help="Print a JSON result for scripts.")(fn)
    return fn


def config_options(fn: F) -> F:
    fn = click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE",
                      help="Set any curate.toml option for this run, e.g. --set import.workers=4.")(fn)
    fn = click.option("--config", "config_file", type=click.Path(dir_okay=False, path_type=Path),
                      help="Options file (default: WORKSPACE/curate.toml).")(fn)
    return fn


@contextmanager
def handle_errors(ctx: click.Context) -> Iterator[None]:
    """Known problems become one line on stderr; a traceback only with --debug."""
    try:
        yield
    except CurateError as exc:
        if ctx.meta.get("curate.debug"):
            traceback.print_exc()
        click.echo(f"error: {printable(str(exc))}", err=True)
        ctx.exit(2)
    except BrokenPipeError:
        # the reader went away (`curate ... | head`): nothing left to say, and no traceback
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        ctx.exit(1)
    except KeyboardInterrupt:
        click.echo("interrupted: re-run the same command to resume where it stopped (curate train: "
                   "add --resume OUT/NAME-...-state, the newest state folder)", err=True)
        ctx.exit(130)
    except (click.exceptions.Exit, click.ClickException, click.Abort):
        raise
    except Exception as exc:
        if ctx.meta.get("curate.debug"):
            raise
        if (line := known_error_line(exc)) is not None:
            click.echo(f"error: {line}", err=True)
            ctx.exit(2)
        click.echo(f"error: internal error ({type(exc).__name__}: {exc}); re-run with --debug "
                   "and report the traceback", err=True)
        ctx.exit(1)


def known_error_line(exc: BaseException) -> str | None:
    """A full disk, an unwritable folder or a locked/full/read-only manifest that no library
    code turned into a CurateError: still one line naming the path, the cause, what to do."""
    if isinstance(exc, OSError):
        return os_error_line(exc)
    if isinstance(exc, sqlite3.OperationalError):
        from curate.manifest import OPEN_PATHS, sqlite_error_line

        return sqlite_error_line(exc, OPEN_PATHS[-1] if OPEN_PATHS else None)
    return None


@dataclass
class Out:
    """Prints for people (rich tables) or for scripts (--json); progress only on a terminal."""

    as_json: bool = False
    quiet: bool = False
    verbose: bool = False

    def console(self) -> Any:
        from rich.console import Console

        return Console(highlight=False, soft_wrap=True)

    def json(self, data: dict[str, Any]) -> None:
        text = json.dumps(data, indent=2, ensure_ascii=False, default=str)
        click.echo(_JSON_UNSAFE.sub(lambda m: f"\\u{ord(m.group()):04x}", text))

    def line(self, text: str) -> None:
        if not self.as_json:
            click.echo(printable(text))  # lines quote user data: names, tags, metadata

    def problems(self, label: str, items: list[tuple[str, str]], *, always: bool = True) -> None:
        if self.as_json or not items or not (always or self.verbose):
            return
        shown = items if self.verbose else items[:LIST_LIMIT]
        for subject, reason in shown:
            click.echo(printable(f"{label}: {subject}: {reason}"))
        if len(items) > len(shown):
            click.echo(f"{label}: ... and {len(items) - len(shown)} more (-v lists all)")

    def table(self, title: str, rows: list[tuple[Any, ...]], headers: tuple[str, ...]) -> None:
        if self.as_json or self.quiet:
            return
        from rich.markup import escape
        from rich.table import Table

        def shown(cell: Any) -> str:  # user data: no terminal escapes, no rich markup ("[/x]" raises)
            return escape(printable(str(cell)))

        table = Table(title=shown(title), title_justify="left")
        for i, header in enumerate(headers):
            # fold, not "…": a 64-digit model hash or a path is read whole, over two lines if need be
            table.add_column(header, justify="right" if i else "left", overflow="fold")
        for row in rows:
            table.add_row(*(shown(cell) for cell in row))
        self.console().print(table)

    def listing(self, lines: list[str], what: str = "") -> None:
        """Lines for people: the first LIST_LIMIT unless -v, then how many more there are."""
        shown = lines if self.verbose else lines[:LIST_LIMIT]
        for line in shown:
            self.line(line)
        if len(lines) > len(shown):
            noun = f" {what}" if what else ""
            self.line(f"... and {len(lines) - len(shown)} more{noun} (-v lists all)")

    def summary(self, title: str, counts: dict[str, int], noun: str = "count") -> None:
        """The end-of-run table; with -q, one line of the same counts."""
        self.table(title, list(counts.items()), ("", noun))
        if self.quiet and not self.as_json:
            click.echo(", ".join(f"{k} {v}" for k, v in counts.items()))

    @contextmanager
    def progress(self, description: str) -> Iterator[Callable[..., None]]:
        """A progress callback `(done, total, status=None)`; a rich bar when stderr is a terminal,
        `status` (e.g. the loss) shown after the description."""
        if self.as_json or self.quiet or not sys.stderr.isatty():
            yield lambda done, total, status=None: None
            return
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeRemainingColumn

        bar = Progress("[progress.description]{task.description}", BarColumn(),
                       MofNCompleteColumn(), TimeRemainingColumn(),
                       console=Console(stderr=True), transient=True)
        task = bar.add_task(description, total=None)

        def update(done: int, total: int, status: str | None = None) -> None:
            shown = f"{description} {status}" if status else description
            bar.update(task, completed=done, total=total, description=shown)

        with bar:
            yield update
