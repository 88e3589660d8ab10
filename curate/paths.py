"""Paths from users' folders and files: what may be opened, shown, or written to.

Base layer: every walker, printer and writer of user-named paths uses these, so that a FIFO
is never opened (it blocks until a writer appears), a name with undecodable bytes never
raises when printed or stored, and a name taken from user data never leads out of its root.
"""

from __future__ import annotations

import os
import re
import stat
from pathlib import Path

from curate.errors import CurateError

_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")  # all but tab and newline
_CONTROL_ALL = re.compile(r"[\x00-\x1f\x7f-\x9f]")


def display(path: str | os.PathLike[str]) -> str:
    """A path as text that can be stored and printed, even with undecodable bytes in it.

    Linux names are bytes: a name that is not UTF-8 reaches Python as surrogate escapes,
    which SQLite, JSON and terminals refuse. `\\xff` is shown instead.
    """
    return printable(os.fsencode(path).decode("utf-8", "backslashreplace"), one_line=True)


def printable(text: str, *, one_line: bool = False) -> str:
    """User data (metadata, names, tags) made safe to print: control characters escaped.

    A file's metadata can hold ANSI escapes that recolour or rewrite the user's terminal;
    surrogate escapes from undecodable bytes would make print() raise. `one_line` escapes
    tabs and newlines too (a file name, a tag: anything shown inside a one-line message).
    """
    control = _CONTROL_ALL if one_line else _CONTROL
    if control.search(text):
        text = control.sub(lambda m: f"\\x{ord(m.group()):02x}", text)
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        text = text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    return text


def special_file_reason(mode: int) -> str | None:
    """Why a file of this st_mode is never opened, or None for a regular file or folder."""
    if stat.S_ISREG(mode) or stat.S_ISDIR(mode):
        return None
    if stat.S_ISFIFO(mode):
        kind = "a named pipe (FIFO)"
    elif stat.S_ISSOCK(mode):
        kind = "a socket"
    elif stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        kind = "a device file"
    else:
        kind = "not a regular file"
    return f"{kind}, not a file: skipped without opening it (reading it could wait forever)"


def is_inside(root: str | os.PathLike[str], path: str | os.PathLike[str]) -> bool:
    """Whether path, with every symlink resolved, is root or lies below it."""
    real_root = os.path.realpath(root)
    real = os.path.realpath(path)
    return real == real_root or real.startswith(real_root.rstrip(os.sep) + os.sep)


def check_name(name: str, what: str) -> None:
    """A name from user data that becomes one path component (a folder, a file stem): refused,
    with the reason, when empty, `.`/`..`, absolute, or holding a NUL or a path separator."""
    shown = printable(repr(name))
    if not name or name in {".", ".."}:
        raise CurateError(f"{what} {shown} cannot name a folder or file: give it a plain name")
    if "\x00" in name or "/" in name or "\\" in name or os.path.isabs(name):
        raise CurateError(f"{what} {shown} holds a path separator or NUL: give it a plain name "
                          "(it becomes a folder or file name)")


def child_path(root: Path, name: str, what: str) -> Path:
    """root / name for a name taken from user data (a concept, an output name, a class token).

    Refused, with the reason, when the name is not a plain name (see `check_name`) or would
    lead out of root through a symlink: such a name must never decide where curate writes.
    """
    check_name(name, what)
    path = root / name
    if not is_inside(root, path):
        raise CurateError(f"{what} {printable(repr(name))} leads outside {display(root)}: "
                          "give it a plain name")
    return path


def read_regular(path: str | os.PathLike[str], limit: int) -> bytes:
    """A regular file's bytes (symlinks followed), at most limit + 1 of them.

    Opened non-blocking and checked with fstat before reading, so a FIFO or device (even one
    swapped in after the caller's stat) is never waited on: OSError with the reason instead.
    """
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    try:
        st = os.fstat(fd)
        reason = special_file_reason(st.st_mode)
        if reason is not None or not stat.S_ISREG(st.st_mode):
            raise OSError(reason or "a folder, not a file")
        os.set_blocking(fd, True)
        with os.fdopen(fd, "rb", closefd=False) as fh:
            return fh.read(min(st.st_size, limit) + 1)
    finally:
        os.close(fd)
