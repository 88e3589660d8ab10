"""What `curate run` remembers to skip unchanged stages: one key per stage in the manifest.

A stage's key is a sha256 over its settings and over the part of the workspace it reads and
writes (its "view": the image set, the images still in play, tags, captions, derived files, dataset-wide
settings, a hand-kept file such as keep.txt, or the dataset folder). After a stage runs, and
again when the whole run ends, the current key is stored; a later run skips the stage when
its key is the same, because then neither its inputs, its settings nor its outputs changed.
A hand edit (a caption, keep.txt, crops.csv) changes the view, so the stage runs again; a new
import changes the image set, and every stage after it sees the difference in turn.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from curate.manifest.images import STAGE_KEY_PREFIX, VIEW_QUERIES
from curate.workspace import Workspace

PREFIX = STAGE_KEY_PREFIX
PARTS = (*VIEW_QUERIES, "active")  # and "file:..." / "folder:..." parts


def _folder_digest(folder: Path, hasher: Any) -> None:
    """Names, sizes and modification times of every file under `folder` (not their bytes: a
    dataset of thousands of images is listed in milliseconds)."""
    if not folder.is_dir():
        hasher.update(b"absent")
        return
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames.sort()
        for name in sorted(filenames):
            path = Path(dirpath) / name
            st = path.lstat()
            # names are bytes on Linux: one that is not UTF-8 is hashed as its bytes
            hasher.update(os.fsencode(path.relative_to(folder)))
            hasher.update(f"|{st.st_size}|{st.st_mtime_ns}\n".encode())


def view_digest(ws: Workspace, parts: Iterable[str], files: dict[str, Path]) -> str:
    """sha256 over the named parts of the workspace; `files` maps "file:..."/"folder:..." parts
    to their paths."""
    hasher = hashlib.sha256()
    for part in parts:
        hasher.update(f"\n[{part}]\n".encode())
        if part in VIEW_QUERIES:
            for row in ws.manifest.view_rows(part):
                hasher.update(json.dumps(row, default=str).encode())
        elif part == "active":
            hasher.update(" ".join(sorted(r.sha256 for r in ws.active_records())).encode())
        elif part.startswith("file:"):
            path = files[part]
            hasher.update(path.read_bytes() if path.is_file() else b"absent")
        elif part.startswith("folder:"):
            _folder_digest(files[part], hasher)
        else:
            raise ValueError(f"unknown view part {part!r}")
    return hasher.hexdigest()


def stage_key(settings: Any, view: str) -> str:
    return hashlib.sha256(json.dumps([settings, view], sort_keys=True, default=str).encode()).hexdigest()


def stored_keys(ws: Workspace) -> dict[str, str]:
    return {k[len(PREFIX):]: str(v) for k, v in ws.manifest.settings().items() if k.startswith(PREFIX)}


def store_keys(ws: Workspace, keys: dict[str, str]) -> None:
    ws.manifest.set_settings({f"{PREFIX}{name}": key for name, key in keys.items()})


def forget(ws: Workspace, names: Iterable[str]) -> None:
    """Drop stored keys so the named stages run next time whatever they see."""
    store_keys(ws, dict.fromkeys(names, ""))
