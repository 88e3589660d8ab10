"""`curate tag WS`: probabilities into the manifest, the selection as tag annotations.

Images already tagged by the same model are not run again, unless the file that stands in for
them changed (a new crop: its old tags describe pixels it no longer shows); images another
stage excluded (duplicates) are not tagged at all. A caption edited by hand in the dataset
(the user caption) wins over whatever the tagger selects. The caption an image ends up with
combines the tags it came with (gallery-dl, Hydrus, Kohya captions) and the tagger's, as
`existing` says; it is recorded as marks on the tags (kept and placed, or left out by the
selection), never as caption text.

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

from curate.executor import LOCAL, Executor
from curate.record import Record
from curate.stages.tag.compose import (
    REPLACED,
    Item,
    caption_tags,
    compose,
    from_rows,
    imported_names,
    placement,
    render,
    stored_rows,
)
from curate.stages.tag.config import TagConfig
from curate.stages.tag.result import ProgressFn, TagResult
from curate.stages.tag.step import TagModel, tagged
from curate.tagging.model import TagInfo
from curate.workspace import Workspace

STAGE = "tag"
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


def tagged_by(ws: Workspace, source: str) -> set[str]:
    return ws.manifest.tagged_images(source)


def input_sha(record: Record) -> str:
    """The content that stands in for the image in later stages: the leaf of its derived chain
    (crop, or cut-out, or the image itself)."""
    return str(record.extra.get("leaf") or record.sha256)


def stale(ws: Workspace, source: str, records: Sequence[Record]) -> list[Record]:
    """Tagged images whose stand-in changed since (tags from before this was recorded count as current)."""
    inputs = ws.manifest.tag_inputs(source)
    return [r for r in records if r.sha256 in inputs and inputs[r.sha256] != input_sha(r)]


def tag_workspace(ws: Workspace, config: TagConfig, model_name: str, model: TagModel | None,
                  tags: Sequence[TagInfo], result: TagResult, *, dry_run: bool = False,
                  on_progress: ProgressFn | None = None, executor: Executor = LOCAL) -> None:
    """Tag the active images not yet tagged by this model, the model running on `executor`
    (this process, or Ray actors); results are committed as they come."""
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
    if not todo or model is None:
        return
    writer = _Writer(ws, source, dry_run)
    items = [Item(_shown(r), r.path, imported_names(r), bool(r.texts)) for r in todo]
    for index, (item, done) in enumerate(tagged(executor, model, items, result, on_progress)):
        record = todo[index]
        if done.probs is None:
            result.skipped.append((_shown(record), done.error or "cannot tag"))
            writer.decision(record, "skipped", done.error or "cannot tag")
            continue
        # None: "skip" kept the tags the image came with, which its caption goes on spelling
        caption = done.caption if done.caption is not None else item.existing
        result.count("tagged")
        result.captions.append((_shown(record), render(caption, config)))
        writer.add(record, stored_rows(done.probs, tags), caption, f"{len(caption)} tags, model {model_name}")
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
    for r in ws.manifest.tag_rows(source=source):
        rows.setdefault(r["image_sha256"], []).append((r["tag"], r["category"], r["confidence"]))
    return rows


def reselect(ws: Workspace, config: TagConfig, source: str, records: Sequence[Record], result: TagResult,
             verb: str, *, dry_run: bool = False, keep_edited: bool = True) -> int:
    """Captions of `records` selected again from their stored probabilities; returns how many.

    `keep_edited`: an image whose caption was edited by hand in the dataset is counted as kept
    (its user caption wins over the selection, which is still recorded).
    """
    rows = stored_probabilities(ws, source)
    writer = _Writer(ws, source, dry_run)
    done = 0
    for record in records:
        if record.sha256 not in rows:
            result.count("not tagged yet")
            continue
        if keep_edited and record.user_caption is not None:
            result.count("caption edited by hand, kept")
            continue
        probs, infos = from_rows(rows[record.sha256])
        caption = compose(record, caption_tags(probs, infos, config), config.existing)
        text = render(caption, config)
        result.count(verb)
        result.captions.append((_shown(record), text))
        writer.caption(record, caption)
        done += 1
    writer.flush()
    return done


def _shown(record: Record) -> str:
    return record.origins[0].source_path if record.origins else str(record.path)


class _Writer:
    """Batches manifest writes into short transactions (a killed run keeps what it finished).

    Per image: the tagger's scores (all stored probabilities, for re-thresholding), then the
    marks that make its tags spell the composed caption: which are kept (and where), which the
    selection left out. A user caption, user tags and filter removals are never touched.
    """

    def __init__(self, ws: Workspace, source: str, dry_run: bool) -> None:
        self.ws, self.source, self.dry_run = ws, source, dry_run
        self.pending: list[tuple[Record, list[tuple[str, str, float]] | None, list[str]]] = []
        self.decisions: list[tuple[str | None, str, str, str, str]] = []
        self.last = time.monotonic()

    def add(self, record: Record, rows: list[tuple[str, str, float]], caption: list[str], why: str) -> None:
        self.decision(record, "tagged", why)
        self.pending.append((record, rows, caption))  # last: it may flush, and these belong together
        self._maybe_flush()

    def caption(self, record: Record, caption: list[str]) -> None:
        self.pending.append((record, None, caption))
        self._maybe_flush()

    def decision(self, record: Record, verdict: str, reason: str) -> None:
        self.decisions.append((record.sha256, _shown(record), STAGE, verdict, reason))

    def _maybe_flush(self) -> None:
        if time.monotonic() - self.last > COMMIT_EVERY_S:
            self.flush()

    def flush(self) -> None:
        self.last = time.monotonic()
        pending, decisions, self.pending, self.decisions = self.pending, self.decisions, [], []
        if self.dry_run or not (pending or decisions):
            return
        m = self.ws.manifest
        with m.transaction():
            for record, rows, caption in pending:
                if rows is not None:  # scores first: an image counts as tagged once they are in
                    m.replace_scores(record.sha256, self.source, rows, input_sha(record))
                m.delete_tags(record.sha256, REPLACED)
                current = [(r["rowid"], r["source"], r["tag"], r["removed"])
                           for r in m.tag_rows(image=record.sha256)]
                marks, missing = placement(current, caption)
                m.mark_tags(marks)
                m.put_tags(record.sha256, REPLACED, [(name, "general", 1.0, rank) for name, rank in missing])
            m.add_decisions(decisions)
