"""Captions edited by hand in a laid-out dataset: found, kept, and taken back into the workspace.

`curate layout` records in its marker file which caption it wrote for which image. When the
file on disk no longer says that, someone edited it; the next layout keeps the edit instead of
overwriting it, and stores it as the image's user caption, which wins over every stage, so
every later layout carries it. If the workspace's caption changed too since that layout (a new tag filter, a
trigger word), the two edits conflict: the hand edit still wins, and the result says what
curate would have written so nothing is lost silently.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from pathlib import Path

from curate.kohya import CAPTION_LIMIT
from curate.manifest import USER_CAPTION
from curate.paths import read_user_text
from curate.stages.layout.write import MARKER, Subset
from curate.workspace import Workspace


@dataclass(frozen=True)
class HandEdit:
    image: str  # sha256 of the workspace image
    file: str  # the caption file, relative to the dataset
    text: str  # what the file says now
    written: str  # what the last layout wrote there


def find_hand_edits(out: Path) -> dict[str, HandEdit]:
    """Caption files of the dataset at `out` that differ from what the last layout wrote."""
    try:
        marker = json.loads((out / MARKER).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    edits = {}
    for rel, info in (marker.get("captions") or {}).items():
        try:
            lines = read_user_text(out / rel, CAPTION_LIMIT, out).splitlines()
        except (OSError, UnicodeDecodeError):
            continue  # deleted or unreadable: layout writes it afresh, `curate check` reports bad files
        text = lines[0].strip() if lines else ""
        if text and text != info["text"]:
            edits[info["image"]] = HandEdit(info["image"], rel, text, info["text"])
    return edits


def keep_hand_edits(subsets: list[Subset], edits: dict[str, HandEdit]) -> tuple[list[Subset], list[HandEdit],
                                                                               list[tuple[HandEdit, str]]]:
    """Subsets with hand-edited captions in place; the edits taken, and the conflicting ones with
    the caption curate would have written."""
    kept: list[HandEdit] = []
    conflicts: list[tuple[HandEdit, str]] = []
    out = []
    for subset in subsets:
        entries = []
        for entry in subset.entries:
            edit = edits.get(entry.image or "")
            if edit is not None:
                kept.append(edit)
                if entry.caption not in (edit.written, edit.text):
                    conflicts.append((edit, entry.caption))
                entry = replace(entry, caption=edit.text)
            entries.append(entry)
        out.append(replace(subset, entries=tuple(entries)))
    return out, kept, conflicts


def adopt(ws: Workspace, edits: list[HandEdit]) -> None:
    """Store hand edits as the images' user captions (they win over every stage and survive
    re-runs of tag and tags filter), each with a decision naming the file."""
    if not edits:
        return
    m = ws.manifest
    with m.transaction():
        for e in edits:
            m.set_user_caption(e.image, USER_CAPTION, e.text)
        m.add_decisions((e.image, e.file, "layout", "caption-kept",
                         f"edited by hand in the dataset: {e.text}") for e in edits)
