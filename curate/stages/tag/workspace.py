"""`curate tag WS`: probabilities into the manifest, captions into its `curate` caption.

Images already tagged by the same model are not run again, unless the file that stands in for
them changed (a new crop: its old tags describe pixels it no longer shows); images another
stage excluded (duplicates) are not tagged at all. A caption edited by hand in the dataset
(kept by the layout) is not replaced when such an image is tagged again. The caption an image
ends up with combines the tags it came with (gallery-dl, Hydrus, Kohya captions) and the
tagger's, as `existing` says.

The selection settings a model's captions were made with (thresholds, MCut, rating, limits,
replacements) are stored in the manifest's settings; when a run's settings differ, the images
already tagged get their captions selected again from the stored probabilities, as
`--rethreshold` does, so a changed `--threshold` applies to every image and never silently
only to new ones. A workspace tagged before this was recorded counts as tagged with the defaults.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

from curate.manifest import now
from curate.record import Record
from curate.stages.tag.compose import caption_tags, from_rows, merge, parse, render, stored_rows
from curate.stages.tag.config import TagConfig
from curate.stages.tag.result import ProgressFn, TagResult
from curate.workspace import Workspace
from tagging.engine import Tagger
from tagging.model import TagInfo

STAGE = "tag"
WORKING = "curate"  # captions.source of the caption later stages and the layout use
COMMIT_EVERY_S = 0.5
SELECTION_KEY = "tag.selection."  # + tagger source: the selection settings its captions follow
SELECTION_FIELDS = ("threshold", "character_threshold", "mcut", "rating", "character_first", "max_tags",
                    "undesired", "replace", "escape")


def tagger_source(model_name: str) -> str:
    return f"tagger:{model_name}"


def selection(config: TagConfig) -> dict[str, Any]:
    """The options that decide which stored probabilities become caption tags, as JSON values."""
    values = {name: getattr(config, name) for name in SELECTION_FIELDS}
    return {name: list(v) if isinstance(v, tuple) else v for name, v in values.items()}


def selection_changes(ws: Workspace, source: str, config: TagConfig) -> list[str]:
    """`name old -> new` for each selection option that differs from the stored captions' ones."""
    stored = ws.manifest.settings().get(SELECTION_KEY + source, selection(TagConfig()))
    return [f"{name} {stored.get(name)} -> {value}" for name, value in selection(config).items()
            if stored.get(name) != value]


def remember_selection(ws: Workspace, source: str, config: TagConfig) -> None:
    ws.manifest.set_settings({SELECTION_KEY + source: selection(config)})


def imported_tags(ws: Workspace) -> dict[str, list[str]]:
    """Per image, the tags it was imported with: its caption if it had one, else source tags."""
    out: dict[str, list[str]] = {}
    for r in ws.manifest.rows("SELECT image_sha256, source, tag FROM tags WHERE source NOT LIKE "
                              "'tagger:%' ORDER BY image_sha256, category = 'general', rowid"):
        out.setdefault(r[0], []).append(r[2])
    for r in ws.manifest.rows("SELECT image_sha256, text FROM captions WHERE source != ?", (WORKING,)):
        out[r[0]] = parse(r[1])
    return out


def tagged_by(ws: Workspace, source: str) -> set[str]:
    return {r[0] for r in ws.manifest.rows("SELECT DISTINCT image_sha256 FROM tags WHERE source = ?",
                                           (source,))}


def input_sha(record: Record) -> str:
    """The content that stands in for the image in later stages: its crop, or the image."""
    crop = record.extra.get("crop")
    return str(crop["sha256"]) if isinstance(crop, dict) else record.sha256


def stale(ws: Workspace, source: str, records: Sequence[Record]) -> list[Record]:
    """Tagged images whose stand-in changed since (tags from before this was recorded count as current)."""
    inputs = {r[0]: r[1] for r in ws.manifest.rows(
        "SELECT image_sha256, input_sha256 FROM tag_inputs WHERE source = ?", (source,))}
    return [r for r in records if r.sha256 in inputs and inputs[r.sha256] != input_sha(r)]


def hand_edited(ws: Workspace) -> set[str]:
    return {r[0] for r in ws.manifest.rows(
        "SELECT DISTINCT image_sha256 FROM decisions WHERE stage = 'layout' AND verdict = 'caption-kept'")}


def tag_workspace(ws: Workspace, config: TagConfig, model_name: str, tagger: Tagger | None,
                  tags: Sequence[TagInfo], result: TagResult, *, dry_run: bool = False,
                  on_progress: ProgressFn | None = None) -> None:
    """Tag the active images not yet tagged by this model (all of them when tagger is given)."""
    source = tagger_source(model_name)
    records = ws.active_records()
    done = tagged_by(ws, source)
    again = stale(ws, source, [r for r in records if r.sha256 in done])
    todo = [r for r in records if r.sha256 not in done] + again
    result.count("already tagged", len(records) - len(todo))
    if again:
        result.count("tagged again (new crop)", len(again))
    changes = selection_changes(ws, source, config)
    if changes and len(records) > len(todo):
        kept = {r.sha256 for r in todo}
        count = reselect(ws, config, source, [r for r in records if r.sha256 not in kept], result,
                         "re-selected", dry_run=dry_run)
        result.notes.append(f"re-selected {count} already tagged images from stored probabilities "
                            f"(threshold {config.threshold}): {', '.join(changes)}")
    if not dry_run:
        remember_selection(ws, source, config)
    if not todo or tagger is None:
        return
    existing = imported_tags(ws)
    writer = _Writer(ws, source, dry_run, keep_caption=hand_edited(ws))
    for index, probs, error in tagger.predict([r.path for r in todo], config.batch_size, on_progress):
        record = todo[index]
        if probs is None:
            result.skipped.append((_shown(record), error or "cannot tag"))
            writer.decision(record, "skipped", error or "cannot tag")
            continue
        caption = merge(existing.get(record.sha256), caption_tags(probs, tags, config), config.existing)
        caption = caption if caption is not None else existing[record.sha256]
        text = render(caption, config)
        result.count("tagged")
        result.captions.append((_shown(record), text))
        writer.add(record, stored_rows(probs, tags), text, f"{len(caption)} tags, model {model_name}")
    writer.flush()


def rethreshold(ws: Workspace, config: TagConfig, model_name: str, result: TagResult, *,
                dry_run: bool = False) -> None:
    """Captions again from stored probabilities under new thresholds, without the model."""
    source = tagger_source(model_name)
    reselect(ws, config, source, ws.active_records(), result, "re-thresholded", dry_run=dry_run,
             keep_edited=False)
    if not dry_run:
        remember_selection(ws, source, config)


def stored_probabilities(ws: Workspace, source: str) -> dict[str, list[tuple[str, str, float]]]:
    rows: dict[str, list[tuple[str, str, float]]] = {}
    for r in ws.manifest.rows("SELECT image_sha256, tag, category, confidence FROM tags WHERE source = ? "
                              "ORDER BY image_sha256, rowid", (source,)):
        rows.setdefault(r[0], []).append((r[1], r[2], r[3]))
    return rows


def reselect(ws: Workspace, config: TagConfig, source: str, records: Sequence[Record], result: TagResult,
             verb: str, *, dry_run: bool = False, keep_edited: bool = True) -> int:
    """Captions of `records` selected again from their stored probabilities; returns how many.

    `keep_edited`: a caption edited by hand in the dataset (kept by the layout) stays, as when
    an image is tagged again.
    """
    rows = stored_probabilities(ws, source)
    existing = imported_tags(ws)
    keep = hand_edited(ws) if keep_edited else set()
    writer = _Writer(ws, source, dry_run)
    done = 0
    for record in records:
        if record.sha256 not in rows:
            result.count("not tagged yet")
            continue
        if record.sha256 in keep:
            result.count("caption edited by hand, kept")
            continue
        probs, infos = from_rows(rows[record.sha256])
        caption = merge(existing.get(record.sha256), caption_tags(probs, infos, config), config.existing)
        caption = caption if caption is not None else existing[record.sha256]
        text = render(caption, config)
        result.count(verb)
        result.captions.append((_shown(record), text))
        writer.caption(record, text)
        done += 1
    writer.flush()
    return done


def _shown(record: Record) -> str:
    return record.origins[0].source_path if record.origins else str(record.path)


class _Writer:
    """Batches manifest writes into short transactions (a killed run keeps what it finished)."""

    def __init__(self, ws: Workspace, source: str, dry_run: bool,
                 keep_caption: set[str] | None = None) -> None:
        self.ws, self.source, self.dry_run = ws, source, dry_run
        self.keep_caption = keep_caption or set()
        self.inputs: list[tuple[str, str, str]] = []
        self.tags: list[tuple] = []
        self.captions: list[tuple] = []
        self.decisions: list[tuple] = []
        self.last = time.monotonic()

    def add(self, record: Record, rows: list[tuple[str, str, float]], caption: str, why: str) -> None:
        self.tags += [(record.sha256, self.source, name, cat, p) for name, cat, p in rows]
        self.inputs.append((record.sha256, self.source, input_sha(record)))
        self.decision(record, "tagged", why)
        if record.sha256 in self.keep_caption:  # edited by hand in the dataset: the edit stays
            self._maybe_flush()
            return
        self.caption(record, caption)  # last: it may flush, and the three belong together

    def caption(self, record: Record, text: str) -> None:
        self.captions.append((record.sha256, WORKING, text))
        self._maybe_flush()

    def decision(self, record: Record, verdict: str, reason: str) -> None:
        self.decisions.append((record.sha256, _shown(record), STAGE, verdict, reason, now()))

    def _maybe_flush(self) -> None:
        if time.monotonic() - self.last > COMMIT_EVERY_S:
            self.flush()

    def flush(self) -> None:
        self.last = time.monotonic()
        if self.dry_run or not (self.tags or self.captions or self.decisions):
            self.tags, self.captions, self.decisions, self.inputs = [], [], [], []
            return
        with self.ws.manifest.transaction() as db:
            # an image tagged again (new crop) loses the old tagger tags that no longer apply
            db.executemany("DELETE FROM tags WHERE image_sha256 = ? AND source = ?",
                           [(image, source) for image, source, _ in self.inputs])
            db.executemany("INSERT OR REPLACE INTO tag_inputs (image_sha256, source, input_sha256) "
                           "VALUES (?, ?, ?)", self.inputs)
            # Tags before captions: an image counts as tagged once its tags are in, and tags and
            # caption commit together, so a killed run never leaves one without the other.
            db.executemany("INSERT OR REPLACE INTO tags (image_sha256, source, tag, category, confidence) "
                           "VALUES (?, ?, ?, ?, ?)", self.tags)
            db.executemany("INSERT OR REPLACE INTO captions (image_sha256, source, text) VALUES (?, ?, ?)",
                           self.captions)
            db.executemany("INSERT INTO decisions (image_sha256, subject, stage, verdict, reason, "
                           "created_at) VALUES (?, ?, ?, ?, ?, ?)", self.decisions)
        self.tags, self.captions, self.decisions, self.inputs = [], [], [], []
