"""`curate caption DIR`: `<stem>.caption` (caption_ext) beside each image, written atomically.

An existing caption file is left alone unless `existing` says append (the sentence goes after
its text, on the same line) or overwrite; such images are not even sent to the model. The
hybrid preset's tag hints come from the image's `<stem>.txt` (a tagger's output) when there is
one. Answers are cached by content and settings in `caption-cache.sqlite` in the user cache
folder, as dedupe caches hashes, so a re-run with --overwrite asks the model nothing again.
"""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Sequence
from pathlib import Path

from PIL import Image

from curate.atomic import atomic_write_text
from curate.folder import walk_images
from curate.kohya import CAPTION_LIMIT
from curate.manifest.caches import CaptionCacheDB
from curate.paths import read_user_text, unreadable_caption
from curate.stages.caption.config import CaptionConfig
from curate.stages.caption.items import Item
from curate.stages.caption.result import CaptionResult
from curate.stages.dedupe.cache import cache_dir
from curate.stages.guard import Failed, attempt
from curate.stages.ingest.sources import display
from curate.tagging.captions import parse_caption
from curate.tagging.vlm.prompts import Values, hint_tags

TAGS_EXT = ".txt"  # where a tagger (curate tag, sd-scripts) put the image's tags


def caption_path(root: Path, rel: str, ext: str) -> Path:
    return root / (rel.rsplit(".", 1)[0] + ext)


def folder_items(root: Path, config: CaptionConfig, result: CaptionResult) -> list[Item]:
    listing = walk_images(root)
    result.skipped += listing.skipped
    result.ignored += listing.ignored
    items = []
    for rel in listing.relpaths:
        path = root / rel
        target = caption_path(root, rel, config.caption_ext)
        existing = _existing(target, root, config, result)
        if existing is False:
            continue
        sha = attempt(_content_sha, path, "cannot read the image", "replace the file or remove it")
        if isinstance(sha, Failed):
            result.skipped.append((display(path), sha.reason))
            continue
        items.append(image_item(root, rel, config, sha, target, existing or None))
    return items


def image_item(root: Path, rel: str, config: CaptionConfig, sha: str, target: Path | None = None,
               existing: str | None = None) -> Item:
    """An image of a plain folder: tag hints from its .txt, trigger and class from the options."""
    values = Values(hint_tags(_tags(root, rel, config), config.trigger), config.trigger, config.class_word)
    return Item(display(root / rel), root / rel, sha, values, tuple(config.names), target, existing)


def _content_sha(path: Path) -> str:
    """The file's sha256, after a header check (a file that is no image fails here, with its reason)."""
    with Image.open(path) as image:
        image.verify()
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _tags(root: Path, rel: str, config: CaptionConfig) -> list[str]:
    path = caption_path(root, rel, TAGS_EXT)
    if config.caption_ext == TAGS_EXT or not path.is_file():
        return []
    try:
        text = read_user_text(path, CAPTION_LIMIT, root)
    except (OSError, UnicodeDecodeError):
        return []  # only hints: a tags file that cannot be read is left out, not a problem
    return parse_caption(text.splitlines()[0] if text.strip() else "")


def _existing(path: Path, root: Path, config: CaptionConfig, result: CaptionResult) -> str | bool:
    """The caption file's text to append to; "" when none or overwritten; False: leave the image."""
    if not os.path.lexists(path):
        return ""
    if config.existing == "skip":
        result.count("kept (caption file exists)")
        return False
    if config.existing == "overwrite":
        return ""
    try:
        return " ".join(read_user_text(path, CAPTION_LIMIT, root).split())
    except (OSError, UnicodeDecodeError) as exc:
        result.skipped.append((display(path), unreadable_caption(exc, "or use --overwrite")))
        return False


class FolderSink:
    """Caption files and the plain-folder cache."""

    def __init__(self, source: str, dry_run: bool, cache_path: Path | None = None) -> None:
        self.source, self.dry_run = source, dry_run
        self.cache = CaptionCacheDB(cache_path or cache_dir() / "caption-cache.sqlite")
        self.pending: list[tuple[str, str, str, str]] = []

    def cached(self, keys: Sequence[str]) -> dict[str, str]:
        return self.cache.get(keys)

    def remember(self, key: str, text: str) -> None:
        self.pending.append((key, text, self.source, time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())))
        if not self.dry_run:  # each answer at once: a caption file is written at once too
            self.flush()

    def accept(self, item: Item, text: str) -> None:
        line = f"{item.existing} {text}" if item.existing and text not in item.existing else (
            item.existing or text)
        path: Path = item.target
        if self.dry_run:
            return
        try:
            if path.read_text(encoding="utf-8") == line + "\n":
                return
        except (OSError, UnicodeDecodeError):
            pass
        atomic_write_text(path, line + "\n")

    def reject(self, item: Item, reason: str) -> None:
        pass  # no file: the image is listed with the reason

    def fail(self, item: Item, reason: str) -> None:
        pass

    def flush(self) -> None:
        pending, self.pending = self.pending, []
        if pending and not self.dry_run:
            self.cache.put(pending)

    def close(self) -> None:
        self.cache.close()
