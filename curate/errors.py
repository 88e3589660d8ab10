"""Errors that reach the user as one clear line (the CLI prints them without a traceback)."""

import errno
import os


class CurateError(Exception):
    """A problem the user can fix; the message says what happened and what to do."""


class WorkspaceBusy(CurateError):
    """Another curate process holds the workspace lock."""


# errno -> what the user can do about it; any other OSError is not a known problem here.
_OS_ADVICE = {
    "ENOSPC": "the disk is full: free some space (or choose another folder) and re-run",
    "EDQUOT": "the disk quota is used up: free some space (or choose another folder) and re-run",
    "EROFS": "the folder is on a read-only file system: choose a writable folder",
    "EACCES": "no permission to write there: choose a writable folder or fix its permissions",
    "EPERM": "the operation is not permitted there: choose a writable folder or fix its permissions",
}


def os_error_line(exc: OSError, path: object = None) -> str | None:
    """`PATH: cause (strerror): what to do` for a full disk or an unwritable place, else None.

    `path` names the file curate meant to write when the exception does not (or names a temp
    file beside it). Shared by the atomic writers and the CLI's last-resort error mapping.
    """
    name = errno.errorcode.get(exc.errno or 0, "")
    if name not in _OS_ADVICE:
        return None
    # a copy or link names its source first and its destination second: the destination is full
    target = path if path is not None else (exc.filename2 or exc.filename or "")
    shown = os.fsencode(target).decode("utf-8", "backslashreplace") if target != "" else "(unknown path)"
    cause = exc.strerror or name
    return f"{shown}: cannot write ({cause}): {_OS_ADVICE[name]}"


class OutputError(CurateError):
    """Writing an output failed for a reason the user can fix (full disk, read-only folder)."""
