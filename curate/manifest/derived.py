"""Derived images as a chain: original -> cut-out (`curate bg`) -> crop (`curate crop`), with
head close-ups beside the crop. One `derived` row per derived file names its parent (the file it
was made from: the original image's sha256 or another derived file's) and what made it.

The leaf of an image's chain is what later stages see and what the layout writes. A stage reads
the chain below its own place (`below`): crop works on the cut-out when bg ran, bg on the
original. Writing a new file at one place of the chain drops what stood after it (a new cut-out
makes the old crop stale), so a re-run of an upstream stage invalidates what was derived from it.

Only this package knows SQL; stages reach these rows through `Workspace.run` and `records`.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from curate.manifest.chunked import execute_in

# The main line of the chain, in order; "closeup-N" files stand beside the crop.
CHAIN = ("cutout", "crop")
CLOSEUP = "closeup-"


def rank(kind: str) -> int:
    """A kind's place in the chain: a stage reads the files of lower rank."""
    if kind.startswith(CLOSEUP):
        return CHAIN.index("crop")
    return CHAIN.index(kind) if kind in CHAIN else len(CHAIN)


def is_side(kind: str) -> bool:
    """Close-ups are extra training images, never the leaf another stage builds on."""
    return kind.startswith(CLOSEUP)


# v6 kept the crop that stands in for an image as the 'main' row of `crops` and let `curate bg`
# overwrite it with the cut-out (the `backgrounds` row remembers what it was cut from). Every
# row is carried forward: crops as 'crop', cut-outs as 'cutout' with the file they were cut
# from as parent (a crop kept in backgrounds.source_row comes back as that parent), close-ups
# as they were.
MIGRATION_7 = """
CREATE TABLE derived (
    id            INTEGER PRIMARY KEY,
    image_sha256  TEXT NOT NULL REFERENCES images(sha256),
    kind          TEXT NOT NULL,   -- cutout, crop, closeup-N
    parent_sha256 TEXT NOT NULL,   -- the file it was made from: the image's or a derived file's
    sha256        TEXT NOT NULL,   -- of the derived file
    stored_path   TEXT NOT NULL,   -- relative to the workspace root
    width         INTEGER NOT NULL,
    height        INTEGER NOT NULL,
    mode          TEXT NOT NULL,
    format        TEXT NOT NULL,
    info          TEXT NOT NULL,   -- JSON: the settings, box, subject or mask facts that made it
    run_id        INTEGER,
    UNIQUE (image_sha256, kind)
);
CREATE INDEX derived_parent ON derived(parent_sha256);
INSERT INTO derived (image_sha256, kind, parent_sha256, sha256, stored_path, width, height, mode,
                     format, info, run_id)
SELECT c.image_sha256, CASE c.kind WHEN 'main' THEN 'crop' ELSE c.kind END, c.image_sha256,
       c.sha256, c.stored_path, c.width, c.height, c.mode, c.format,
       json_object('box', json(c.box), 'subject', c.subject), c.run_id
FROM crops c
WHERE NOT EXISTS (SELECT 1 FROM backgrounds b WHERE b.image_sha256 = c.image_sha256
                  AND b.sha256 = c.sha256 AND c.kind = 'main');
INSERT INTO derived (image_sha256, kind, parent_sha256, sha256, stored_path, width, height, mode,
                     format, info, run_id)
SELECT b.image_sha256, 'crop', b.image_sha256, json_extract(b.source_row, '$.sha256'),
       json_extract(b.source_row, '$.stored_path'), json_extract(b.source_row, '$.width'),
       json_extract(b.source_row, '$.height'), json_extract(b.source_row, '$.mode'),
       json_extract(b.source_row, '$.format'),
       json_object('box', json(json_extract(b.source_row, '$.box')),
                   'subject', json_extract(b.source_row, '$.subject')),
       json_extract(b.source_row, '$.run_id')
FROM backgrounds b JOIN crops c ON c.image_sha256 = b.image_sha256 AND c.kind = 'main'
     AND c.sha256 = b.sha256
WHERE b.source_row IS NOT NULL;
INSERT INTO derived (image_sha256, kind, parent_sha256, sha256, stored_path, width, height, mode,
                     format, info, run_id)
SELECT b.image_sha256, 'cutout', COALESCE(json_extract(b.source_row, '$.sha256'), b.image_sha256),
       b.sha256, 'images/' || substr(b.sha256, 1, 2) || '/' || b.sha256 || '.png',
       COALESCE(json_extract(b.source_row, '$.width'), i.width),
       COALESCE(json_extract(b.source_row, '$.height'), i.height), 'RGBA', 'PNG',
       json_object('method', b.method, 'cut_from', b.source_path), b.run_id
FROM backgrounds b JOIN images i ON i.sha256 = b.image_sha256;
DROP TABLE crops;
DROP TABLE backgrounds;
"""

_COLUMNS = ("image_sha256, kind, parent_sha256, sha256, stored_path, width, height, mode, format, "
            "info, run_id")


@dataclass(frozen=True)
class Derived:
    """One derived file: what it is (kind), what it was made from (parent) and how (info)."""

    image: str  # the original image's sha256
    kind: str
    parent: str  # sha256 of the file it was made from
    sha256: str
    stored_path: str  # relative to the workspace root
    width: int
    height: int
    mode: str
    format: str
    info: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))
    run_id: int | None = None

    def values(self, run_id: int | None) -> tuple[Any, ...]:
        return (self.image, self.kind, self.parent, self.sha256, self.stored_path, self.width, self.height,
                self.mode, self.format, json.dumps(dict(self.info), sort_keys=True), run_id)


def _derived(row: sqlite3.Row) -> Derived:
    return Derived(row["image_sha256"], row["kind"], row["parent_sha256"], row["sha256"], row["stored_path"],
                   row["width"], row["height"], row["mode"], row["format"],
                   MappingProxyType(json.loads(row["info"])), row["run_id"])


def chain(image: str, rows: Sequence[Derived], below: int | None = None) -> list[Derived]:
    """The main line from the original to the leaf (rows of rank < `below` only): the deepest file
    reachable by parent links; between two as deep, the later place of the chain."""
    usable = [r for r in rows if not is_side(r.kind) and (below is None or rank(r.kind) < below)]
    best: list[Derived] = []
    frontier: list[list[Derived]] = [[]]
    while frontier:
        path = frontier.pop()
        tip = path[-1].sha256 if path else image
        children = [r for r in usable if r.parent == tip and r not in path]
        for child in children:
            frontier.append([*path, child])
        if not children and (len(path), rank(path[-1].kind) if path else -1) > (
                len(best), rank(best[-1].kind) if best else -1):
            best = path
    return best


def side_files(image: str, rows: Sequence[Derived], line: Sequence[Derived]) -> list[Derived]:
    """Close-ups made from a file on the main line (stale ones are left out), by kind."""
    on_line = {image, *(r.sha256 for r in line)}
    return sorted((r for r in rows if is_side(r.kind) and r.parent in on_line), key=lambda r: r.kind)


class DerivedQueries:
    """The `derived` table, mixed into Manifest."""

    db: sqlite3.Connection

    def derived_rows(self) -> dict[str, list[Derived]]:
        """Image sha256 -> its derived files."""
        out: dict[str, list[Derived]] = {}
        for row in self.db.execute(f"SELECT {_COLUMNS} FROM derived ORDER BY id"):
            out.setdefault(row["image_sha256"], []).append(_derived(row))
        return out

    def count_derived(self, kind: str) -> int:
        return int(self.db.execute("SELECT COUNT(*) FROM derived WHERE kind = ?", (kind,)).fetchone()[0])


def write_derived(db: sqlite3.Connection, run_id: int, files: Iterable[Derived]) -> None:
    """Record this run's files. A file that differs from the one at its place (or is new) drops
    what earlier runs put at that place of the chain and after it, with what was made from it."""
    for d in files:
        old = db.execute("SELECT id, sha256, parent_sha256 FROM derived WHERE image_sha256 = ? AND kind = ?",
                         (d.image, d.kind)).fetchone()
        if old is not None and (old["sha256"], old["parent_sha256"]) == (d.sha256, d.parent):
            # the same file again: what was made from it stays valid
            db.execute("UPDATE derived SET info = ?, run_id = ?, stored_path = ? WHERE id = ?",
                       (json.dumps(dict(d.info), sort_keys=True), run_id, d.stored_path, old["id"]))
            continue
        stale = [r["id"] for r in db.execute(
            "SELECT id, kind FROM derived WHERE image_sha256 = ? AND (run_id IS NULL OR run_id != ?)",
            (d.image, run_id)) if rank(r["kind"]) >= rank(d.kind)]
        _delete(db, stale)
        db.execute(f"INSERT INTO derived ({_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                   d.values(run_id))


def drop_earlier_runs(db: sqlite3.Connection, stage: str, run_id: int) -> None:
    """Files that earlier runs of `stage` made and this one did not make again (an image it
    failed on, or no longer active), with what was made from them."""
    _delete(db, [r[0] for r in db.execute(
        "SELECT d.id FROM derived d JOIN runs ON runs.id = d.run_id WHERE runs.command = ? AND d.run_id != ?",
        (stage, run_id))])


def _delete(db: sqlite3.Connection, ids: list[int]) -> None:
    """Delete rows and, transitively, the rows of the same image made from them."""
    while ids:
        gone = execute_in(db, "SELECT image_sha256, sha256 FROM derived WHERE id IN ({marks})", ids)
        execute_in(db, "DELETE FROM derived WHERE id IN ({marks})", ids)
        ids = [r[0] for g in gone for r in db.execute(
            "SELECT id FROM derived WHERE image_sha256 = ? AND parent_sha256 = ?", (g[0], g[1]))]
