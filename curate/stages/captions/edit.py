"""`curate captions ...`: trigger word, keep_tokens and the bulk edits of dataset-tag-editor."""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from pathlib import Path

from curate.errors import CurateError
from curate.stages.captions.store import CaptionRun, changed_images, load, save, shown_line
from curate.tagging.captions import (
    SEPARATOR,
    Change,
    EditResult,
    format_caption,
    insert_trigger,
    keep_tokens_for,
    with_separator,
)
from curate.tagging.tags import Dataset, ScoredTag, names, tag_key
from curate.workspace import Workspace, is_workspace

STAGE = "captions"
Edit = Callable[[Dataset], EditResult]


def apply_edit(target: Path, edit: Edit, *, caption_ext: str = ".txt", dry_run: bool = False,
               render: Callable[[list[str]], str] = format_caption) -> CaptionRun:
    """Apply one dataset-wide edit to the captions of a workspace or folder."""
    captions = load(target, caption_ext)
    result = edit(captions.tags)
    run = CaptionRun(str(captions.root), captions.kind, dry_run, len(captions.tags), skipped=captions.skipped)
    run.diff = [shown_line(line, captions.shown) for line in result.diff()]
    run.changed = (changed_images(captions, result.dataset) if dry_run
                   else save(captions, result.dataset, STAGE, render=render))
    return run


def trigger_edit(trigger: str, class_token: str | None, dataset: Dataset) -> EditResult:
    """Trigger word first and exactly once in every caption (class token second)."""
    out: dict[str, list[ScoredTag]] = {}
    changes = []
    for image, tags in dataset.items():
        by_key = {tag_key(t.name): t for t in tags}
        ordered = insert_trigger(names(tags), trigger, class_token)
        after = [by_key.get(tag_key(name), ScoredTag(name, "meta")) for name in ordered]
        out[image] = after
        if names(after) != names(tags):
            changes.append(Change(image, tuple(names(tags)), tuple(ordered)))
    return EditResult(out, changes)


def set_trigger(target: Path, trigger: str, class_token: str | None = None, *, separator: bool = False,
                caption_ext: str = ".txt", dry_run: bool = False) -> CaptionRun:
    """Insert the trigger word and record keep_tokens (and the separator form) for the layout."""
    keep = keep_tokens_for([[trigger] + ([class_token] if class_token else [])], trigger, class_token)
    settings = {"trigger": trigger, "class_token": class_token, "keep_tokens": keep,
                "keep_tokens_separator": SEPARATOR if separator else None}
    if not is_workspace(Path(target)):
        render = partial(_with_separator, keep) if separator else format_caption
        run = apply_edit(target, partial(trigger_edit, trigger, class_token), caption_ext=caption_ext,
                         dry_run=dry_run, render=render)
        run.settings = settings
        return run
    # A workspace records the words as settings; every caption is compiled with them in front,
    # exactly once, whatever its tags and texts hold (images imported later too). keep_tokens and
    # `|||` are the caption format's to decide at layout (tagging/compile.py), so only the words
    # are stored: a separator setting here would be read by nothing.
    if separator:
        raise CurateError("--separator writes 'trigger ||| tags' into a plain folder's caption files; in a "
                          "workspace `curate layout` decides it from the caption format: [captions] format "
                          '= "hybrid" keeps a sentence before |||, "tags" keeps the trigger first with '
                          "keep_tokens")
    captions = load(target, caption_ext)
    result = trigger_edit(trigger, class_token, captions.tags)
    run = CaptionRun(str(captions.root), captions.kind, dry_run, len(captions.tags), settings=settings)
    run.diff = [shown_line(line, captions.shown) for line in result.diff()]
    run.changed = changed_images(captions, result.dataset)
    if not dry_run:
        with Workspace.open(captions.root) as ws, ws.lock():
            ws.manifest.set_settings({"trigger": trigger, "class_token": class_token})
    return run



def _with_separator(keep: int, tags: list[str]) -> str:
    return with_separator(tags, keep)

