"""Atomic file writes: a reader (or a re-run after SIGKILL) sees the old file or the new one,
never a half-written one. Temp files carry a recognisable prefix so a workspace can sweep the
leftovers of a killed run."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

from curate.errors import OutputError, os_error_line

TMP_PREFIX = ".curate-tmp-"
# mkstemp makes 0600 files; a dataset, caption or LoRA must get the permissions any other
# program's file would (0666 less the umask), or a user's other tools and accounts cannot
# read it. Read once: os.umask can only be read by setting it.
UMASK = os.umask(0o022)
os.umask(UMASK)
FILE_MODE = 0o666 & ~UMASK


def atomic_write_bytes(path: Path, data: bytes, *, durable: bool = True) -> None:
    """Write `data` to `path` via a temp file in the same folder and an atomic rename.

    `durable` fsyncs the data before the rename, so a power cut cannot leave a renamed but
    empty file (SIGKILL alone cannot, the page cache survives the process).
    A full disk or an unwritable folder raises OutputError naming `path` (the temp file gone).
    """
    tmp: str | None = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=TMP_PREFIX, dir=path.parent)
        os.fchmod(fd, FILE_MODE)
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            if durable:
                fh.flush()
                os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)
        line = os_error_line(exc, path) if isinstance(exc, OSError) else None
        if line is not None:
            raise OutputError(line) from exc
        raise


def atomic_write_text(path: Path, text: str, *, durable: bool = True) -> None:
    atomic_write_bytes(path, text.encode("utf-8"), durable=durable)


SETTLE_NS = 2_000_000_000  # see sweep_temp_files


def sweep_temp_files(folder: Path, record: Path | None = None) -> int:
    """Delete temp files left by a killed writer below `folder`; returns how many.

    With `record` (a JSON file this function keeps), a folder whose mtime is the one the last
    sweep saw is not listed again: making, renaming or deleting a file in a folder changes its
    mtime, so an unchanged folder holds no new temp file. A workspace's images/ holds every
    stored image, and listing them all on every run cost ~0.5 s at 1M images. A folder changed
    within SETTLE_NS of the record being written is listed again (a coarse mtime clock, as on
    some network file systems, could hide a later change in the same tick).
    """
    seen = _read_record(record) if record is not None else {}
    stamp = record.stat().st_mtime_ns if record is not None and seen else 0  # the file system's clock
    removed, now, stack = 0, {}, [""]
    while stack:
        rel = stack.pop()
        try:
            mtime = os.stat(os.path.join(folder, rel)).st_mtime_ns
        except OSError:  # gone, or not ours to read: nothing to sweep there
            continue
        known = seen.get(rel)
        if known is not None and known[0] == mtime and mtime < stamp - SETTLE_NS:
            children = known[1]
        else:
            children, gone = _list(folder, rel)
            removed += gone
        now[rel] = (mtime, children)
        stack += [os.path.join(rel, name) for name in children]
    if record is not None:
        atomic_write_text(record, json.dumps({"version": 1, "folders": now}), durable=False)
    return removed


def _list(folder: Path, rel: str) -> tuple[list[str], int]:
    """One folder's subfolders (not links), after deleting its temp files."""
    children, removed = [], 0
    try:
        with os.scandir(os.path.join(folder, rel)) as entries:
            for entry in entries:
                if entry.name.startswith(TMP_PREFIX):
                    Path(entry.path).unlink(missing_ok=True)
                    removed += 1
                elif entry.is_dir(follow_symlinks=False):
                    children.append(entry.name)
    except OSError:
        pass
    return children, removed


def _read_record(path: Path) -> dict[str, tuple[int, list[str]]]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        return {str(rel): (int(v[0]), [str(c) for c in v[1]]) for rel, v in data["folders"].items()}
    except (OSError, ValueError, KeyError, TypeError, IndexError, AttributeError):
        return {}  # none yet, or damaged: every folder is listed
