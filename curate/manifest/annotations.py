"""Manifest migration 8: the stored working caption becomes annotations.

Before it, `curate tag`, `tags filter` and `captions ...` overwrote one caption per image
(`captions.source = 'curate'`), which won over everything. Each such caption is diffed against
the image's tags: a tag it names gets its place (`rank`), a tag it lacks is marked removed (by
the filter rule a `tag-removed` decision names, by the tagger's selection for tagger tags,
else by the user), an item no tag spells becomes a user tag, and a caption that names no tag
at all becomes a user text. A caption kept from a hand edit in the dataset becomes the user
caption. The result is compiled with the layout's own code and compared with the old caption;
where they differ in a single byte, the old caption is kept whole as the user caption, so a
migrated workspace lays out exactly the captions it did before.
"""

from __future__ import annotations

import json
import sqlite3
from dataclasses import dataclass, field

from curate.manifest import USER_CAPTION, USER_TEXT
from curate.record import REMOVED_BY_USER, SELECTION_MARK, Tag, Text
from curate.tagging.captions import format_caption, insert_trigger, parse_caption
from curate.tagging.compile import CaptionFormat, compile_caption

WORKING = "curate"  # the captions.source of the old working caption


@dataclass
class _Plan:
    marks: dict[int, tuple[str, int | None]] = field(default_factory=dict)  # rowid -> removed, rank
    added: list[tuple[str, int]] = field(default_factory=list)  # user tags: name, rank
    text: str | None = None  # a user text


def convert_working_captions(db: sqlite3.Connection) -> None:
    settings = {k: json.loads(v) for k, v in db.execute("SELECT key, value FROM settings")}
    trigger, klass = settings.get("trigger") or None, settings.get("class_token") or None
    edited = {r[0] for r in db.execute("SELECT DISTINCT image_sha256 FROM decisions WHERE stage = "
                                       "'layout' AND verdict = 'caption-kept'")}
    rules: dict[tuple[str, str], str] = {}
    for image, subject, reason in db.execute(
            "SELECT image_sha256, subject, reason FROM decisions WHERE stage = 'filter' AND "
            "verdict = 'tag-removed' AND image_sha256 IS NOT NULL ORDER BY id"):
        rules[(image, subject.rpartition(": ")[2])] = reason.partition(": ")[0]
    for image, text in db.execute("SELECT image_sha256, text FROM captions WHERE source = ?",
                                  (WORKING,)).fetchall():
        plan = None if image in edited else _plan(db, image, text, trigger, klass, rules)
        if plan is None:
            db.execute("INSERT OR REPLACE INTO captions (image_sha256, source, text) VALUES (?, ?, ?)",
                       (image, USER_CAPTION, text))
            continue
        db.executemany("UPDATE tags SET removed = ?, rank = ? WHERE rowid = ?",
                       [(removed, rank, rowid) for rowid, (removed, rank) in plan.marks.items()])
        db.executemany("INSERT OR REPLACE INTO tags (image_sha256, source, tag, category, confidence, "
                       "removed, rank) VALUES (?, ?, ?, 'general', 1.0, '', ?)",
                       [(image, REMOVED_BY_USER, name, rank) for name, rank in plan.added])
        if plan.text is not None:
            db.execute("INSERT OR REPLACE INTO captions (image_sha256, source, text) VALUES (?, ?, ?)",
                       (image, USER_TEXT, plan.text))
    db.execute("DELETE FROM captions WHERE source = ?", (WORKING,))


def _plan(db: sqlite3.Connection, image: str, text: str, trigger: str | None, klass: str | None,
          rules: dict[tuple[str, str], str]) -> _Plan | None:
    """The annotations that compile back to `text`, or None when none do (keep it whole)."""
    items = parse_caption(text)
    head = insert_trigger([], trigger, klass) if trigger else []
    if items[:len(head)] != head:
        return None
    body = items[len(head):]
    rows = db.execute("SELECT rowid, source, tag, category FROM tags WHERE image_sha256 = ? ORDER BY rowid",
                      (image,)).fetchall()
    names = {r[2] for r in rows}
    plan = _Plan()
    tag_like = any(item in names for item in body)
    rank = {item: i for i, item in reversed(list(enumerate(body)))} if tag_like else {}
    for rowid, source, name, _category in rows:
        if name in rank:
            plan.marks[rowid] = ("", rank[name])
        else:
            why = rules.get((image, name)) or (SELECTION_MARK + "select" if source.startswith("tagger:")
                                               else REMOVED_BY_USER)
            plan.marks[rowid] = (why, None)
    if tag_like:
        plan.added = [(item, i) for item, i in rank.items() if item not in names]
    elif body:
        plan.text = format_caption(body)
    texts = [Text(plan.text, USER_TEXT)] if plan.text else []
    texts += [Text(t, s) for s, t in db.execute(
        "SELECT source, text FROM captions WHERE image_sha256 = ? AND source NOT IN (?, ?) ORDER BY source",
        (image, WORKING, USER_CAPTION))]
    tags = [Tag(name, category, 1.0, source, *plan.marks[rowid]) for rowid, source, name, category in rows]
    tags += [Tag(name, "general", 1.0, REMOVED_BY_USER, "", i) for name, i in plan.added]
    # what `curate layout` will write from them (the default caption format)
    compiled = compile_caption(tags, texts, CaptionFormat(), trigger=trigger, class_tokens=klass).text
    return plan if compiled == format_caption(items) else None
