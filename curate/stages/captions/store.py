"""Captions of a dataset as `tagging` works on them, loaded from and saved to a target.

A workspace's caption is its working caption (`captions.source = 'curate'`, else what the
image was imported with), with the tagger's confidence for each tag where one is stored, so
confidence rules work. A plain folder's captions are the files beside the images (`.txt` by
default); their tags have no confidences (1.0). Saving writes only captions that changed, each
file atomically, and in a workspace records every removed tag as a decision with its rule.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from curate.atomic import atomic_write_text
from curate.errors import CurateError
from curate.folder import walk_images
from curate.kohya import CAPTION_LIMIT
from curate.manifest import now
from curate.paths import read_user_text, unreadable_caption
from curate.stages.ingest.sources import display
from curate.workspace import Workspace, is_workspace
from tagging.captions import format_caption, parse_caption
from tagging.tags import ScoredTag, tag_key

WORKING = "curate"


@dataclass
class CaptionSet:
    """Image id -> tags; `shown` maps ids to what the user knows (paths)."""

    root: Path
    kind: str  # "workspace" or "folder"
    caption_ext: str = ".txt"
    tags: dict[str, list[ScoredTag]] = field(default_factory=dict)
    shown: dict[str, str] = field(default_factory=dict)
    skipped: list[tuple[str, str]] = field(default_factory=list)

    def text(self, image: str) -> str:
        return format_caption([t.name for t in self.tags[image]])


def load(target: Path, caption_ext: str = ".txt") -> CaptionSet:
    target = Path(target).absolute()
    if not target.is_dir():
        what = "does not exist" if not target.exists() else "is not a folder"
        raise CurateError(f"{target} {what}: name a dataset folder or a workspace")
    if is_workspace(target):
        with Workspace.open(target) as ws:
            return _load_workspace(ws)
    return _load_folder(target, caption_ext)


def _load_workspace(ws: Workspace) -> CaptionSet:
    out = CaptionSet(ws.root, "workspace")
    confidences: dict[tuple[str, str], float] = {}
    for r in ws.manifest.rows("SELECT image_sha256, tag, confidence FROM tags WHERE source LIKE 'tagger:%'"):
        key = (r[0], tag_key(r[1]))
        confidences[key] = max(confidences.get(key, 0.0), r[2])
    for record in ws.active_records():  # uncaptioned images too: `captions add`/trigger reach them
        out.shown[record.sha256] = record.origins[0].source_path if record.origins else str(record.path)
        out.tags[record.sha256] = [
            ScoredTag(name, _category(record, name), confidences.get((record.sha256, tag_key(name)), 1.0))
            for name in parse_caption(record.caption or "")]
    return out


def _category(record, name: str) -> str:  # type: ignore[no-untyped-def]
    key = tag_key(name)
    return next((t.category for t in record.tags if tag_key(t.name) == key), "general")


def caption_file(root: Path, rel: str, ext: str) -> Path:
    return root / (rel.rsplit(".", 1)[0] + ext)


def _load_folder(root: Path, ext: str) -> CaptionSet:
    out = CaptionSet(root, "folder", ext)
    listing = walk_images(root)
    out.skipped += listing.skipped
    for rel in listing.relpaths:
        path = caption_file(root, rel, ext)
        out.shown[rel] = rel
        if not os.path.lexists(path):
            out.tags[rel] = []  # no caption yet: edits such as the trigger word give it one
            continue
        try:
            text = read_user_text(path, CAPTION_LIMIT, root)
        except (OSError, UnicodeDecodeError) as exc:
            # a FIFO, a link out of the folder, a huge or non-UTF-8 file: never edited over
            out.skipped.append((display(path), unreadable_caption(exc)))
            del out.shown[rel]
            continue
        first = text.splitlines()[0] if text.strip() else ""  # sd-scripts reads the first line only
        out.tags[rel] = [ScoredTag(name) for name in parse_caption(first)]
    return out


@dataclass
class CaptionRun:
    """What a filter or edit run over a dataset's captions did, for the summary and --json."""

    target: str
    kind: str
    dry_run: bool
    images: int = 0
    changed: list[str] = field(default_factory=list)
    diff: list[str] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=dict)  # tags removed per rule (filter)
    settings: dict[str, Any] = field(default_factory=dict)  # recorded for the layout (trigger)
    skipped: list[tuple[str, str]] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {"target": self.target, "kind": self.kind, "dry_run": self.dry_run, "images": self.images,
                "changed": len(self.changed), "removed_by_rule": self.counts, "settings": self.settings,
                "diff": self.diff, "skipped": [{"file": f, "reason": r} for f, r in self.skipped]}


def shown_line(line: str, shown: dict[str, str]) -> str:
    """A diff line `image: ...` with the image id replaced by the path the user knows."""
    image, sep, rest = line.partition(": ")
    return f"{shown.get(image, image)}{sep}{rest}"


@dataclass(frozen=True)
class Removed:
    image: str
    tag: str
    rule: str
    detail: str


def changed_images(captions: CaptionSet, new: dict[str, Sequence[ScoredTag]]) -> list[str]:
    return [i for i, tags in new.items()
            if [t.name for t in tags] != [t.name for t in captions.tags.get(i, [])]]


def save(captions: CaptionSet, new: dict[str, Sequence[ScoredTag]], stage: str,
         removed: Iterable[Removed] = (), render: Callable[[list[str]], str] = format_caption) -> list[str]:
    """Write the captions that differ from `captions`; returns the changed image ids.

    `render` turns a tag list into caption text for plain folders (e.g. with a keep_tokens
    separator); a workspace stores plain captions and applies such forms at layout time.
    """
    changed = changed_images(captions, new)
    if captions.kind == "folder":
        for image in changed:
            text = render([t.name for t in new[image]])
            atomic_write_text(caption_file(captions.root, image, captions.caption_ext), text + "\n")
        return changed
    with Workspace.open(captions.root) as ws, ws.lock(), ws.manifest.transaction() as db:
        db.executemany("INSERT OR REPLACE INTO captions (image_sha256, source, text) VALUES (?, ?, ?)",
                       [(i, WORKING, format_caption([t.name for t in new[i]])) for i in changed])
        db.executemany(
            "INSERT INTO decisions (image_sha256, subject, stage, verdict, reason, created_at) "
            "VALUES (?, ?, ?, ?, ?, ?)",
            [(r.image, f"{captions.shown.get(r.image, r.image)}: {r.tag}", stage, "tag-removed",
              f"{r.rule}: {r.detail}", now()) for r in removed])
    return changed
