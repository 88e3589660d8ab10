"""Paths from users' folders and files: what may be opened, shown, or written to.

Base layer: every walker, printer and writer of user-named paths uses these, so that a FIFO
is never opened (it blocks until a writer appears), a name with undecodable bytes never
raises when printed or stored, and a name taken from user data never leads out of its root.
"""

from __future__ import annotations

import errno
import os
import re
import stat
from pathlib import Path

from curate.errors import CurateError

LIST_BYTES = 256 << 20  # keep.txt, crops.csv: 1M lines of paths is ~100 MB; past that it is not a list
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


def first_line(exc: BaseException, limit: int = 300) -> str:
    """An exception's text for a one-line message: its first non-empty line, printable and
    capped (libraries' messages run to pages: torch's unpickling error, OpenCV's assertions),
    or its type's name when it says nothing."""
    line = next((line.strip() for line in str(exc).splitlines() if line.strip()), "")
    return printable(line, one_line=True)[:limit] if line else type(exc).__name__


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


class NotRead(OSError):
    """A file refused before reading: a FIFO, a folder, too big, or outside its root. Its text
    is the reason alone (callers put it in a one-line message beside the path)."""

    def __str__(self) -> str:
        return self.strerror or super().__str__()


def read_regular(path: str | os.PathLike[str], limit: int) -> bytes:
    """A regular file's bytes (symlinks followed), or its first limit + 1 when it is larger
    (callers compare with limit).

    Opened non-blocking and checked with fstat before reading, so a FIFO or device (even one
    swapped in after the caller's walk) is never waited on: OSError with the reason as its
    strerror instead. The read is sized from fstat: `read(limit + 1)` would allocate the whole
    limit (256 MiB for images) on every call. A file growing meanwhile still shows as larger
    than fstat said, never as a silent truncation below the limit.
    """
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    with open(fd, "rb") as fh:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            reason = special_file_reason(st.st_mode) or "a folder, not a file"
            raise NotRead(errno.EINVAL, reason, os.fspath(path))
        return fh.read(min(st.st_size, limit) + 1)


def read_user_text(path: Path, limit: int, root: Path | None = None) -> str:
    """A text file curate finds in a user's folder (keep.txt, crops.csv, a caption): UTF-8 with
    any BOM dropped. Never waits on a FIFO, never reads past `limit` bytes, and, with `root`,
    never follows a symlink out of it (a cloned dataset's `a.txt -> ~/.ssh/id_rsa`).
    Raises OSError (NotRead: the reason) or UnicodeDecodeError, as reading it would."""
    if root is not None and not is_inside(root, path):
        raise NotRead(errno.EACCES, f"a symlink to {display(os.path.realpath(path))}, outside "
                      f"{display(root)}: not read", os.fspath(path))
    data = read_regular(path, limit)
    if len(data) > limit:
        raise NotRead(errno.EFBIG, f"over {limit >> 20 or 1} MiB: not read", os.fspath(path))
    return data.decode("utf-8-sig")


def unreadable_caption(exc: OSError | UnicodeDecodeError, todo: str = "") -> str:
    """Why a caption file was not read, and what to do, for a skip line."""
    if isinstance(exc, UnicodeDecodeError):
        return f"caption is not UTF-8 ({exc.reason} at byte {exc.start}): re-save it as UTF-8 {todo}".rstrip()
    cause = exc.strerror if isinstance(exc, NotRead) else (exc.strerror or str(exc))
    return f"caption not read ({cause}): replace it with a plain text file {todo}".rstrip()


def regular_inside(root: str | os.PathLike[str], path: str | os.PathLike[str]) -> bool:
    """Whether path is a regular file (after its symlinks) that lies inside root: the test for
    a file curate copies or reads on the user's behalf (a sidecar, a caption)."""
    try:
        return stat.S_ISREG(os.stat(path).st_mode) and is_inside(root, path)
    except (OSError, ValueError):  # missing, broken link, loop, a NUL in the name
        return False


# `scheme://` at the start (a chained fsspec URL, `zip://*::s3://...`, starts so too); two
# letters at least, so that `C:\raw` and `C:/raw` stay Windows paths, and a folder named
# `a::b` stays a folder.
_URL = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]+://")


def is_url(source: object) -> bool:
    """True for a source an fsspec backend reads (s3://, https://, file://) rather than a path."""
    return isinstance(source, str) and bool(_URL.search(source))
