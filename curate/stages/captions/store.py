"""Captions of a dataset as `tagging` works on them, loaded from and saved to a target.

A workspace's caption is compiled from its annotations (curate.tagging.captions.caption_of), with the tagger's
confidence for each tag where one is stored, so confidence rules work; saving writes
annotations back, never caption text: a filter rule's removals as marks on the tags (a
re-run clears and re-applies them), a user edit as user tags, removals and places.
A plain folder's captions are the files beside the images (`.txt` by default); their tags
have no confidences (1.0). Saving writes only captions that changed, each file
atomically, and in a workspace records every removed tag as a decision with its rule.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from curate.atomic import atomic_write_text
from curate.errors import CurateError
from curate.folder import walk_images
from curate.kohya import CAPTION_LIMIT
from curate.manifest import USER_CAPTION, Manifest
from curate.paths import read_user_text, unreadable_caption
from curate.record import REMOVED_BY_USER, Record, filter_mark
from curate.stages.ingest.sources import display
from curate.tagging.captions import caption_of, format_caption, parse_caption
from curate.tagging.tags import ScoredTag, tag_key
from curate.workspace import Workspace, is_workspace

FILTER_STAGE = "filter"  # its removals are marks it owns; every other edit is the user's


@dataclass
class CaptionSet:
    """Image id -> tags; `shown` maps ids to what the user knows (paths)."""

    root: Path
    kind: str  # "workspace" or "folder"
    caption_ext: str = ".txt"
    tags: dict[str, list[ScoredTag]] = field(default_factory=dict)
    shown: dict[str, str] = field(default_factory=dict)
    records: dict[str, Record] = field(default_factory=dict)  # a workspace's, by image id
    skipped: list[tuple[str, str]] = field(default_factory=list)

    def text(self, image: str) -> str:
        return format_caption([t.name for t in self.tags[image]])


def load(target: Path, caption_ext: str = ".txt", *, without_filter: bool = False) -> CaptionSet:
    """Captions of a workspace or folder; `without_filter`: a workspace's as if no tags filter
    rule had removed anything (a filter run decides afresh)."""
    target = Path(target).absolute()
    if not target.is_dir():
        what = "does not exist" if not target.exists() else "is not a folder"
        raise CurateError(f"{target} {what}: name a dataset folder or a workspace")
    if is_workspace(target):
        with Workspace.open(target) as ws:
            return _load_workspace(ws, without_filter)
    return _load_folder(target, caption_ext)


def _load_workspace(ws: Workspace, without_filter: bool) -> CaptionSet:
    out = CaptionSet(ws.root, "workspace")
    for record in ws.active_records():  # uncaptioned images too: `captions add`/trigger reach them
        if without_filter:
            record = replace(record, tags=tuple(replace(t, removed="") if filter_mark(t.removed) else t
                                                for t in record.tags))
        out.records[record.sha256] = record
        out.shown[record.sha256] = record.origins[0].source_path if record.origins else str(record.path)
        scores: dict[str, float] = {}
        for t in record.kept_tags:
            if t.source.startswith("tagger:"):
                scores[tag_key(t.name)] = max(scores.get(tag_key(t.name), 0.0), t.confidence)
        out.tags[record.sha256] = [ScoredTag(name, _category(record, name), scores.get(tag_key(name), 1.0))
                                   for name in parse_caption(caption_of(record) or "")]
    return out


def _category(record: Record, name: str) -> str:
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
    with Workspace.open(captions.root) as ws, ws.lock(), ws.manifest.transaction():
        m = ws.manifest
        if stage == FILTER_STAGE:
            m.clear_filter_marks()  # a run decides afresh: a rule turned off brings its tags back
            _mark_removed(m, captions, removed)
        else:
            for image in changed:
                _user_edit(m, captions.records[image], [t.name for t in new[image]])
        m.add_decisions((r.image, f"{captions.shown.get(r.image, r.image)}: {r.tag}", stage, "tag-removed",
                         f"{r.rule}: {r.detail}") for r in removed)
    return changed


def _mark_removed(m: Manifest, captions: CaptionSet, removed: Iterable[Removed]) -> None:
    """Each removal as a mark (its rule) on the image's kept tags of that name."""
    by_image: dict[str, dict[str, str]] = {}
    for r in removed:
        by_image.setdefault(r.image, {}).setdefault(tag_key(r.tag), r.rule)
    for image, rules in by_image.items():
        m.mark_tags((row["rowid"], rules[tag_key(row["tag"])], row["rank"]) for row in m.tag_rows(image=image)
                    if not row["removed"] and tag_key(row["tag"]) in rules)


def _user_edit(m: Manifest, record: Record, after: list[str]) -> None:
    """An edit of the user's: their own caption is edited in place; otherwise the tags it
    removed are marked removed by the user, the ones it added become user tags, and every tag
    gets its place. The trigger and class token stay settings (`captions trigger`)."""
    if record.user_caption is not None:
        m.set_user_caption(record.sha256, USER_CAPTION, format_caption(after))
        return
    fixed = {tag_key(w) for w in (record.trigger, record.class_tokens) if w}
    body = [name for name in after if tag_key(name) not in fixed]
    rank: dict[str, int] = {}
    for i, name in enumerate(body):
        rank.setdefault(name, i)
    marks, have = [], set()
    for row in m.tag_rows(image=record.sha256):
        if row["removed"]:
            continue
        if row["tag"] in rank:
            have.add(row["tag"])
            marks.append((row["rowid"], "", rank[row["tag"]]))
        else:
            marks.append((row["rowid"], REMOVED_BY_USER, None))  # removed, or spelled anew
    m.mark_tags(marks)
    m.put_tags(record.sha256, REMOVED_BY_USER, [(name, _category(record, name), 1.0, i)
                                                for name, i in rank.items() if name not in have])
