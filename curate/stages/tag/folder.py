"""`curate tag DIR`: captions written beside each image, as sd-scripts' tagger does.

The per-image step is the workspace's (compose.tag_items); only the sink differs: the caption
file beside the image instead of annotations in the manifest.

An existing caption file is left alone unless `existing` says append or overwrite, and such
images are not even sent through the model. Every caption is written atomically.
"""

from __future__ import annotations

import os
from pathlib import Path

from curate.atomic import atomic_write_text
from curate.executor import LOCAL, Executor
from curate.folder import walk_images
from curate.kohya import CAPTION_LIMIT
from curate.paths import read_user_text, unreadable_caption
from curate.stages.ingest.sources import display
from curate.stages.tag.compose import Item, parse, render
from curate.stages.tag.config import TagConfig
from curate.stages.tag.result import ProgressFn, TagResult
from curate.stages.tag.step import TagModel, tagged


def caption_path(root: Path, rel: str, ext: str) -> Path:
    return root / (rel.rsplit(".", 1)[0] + ext)


def tag_folder(root: Path, config: TagConfig, model: TagModel, result: TagResult, *, dry_run: bool = False,
               on_progress: ProgressFn | None = None, executor: Executor = LOCAL) -> None:
    listing = walk_images(root)
    result.skipped += listing.skipped
    result.ignored += listing.ignored
    items: list[Item] = []
    had: list[bool] = []  # a caption file existed
    for rel in listing.relpaths:
        path = caption_path(root, rel, config.caption_ext)
        existing = _existing(path, root, config, result)
        if existing is not False:
            items.append(Item(rel, root / rel, existing))
            had.append(path.exists())
    for index, (item, done) in enumerate(tagged(executor, model, items, result, on_progress)):
        if done.probs is None:
            result.skipped.append((display(item.path), done.error or "cannot tag"))
            continue
        if done.caption is None:
            continue
        text = render(done.caption, config)
        result.count(("appended" if item.existing else "overwritten") if had[index] else "written")
        result.captions.append((item.shown, text))
        if not dry_run:
            atomic_write_text(caption_path(root, item.shown, config.caption_ext), text + "\n")


def _existing(path: Path, root: Path, config: TagConfig, result: TagResult) -> list[str] | bool:
    """Tags of an existing caption file; [] when none; False when the image is left alone."""
    if not os.path.lexists(path):
        return []
    if config.existing == "skip":
        result.count("kept")
        return False
    if config.existing == "overwrite":
        return []
    try:
        return parse(read_user_text(path, CAPTION_LIMIT, root))
    except (OSError, UnicodeDecodeError) as exc:
        result.skipped.append((display(path), unreadable_caption(exc, "or use --overwrite")))
        return False
