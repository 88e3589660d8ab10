"""Image-side queries of the manifest, mixed into Manifest: a stage run's one commit (its row,
derived files, decisions and end), quality scores, perceptual hashes, the views `curate run`
keys its stages on, and the counts status and report show."""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import AbstractContextManager
from typing import Any, NamedTuple

from curate.manifest.caches import Hash, read_hashes, write_hashes
from curate.manifest.chunked import execute_in
from curate.manifest.derived import Derived, drop_earlier_runs, write_derived

# What `curate run` hashes for each view part (pipeline/state.py); keys it stores itself (under
# this prefix in settings) are left out, and so are run ids: a re-run that made the same files
# is the same state.
STAGE_KEY_PREFIX = "run.stage."
VIEW_QUERIES = {
    "images": "SELECT sha256 FROM images ORDER BY sha256",
    # removed marks and ranks too: a filter rule or a hand reorder changes what layout writes
    "tags": "SELECT image_sha256, source, tag, category, round(confidence, 6), removed, rank FROM tags "
            "ORDER BY 1, 2, 3",
    "captions": "SELECT image_sha256, source, text FROM captions ORDER BY 1, 2",
    "derived": "SELECT image_sha256, kind, parent_sha256, sha256, info FROM derived ORDER BY 1, 2",
    "settings": f"SELECT key, value FROM settings WHERE key NOT LIKE '{STAGE_KEY_PREFIX}%' ORDER BY key",
}


class NewDecision(NamedTuple):
    """A decision a stage run makes, written when the run commits (a tuple: a dedupe run makes
    one per duplicate and keeper, and compares each with the last run's)."""

    image: str | None  # None: a source file that never became an image
    subject: str  # the file as the user knows it
    verdict: str
    reason: str


class ImageRow(NamedTuple):  # a tuple: read for every image on a full dedupe run
    sha256: str
    stored_path: str
    width: int
    height: int
    format: str
    file_bytes: int
    rowid: int  # import order: rows are only ever added, never changed


_IMAGE_ROW = "SELECT sha256, stored_path, width, height, format, file_bytes, rowid FROM images"


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def _params_json(params: dict[str, Any]) -> str:
    return json.dumps(params, sort_keys=True, default=str)


def _new_run(db: sqlite3.Connection, stage: str, params: dict[str, Any]) -> int:
    return int(db.execute("INSERT INTO runs (command, params, started_at) VALUES (?, ?, ?)",
                          (stage, _params_json(params), _now())).lastrowid or 0)


def _decide(db: sqlite3.Connection, run_id: int, stage: str, decisions: Sequence[NewDecision]) -> None:
    now = _now()
    db.executemany("INSERT INTO decisions (image_sha256, subject, stage, verdict, reason, run_id, "
                   "created_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
                   [(d.image, d.subject, stage, d.verdict, d.reason, run_id, now) for d in decisions])


def _supersede(db: sqlite3.Connection, run_id: int, stage: str,
               decisions: Sequence[NewDecision]) -> list[NewDecision]:
    """A replacing stage's earlier decisions stop counting when this run finishes, so they go;
    those this run makes again unchanged stay as they are (their finished run keeps them current:
    CURRENT_DECISION). Returns the decisions still to write.

    Why: a re-run decides about every image again, and writing every one anew both cost most of
    an unchanged `curate dedupe` re-run (17,700 rows at 30,000 images) and grew the table by that
    much per run (136,000 rows after 8 runs). A stopped run's rows never count, so they go."""
    earlier: dict[tuple[str | None, str, str, str], list[int]] = {}
    gone = []
    for row_id, finished, *key in db.execute(
            "SELECT d.id, r.finished_at IS NOT NULL, d.image_sha256, d.subject, d.verdict, d.reason "
            "FROM decisions d LEFT JOIN runs r ON r.id = d.run_id "
            "WHERE d.stage = ? AND (d.run_id IS NULL OR d.run_id != ?)", (stage, run_id)):
        if finished:
            earlier.setdefault(tuple(key), []).append(row_id)  # type: ignore[arg-type]
        else:
            gone.append(row_id)
    rest = []
    for d in decisions:
        same = earlier.get((d.image, d.subject, d.verdict, d.reason))
        if same:
            same.pop()  # that row stays
        else:
            rest.append(d)
    gone += [i for ids in earlier.values() for i in ids]
    db.executemany("DELETE FROM decisions WHERE id = ?", [(i,) for i in gone])
    return rest


def _finish(db: sqlite3.Connection, run_id: int, stage: str, summary: dict[str, Any],
            files: Sequence[Derived], decisions: Sequence[NewDecision], replacing: bool) -> None:
    write_derived(db, run_id, files)
    if replacing:
        drop_earlier_runs(db, stage, run_id)
        decisions = _supersede(db, run_id, stage, decisions)
    _decide(db, run_id, stage, decisions)
    db.execute("UPDATE runs SET summary = ?, finished_at = ? WHERE id = ?",
               (json.dumps(summary, sort_keys=True, default=str), _now(), run_id))


class ImageQueries:
    """Mixed into Manifest (which gives `db` and `transaction`)."""

    db: sqlite3.Connection
    transaction: Callable[[], AbstractContextManager[sqlite3.Connection]]

    # -- a stage run --------------------------------------------------------------------
    def commit_run(self, stage: str, params: dict[str, Any], summary: dict[str, Any],
                   files: Sequence[Derived], decisions: Sequence[NewDecision], *, replacing: bool) -> int:
        """A finished stage run in one transaction: its row, its derived files (a replacing
        stage's earlier files it did not make again are dropped), its decisions and its end."""
        with self.transaction() as db:
            run_id = _new_run(db, stage, params)
            _finish(db, run_id, stage, summary, files, decisions, replacing)
        return run_id

    # A streaming run (stages whose per-image results are committed as they come back): its row
    # first, then its files and decisions in short transactions, then its end.
    def open_run(self, stage: str, params: dict[str, Any]) -> tuple[int, set[str]]:
        """The run's id and the images it already decided: the interrupted (unfinished) last run
        of `stage` with the same params is continued when no run of any stage has finished since
        it started (what it made still stands on the same inputs); else a new run."""
        params_json = _params_json(params)
        with self.transaction() as db:
            last = db.execute("SELECT id, params, finished_at FROM runs WHERE command = ? ORDER BY id DESC "
                              "LIMIT 1", (stage,)).fetchone()
            later = last is not None and db.execute(
                "SELECT 1 FROM runs WHERE id > ? AND finished_at IS NOT NULL", (last[0],)).fetchone()
            if last is not None and last[2] is None and last[1] == params_json and later is None:
                decided = db.execute("SELECT image_sha256 FROM decisions WHERE run_id = ? AND stage = ? "
                                     "AND image_sha256 IS NOT NULL", (last[0], stage))
                return int(last[0]), {row[0] for row in decided}
            return _new_run(db, stage, params), set()

    def commit_part(self, run_id: int, stage: str, files: Sequence[Derived],
                    decisions: Sequence[NewDecision]) -> None:
        """Some of an open run's files and decisions (each image's file before its decision)."""
        with self.transaction() as db:
            write_derived(db, run_id, files)
            _decide(db, run_id, stage, decisions)

    def end_run(self, run_id: int, stage: str, summary: dict[str, Any], files: Sequence[Derived],
                   decisions: Sequence[NewDecision], *, replacing: bool) -> None:
        """An open run's last files and decisions, and its end (see commit_run)."""
        with self.transaction() as db:
            _finish(db, run_id, stage, summary, files, decisions, replacing)

    # -- images and origins -------------------------------------------------------------
    def image_rows(self, after: int = 0) -> list[ImageRow]:
        """Every stored image (imported after row `after`), in import order."""
        return list(map(ImageRow._make, self.db.execute(f"{_IMAGE_ROW} WHERE rowid > ? ORDER BY rowid",
                                                        (after,))))

    def image_rows_at(self, rowids: Sequence[int]) -> list[ImageRow]:
        """The images with these row ids, in import order."""
        rows = execute_in(self.db, _IMAGE_ROW + " WHERE rowid IN ({marks})", [int(r) for r in rowids])
        return sorted(map(ImageRow._make, rows), key=lambda r: r.rowid)

    def image_count(self, upto: int) -> int:
        """How many images there are up to row `upto`."""
        return int(self.db.execute("SELECT COUNT(*) FROM images WHERE rowid <= ?", (upto,)).fetchone()[0])

    def origin_aliases(self, shas: Sequence[str] | None = None) -> dict[str, list[str]]:
        """Image sha256 -> every source file it was imported from, the first one first (for
        every image, or for these)."""
        out: dict[str, list[str]] = {}
        if shas is None:
            rows: Iterable[tuple[str, str]] = self.db.execute(
                "SELECT image_sha256, source_path FROM origins WHERE image_sha256 IS NOT NULL ORDER BY id")
        else:
            found = execute_in(self.db, "SELECT image_sha256, source_path, id FROM origins "
                              "WHERE image_sha256 IN ({marks})", shas)
            rows = [r[:2] for r in sorted(found, key=lambda r: r[2])]
        for sha, path in rows:
            out.setdefault(sha, []).append(path)
        return out

    def images_by_source_kind(self) -> dict[str, int]:
        return {r[0]: r[1] for r in self.db.execute(
            "SELECT source_kind, COUNT(*) AS n FROM origins WHERE image_sha256 IS NOT NULL "
            "GROUP BY source_kind ORDER BY n DESC, source_kind")}

    def recent_runs(self, limit: int = 5) -> list[dict[str, Any]]:
        return [dict(r) for r in self.db.execute(
            "SELECT command, started_at, finished_at, summary FROM runs ORDER BY id DESC LIMIT ?", (limit,))]

    def count_verdict(self, verdict: str) -> int:
        """Current decisions with this verdict (every one, not images: a tag removal is per tag)."""
        from curate.manifest import CURRENT_DECISION

        return int(self.db.execute(f"SELECT COUNT(*) FROM decisions WHERE verdict = ? AND {CURRENT_DECISION}",
                                   (verdict,)).fetchone()[0])

    # -- quality scores and perceptual hashes ---------------------------------------------
    def quality_scores(self, key: str) -> dict[str, dict[str, Any]]:
        """Content sha256 -> the scores measured under `key`."""
        return {r[0]: json.loads(r[1]) for r in self.db.execute(
            "SELECT content_sha256, scores FROM quality_scores WHERE key = ?", (key,))}

    def save_quality_scores(self, key: str, scores: dict[str, dict[str, Any]]) -> None:
        with self.transaction() as db:
            db.executemany("INSERT OR REPLACE INTO quality_scores (content_sha256, key, scores) "
                           "VALUES (?, ?, ?)",
                           [(sha, key, json.dumps(s, sort_keys=True)) for sha, s in scores.items()])

    def hashes(self, shas: Iterable[str], key: str, need_mirrored: bool) -> dict[str, Hash]:
        return read_hashes(self.db, shas, key, need_mirrored)

    def save_hashes(self, key: str, rows: Iterable[tuple[str, int, int | None]]) -> None:
        with self.transaction() as db:
            write_hashes(db, key, rows)

    def pair_scores(self, key: str, pairs: Sequence[tuple[str, str]]) -> dict[tuple[str, str], float]:
        """Remembered verification scores of these (sha256, sha256) pairs under `key`."""
        wanted = set(pairs)
        return {(a, b): score for a, b, score in self.db.execute(
            "SELECT a, b, score FROM pair_scores WHERE key = ?", (key,)) if (a, b) in wanted}

    def save_pair_scores(self, key: str, scores: dict[tuple[str, str], float]) -> None:
        with self.transaction() as db:
            db.executemany("INSERT OR REPLACE INTO pair_scores (a, b, key, score) VALUES (?, ?, ?, ?)",
                           [(a, b, key, s) for (a, b), s in scores.items()])

    def pixel_digests(self) -> dict[str, str]:
        """Remembered pixel digests (dedupe's same-pixels test) by content key."""
        return dict(self.db.execute("SELECT sha256, digest FROM pixel_digests"))

    def save_pixel_digests(self, digests: dict[str, str]) -> None:
        with self.transaction() as db:
            db.executemany("INSERT OR REPLACE INTO pixel_digests (sha256, digest) VALUES (?, ?)",
                           list(digests.items()))

    # -- what `curate run` keys its stages on ----------------------------------------------
    def view_rows(self, part: str) -> Iterator[list[Any]]:
        if part not in VIEW_QUERIES:
            raise ValueError(f"unknown view part {part!r}")
        for row in self.db.execute(VIEW_QUERIES[part]):
            yield list(row)
