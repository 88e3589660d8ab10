"""The user's own subject boxes: `crops.csv` with `file,x,y,w,h` rows (pixels of the original
image; a header row is optional, # starts a comment). They always win over detection.

`file` names an image as the user knows it, in any form curate prints it in: its path relative
to the folder (or, in a workspace, to the folder it was imported from), its full source path
(as `curate status`, `dedupe`, `layout` and the report show it, undecodable bytes as `\\xff`),
any of these relative to the current folder, its stored copy in the workspace (`images/ab/
SHA.png`, whole or relative), its file name when that is unique, or its sha256.
"""

from __future__ import annotations

import csv
import os
from collections.abc import Iterable
from pathlib import Path

from curate.errors import CurateError
from curate.paths import LIST_BYTES, display, read_user_text

CROPS_FILE = "crops.csv"
Box = tuple[float, float, float, float]


def read_crops(path: Path) -> dict[str, Box]:
    """Name -> box; a malformed row is an error naming its line."""
    try:
        text = read_user_text(path, LIST_BYTES)
    except (OSError, UnicodeDecodeError) as exc:
        raise CurateError(f"{path}: cannot read the crop list ({exc})") from exc
    boxes: dict[str, Box] = {}
    for number, line in enumerate(text.splitlines(), 1):
        if not line.split("#", 1)[0].strip():
            continue
        cells = [c.strip() for c in next(csv.reader([line]))]
        if not boxes and cells[1:] == ["x", "y", "w", "h"]:
            continue  # the header
        try:
            x, y, w, h = (float(c) for c in cells[1:])
        except ValueError:
            w = h = 0.0
            x = y = -1.0
        if w <= 0 or h <= 0 or x < 0 or y < 0:
            raise CurateError(f"{path}:{number}: expected file,x,y,w,h in pixels (w and h above 0), "
                              f"got {line.strip()!r}")
        boxes[_norm(cells[0])] = (x, y, w, h)
    return boxes


def match(boxes: dict[str, Box], names: Iterable[str]) -> tuple[str, Box] | None:
    """(the name used, its box) for the first of an image's names that the file lists."""
    found = listed(boxes, names)
    return (found[0], boxes[found[0]]) if found else None


def listed(boxes: dict[str, Box], names: Iterable[str]) -> list[str]:
    """Every line of the file that names this image (in any of its forms), first match first."""
    return list(dict.fromkeys(n for name in names for n in _forms(name) if n in boxes))


def _forms(name: str) -> Iterable[str]:
    """An image's name as a crops.csv line may write it: as is, as curate prints it, and an
    absolute path also relative to the current folder (what a user copies from a shell)."""
    plain = _norm(name)
    yield plain
    shown = display(plain)
    if shown != plain:
        yield shown
    if os.path.isabs(plain):
        yield _norm(os.path.relpath(plain))


def _norm(name: str) -> str:
    text = name.strip().replace("\\", "/")
    return os.path.normpath(text) if text else text
