"""`--move-to DIR`: move the duplicates of a plain folder aside, never delete, and undo it.

Each file keeps its path relative to the scanned folder under DIR, and takes its sidecars
(tags, captions) with it. `DIR/dedupe.json` records every move before it happens, so a run
killed half-way can be undone or simply re-run; `curate dedupe --undo DIR/dedupe.json` puts
the files back. A target that already exists is never overwritten.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

from curate.atomic import TMP_PREFIX, atomic_write_text
from curate.errors import CurateError, OutputError, os_error_line
from curate.stages.dedupe.group import Group
from curate.stages.dedupe.scan import Item

UNDO_NAME = "dedupe.json"
LOCK_NAME = ".dedupe.lock"
# The record is written with ASCII escapes: a name that is not UTF-8 is kept exactly (its
# surrogate escapes as \udcXX, which json.loads gives back), so --undo restores that name.
SIDECAR_SUFFIXES = (".json", ".txt", ".caption", ".npz")


@dataclass(frozen=True)
class Move:
    source: str
    target: str
    kept: str  # the image kept in its place ("" for a sidecar)
    reason: str


def sidecars(root: Path, rel: str, staying_stems: set[str]) -> list[str]:
    """Sidecars of root/rel: `name.ext.json` etc., and `name.txt` unless another image keeps it."""
    stem = rel.rsplit(".", 1)[0]
    names = [rel + s for s in SIDECAR_SUFFIXES]
    if stem not in staying_stems:
        names += [stem + s for s in SIDECAR_SUFFIXES]
    return [n for n in names if (root / n).is_file()]


def plan_moves(root: Path, dest: Path, items: Sequence[Item], groups: Iterable[Group],
               reasons: dict[int, str]) -> list[Move]:
    """Every duplicate (and its sidecars) with where it goes."""
    moving = {m.index for g in groups for m in g.duplicates}
    staying = {items[i].shown.rsplit(".", 1)[0] for i in range(len(items)) if i not in moving}
    moves = []
    for index in sorted(moving, key=lambda i: items[i].shown):
        rel = items[index].shown
        kept = reasons[index]
        for name in (rel, *sidecars(root, rel, staying)):
            moves.append(Move(str(root / name), str(dest / name), kept if name == rel else "",
                              "duplicate" if name == rel else f"sidecar of {rel}"))
    return moves


@contextmanager
def move_lock(dest: Path) -> Iterator[None]:
    """Hold DEST for one `--move-to` run from scan to record. A second run waits for the first
    and then scans what is left, so it moves (and records) only what the first did not."""
    try:
        dest.mkdir(parents=True, exist_ok=True)
        fh = (dest / LOCK_NAME).open("a+")
    except OSError as exc:
        line = os_error_line(exc, dest)
        if line is None:
            raise
        raise OutputError(line) from exc
    with fh:
        try:
            import fcntl

            fcntl.flock(fh.fileno(), fcntl.LOCK_EX)  # released when the file closes
        except ImportError:  # Windows: no advisory locks; single-user use assumed
            pass
        yield


def read_record(path: Path) -> dict:  # type: ignore[type-arg]
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {"version": 1, "moves": []}
    except (OSError, ValueError) as exc:
        raise CurateError(f"{path}: not a readable dedupe undo record ({exc})") from exc
    if not isinstance(data, dict) or not isinstance(data.get("moves"), list):
        raise CurateError(f"{path}: not a dedupe undo record (no 'moves' list)")
    return data


def apply_moves(dest: Path, moves: Sequence[Move]) -> tuple[list[Move], list[tuple[str, str]]]:
    """Record, then perform, the moves; returns those done and (file, reason) for refusals."""
    if not moves:
        return [], []
    record_path = dest / UNDO_NAME
    record = read_record(record_path)
    seen = {m["source"] for m in record["moves"]}
    record["moves"] += [asdict(m) for m in moves if m.source not in seen]
    atomic_write_text(record_path, json.dumps(record, indent=1) + "\n")
    done, refused = [], []
    for m in moves:
        problem = move_file(Path(m.source), Path(m.target))
        if problem:
            refused.append((m.source, problem))
        else:
            done.append(m)
    if refused:  # the record lists the moves made: a refused one was listed only in case of a kill
        not_made = {m for m, _ in refused} - seen
        record["moves"] = [m for m in record["moves"] if m["source"] not in not_made]
        atomic_write_text(record_path, json.dumps(record, indent=1, ensure_ascii=False) + "\n")
    return done, refused


def move_file(src: Path, dst: Path) -> str | None:
    """Move src to dst without ever losing either; None on success, else why not."""
    if dst.exists():
        if src.exists() and _same_bytes(src, dst):  # a killed cross-device move: finish it
            src.unlink()
            return None
        return f"{dst} already exists: not overwritten; move or rename it and re-run"
    try:
        dst.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.rename(src, dst)  # atomic on one filesystem
        except OSError as exc:
            if exc.errno != errno.EXDEV:  # another filesystem: copy, then remove
                raise
            tmp = dst.with_name(TMP_PREFIX + dst.name)
            shutil.copy2(src, tmp)
            with open(tmp, "rb") as fh:
                os.fsync(fh.fileno())
            os.replace(tmp, dst)
            src.unlink()
    except OSError as exc:
        return f"cannot move to {dst} ({exc.strerror}): check permissions and free space"
    return None


def _same_bytes(a: Path, b: Path) -> bool:
    if a.stat().st_size != b.stat().st_size:
        return False
    with a.open("rb") as fa, b.open("rb") as fb:
        while chunk := fa.read(1 << 20):
            if chunk != fb.read(len(chunk)):
                return False
    return True


def undo_moves(record_path: Path, dry_run: bool = False) -> tuple[list[str], list[tuple[str, str]]]:
    """Move every recorded file back; returns the restored sources and (file, reason) refusals."""
    if not record_path.is_file():
        raise CurateError(f"{record_path}: no such undo record (it is DIR/{UNDO_NAME} of --move-to DIR)")
    record = read_record(record_path)
    restored, refused, remaining = [], [], []
    for m in reversed(record["moves"]):
        src, dst = Path(m["source"]), Path(m["target"])
        if src.exists() and not dst.exists():
            continue  # already back (or never moved: the run was killed before it)
        if not dst.exists():
            refused.append((str(dst), "no longer there: it was moved or deleted since"))
            continue
        problem = None if dry_run else move_file(dst, src)
        if problem:
            refused.append((str(dst), problem))
            remaining.append(m)
        else:
            restored.append(str(src))
    if not dry_run:
        record["moves"] = list(reversed(remaining))
        atomic_write_text(record_path, json.dumps(record, indent=1) + "\n")
    return restored, refused
