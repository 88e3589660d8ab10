"""Copies into an `--out` folder: an image (or new bytes in its place) with its caption
sidecars, at the same relative path. The source folder is never written to."""

from __future__ import annotations

from pathlib import Path

from curate.atomic import atomic_write_bytes
from curate.errors import CurateError
from curate.paths import regular_inside

# Kohya captions (`name.txt`, `name.caption`) and gallery-dl's `name.jpg.txt` / `.json`.
STEM_SIDECARS = (".txt", ".caption")
NAME_SIDECARS = (".txt", ".json")


def check_out(source: Path, out: Path) -> Path:
    """`out` as an absolute path, refused when it is the source folder or inside it."""
    source, out = Path(source).absolute(), Path(out).absolute()
    if out == source or out.is_relative_to(source):
        raise CurateError(f"--out {out} is inside {source}: write to another folder, the source "
                          "folder is never written to")
    if out.exists() and not out.is_dir():
        raise CurateError(f"--out {out} exists and is not a folder")
    return out


def sidecars(root: Path, relpath: str) -> list[str]:
    """The sidecar files of an image that exist, relative to root (posix): regular files inside
    root only, so a `name.txt` linked to /etc/passwd or a FIFO is never copied into --out."""
    path = Path(relpath)
    candidates = [path.with_suffix(ext) for ext in STEM_SIDECARS]
    candidates += [path.with_name(path.name + ext) for ext in NAME_SIDECARS]
    return [c.as_posix() for c in candidates if regular_inside(root, root / c)]


def copy_image(root: Path, relpath: str, out: Path, data: bytes | None = None,
               name: str | None = None) -> list[str]:
    """Write the image (its own bytes, or `data`, under `name` when given) and its sidecars
    below `out`; returns the paths written, relative to out."""
    target = Path(relpath).with_name(name) if name else Path(relpath)
    atomic_write_bytes(out / target, data if data is not None else (root / relpath).read_bytes())
    written = [target.as_posix()]
    original = Path(relpath).name
    for side in sidecars(root, relpath):
        side_name = Path(side).name
        if side_name.startswith(original + "."):  # gallery-dl's name.jpg.txt follows the name
            side_target = target.with_name(target.name + side_name[len(original):])
        else:  # name.txt follows the stem
            side_target = target.with_suffix(Path(side).suffix)
        atomic_write_bytes(out / side_target, (root / side).read_bytes())
        written.append(side_target.as_posix())
    return written
