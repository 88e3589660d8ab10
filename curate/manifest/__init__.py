"""The workspace manifest: one SQLite file holding what was imported from where, hashes, tags,
captions and every decision with its reason.

The schema is versioned with `PRAGMA user_version`; `MIGRATIONS[n]` takes a manifest from
version n-1 to n. WAL journaling makes each transaction atomic under SIGKILL, so a killed run
loses at most its open transaction and a re-run redoes exactly that.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from curate.errors import CurateError
from curate.manifest.caches import CAPTION_CACHE_TABLE, DIGESTS_TABLE, HASHES_TABLE, PAIR_SCORES_TABLE
from curate.manifest.derived import MIGRATION_7, DerivedQueries
from curate.manifest.images import ImageQueries
from curate.manifest.origins import OriginQueries
from curate.manifest.tags import TagQueries
from curate.paths import display

_SCHEMA_V1 = """
CREATE TABLE images (
    sha256        TEXT PRIMARY KEY,   -- of the source bytes: the content key
    stored_path   TEXT NOT NULL,      -- relative to the workspace root
    width         INTEGER NOT NULL,
    height        INTEGER NOT NULL,
    mode          TEXT NOT NULL,      -- PIL mode of the stored image
    format        TEXT NOT NULL,      -- format of the stored file (JPEG, PNG, WEBP)
    source_format TEXT NOT NULL,      -- format the source file was in
    file_bytes    INTEGER NOT NULL,   -- size of the stored file
    changes       TEXT NOT NULL,      -- JSON list of normalisations applied
    imported_at   TEXT NOT NULL
);
CREATE TABLE origins (
    id           INTEGER PRIMARY KEY,
    source_path  TEXT NOT NULL UNIQUE, -- folder file, or 'archive.zip!/member'
    source_root  TEXT NOT NULL,        -- the SRC argument it was found under
    source_kind  TEXT NOT NULL,        -- folder, zip, gallery-dl, hydrus, img2dataset, kohya
    fingerprint  TEXT NOT NULL,        -- size/mtime of file and sidecars: unchanged => skip
    image_sha256 TEXT REFERENCES images(sha256),  -- NULL when the file was skipped
    status       TEXT NOT NULL,        -- imported, repaired, merged, skipped
    sidecars     TEXT NOT NULL,        -- JSON list of sidecar paths read
    metadata     TEXT NOT NULL,        -- JSON: sidecar metadata, Kohya repeats, ...
    imported_at  TEXT NOT NULL
);
CREATE INDEX origins_image ON origins(image_sha256);
CREATE TABLE tags (
    image_sha256 TEXT NOT NULL REFERENCES images(sha256),
    source       TEXT NOT NULL,        -- gallery-dl, hydrus, kohya, txt, or a tagger id
    tag          TEXT NOT NULL,
    category     TEXT NOT NULL,
    confidence   REAL NOT NULL,
    PRIMARY KEY (image_sha256, source, tag)
);
CREATE TABLE captions (
    image_sha256 TEXT NOT NULL REFERENCES images(sha256),
    source       TEXT NOT NULL,
    text         TEXT NOT NULL,
    PRIMARY KEY (image_sha256, source)
);
CREATE TABLE decisions (
    id           INTEGER PRIMARY KEY,
    image_sha256 TEXT,                 -- NULL for a source file that never became an image
    subject      TEXT NOT NULL,        -- the file the decision is about, as the user knows it
    stage        TEXT NOT NULL,
    verdict      TEXT NOT NULL,
    reason       TEXT NOT NULL,
    run_id       INTEGER,
    created_at   TEXT NOT NULL
);
CREATE INDEX decisions_image ON decisions(image_sha256);
CREATE INDEX decisions_stage ON decisions(stage, verdict);
CREATE TABLE runs (
    id          INTEGER PRIMARY KEY,
    command     TEXT NOT NULL,
    params      TEXT NOT NULL,
    summary     TEXT,
    started_at  TEXT NOT NULL,
    finished_at TEXT
);
"""

# Each step is one SQL script, or a function of the connection; it runs in one transaction
# together with its version bump.
MIGRATIONS: dict[int, str | Callable[[sqlite3.Connection], None]] = {
    1: _SCHEMA_V1,
    2: HASHES_TABLE,
    # Dataset-wide choices later stages need: trigger word, class token, keep_tokens...
    3: "CREATE TABLE settings (key TEXT PRIMARY KEY, value TEXT NOT NULL);",
    # `curate filter` keeps raw scores per file content (thresholds re-judge them without
    # reading images); `curate crop` records the crop that stands in for an image in later
    # stages ('main', see Workspace.records) and its face close-ups ('closeup-N').
    4: """
CREATE TABLE quality_scores (
    content_sha256 TEXT NOT NULL,   -- of the file measured: an image, or its crop
    key            TEXT NOT NULL,   -- measures version and face detector
    scores         TEXT NOT NULL,   -- JSON
    PRIMARY KEY (content_sha256, key)
);
CREATE TABLE crops (
    image_sha256 TEXT NOT NULL REFERENCES images(sha256),
    kind         TEXT NOT NULL,     -- 'main' or 'closeup-N'
    sha256       TEXT NOT NULL,     -- of the crop file
    stored_path  TEXT NOT NULL,     -- relative to the workspace root
    width        INTEGER NOT NULL,
    height       INTEGER NOT NULL,
    mode         TEXT NOT NULL,
    format       TEXT NOT NULL,
    box          TEXT NOT NULL,     -- JSON [x, y, w, h] of the crop in the original image
    subject      TEXT NOT NULL,     -- what placed it: user, alpha, face, saliency, centre
    run_id       INTEGER,
    PRIMARY KEY (image_sha256, kind)
);
""",
    # `curate bg`: which file each cut-out was made from, so a re-run cuts from the source again.
    5: """CREATE TABLE IF NOT EXISTS backgrounds (
    image_sha256 TEXT PRIMARY KEY REFERENCES images(sha256),
    sha256       TEXT NOT NULL,  -- of the cut-out (the crops 'main' row it wrote)
    source_path  TEXT NOT NULL,  -- the file it was cut from, relative to the workspace root
    source_row   TEXT,           -- JSON of the crops 'main' row it replaced, or null
    method       TEXT NOT NULL,
    run_id       INTEGER
);
""",
    # `curate tag`: which file an image's tags were computed from (its crop, or itself), so a
    # new crop is tagged again instead of keeping the tags of pixels it no longer shows.
    6: """CREATE TABLE IF NOT EXISTS tag_inputs (
    image_sha256 TEXT NOT NULL REFERENCES images(sha256),
    source       TEXT NOT NULL,  -- the tagger, as tags.source
    input_sha256 TEXT NOT NULL,  -- of the file tagged
    PRIMARY KEY (image_sha256, source)
);
""",
    # Derived images as a chain (original -> cut-out -> crop, close-ups beside): `derived`
    # replaces `crops` and `backgrounds`, whose rows it carries forward (derived.py).
    7: MIGRATION_7,
}


# captions.source of a sentence the user wrote, and of a caption edited by hand in the dataset
# (the user caption: it wins over every stage). Other sources are imported texts.
USER_TEXT = "user"
USER_CAPTION = "user-edit"


def _annotations_v8(db: sqlite3.Connection) -> None:
    """Tags keep a `removed` mark and a caption `rank`; the working caption becomes annotations."""
    from curate.manifest.annotations import convert_working_captions

    # execute, not executescript: that would commit the migration's open transaction
    db.execute("ALTER TABLE tags ADD COLUMN removed TEXT NOT NULL DEFAULT ''")
    db.execute("ALTER TABLE tags ADD COLUMN rank INTEGER")
    convert_working_captions(db)


# Stages whose every run decides about all images afresh (a dedupe at another threshold):
# only the decisions of their latest finished run count. Import decisions accumulate. When such
# a run finishes, the earlier runs' decisions go, except those it made again unchanged, which
# keep their row and their (finished) run (images.py `_supersede`): so a decision of a replacing
# stage counts exactly when its run has finished, and an unchanged re-run rewrites no row.
REPLACING_STAGES = ("dedupe", "quality", "crop", "bg")
_REPLACING = ", ".join(repr(s) for s in REPLACING_STAGES)
CURRENT_DECISION = (
    f"(decisions.stage NOT IN ({_REPLACING}) OR decisions.run_id IN "
    "(SELECT runs.id FROM runs WHERE runs.finished_at IS NOT NULL))"
)

# Annotations as data (see curate/manifest/annotations.py): only tags, captions, settings.
MIGRATIONS[8] = _annotations_v8
# `curate caption`: what a caption model answered, by image content, model, prompt and settings,
# so an unchanged re-run asks nothing (the captions themselves are Text annotations).
MIGRATIONS[9] = CAPTION_CACHE_TABLE
# `curate dedupe`: feature-matching scores of candidate pairs, so a re-run verifies new pairs only.
MIGRATIONS[10] = PAIR_SCORES_TABLE
# `curate dedupe`: pixel digests by content (same-pixels or near), so a re-run decodes new images only.
MIGRATIONS[11] = DIGESTS_TABLE
# Replacing stages' decisions of finished runs other than the latest: they stopped counting when
# it finished, and are what CURRENT_DECISION (above) no longer tells apart. A stopped run's stay.
MIGRATIONS[12] = (
    f"DELETE FROM decisions WHERE stage IN ({_REPLACING}) "
    "AND run_id IN (SELECT id FROM runs WHERE finished_at IS NOT NULL) "
    "AND run_id != (SELECT MAX(runs.id) FROM runs WHERE runs.command = decisions.stage "
    "AND runs.finished_at IS NOT NULL);"
)
SCHEMA_VERSION = max(MIGRATIONS)



# A write waits this long for another connection's transaction before "database is locked":
# a lock held for less is simply waited for.
BUSY_TIMEOUT_S = 5.0
# Manifests open in this process, newest last: the CLI names one when an sqlite error that
# never passed through Manifest reaches it.
OPEN_PATHS: list[Path] = []


def sqlite_error_line(exc: sqlite3.Error, path: Path | None) -> str | None:
    """One line (manifest, cause, what to do) for a locked, full or read-only manifest; else None."""
    text = str(exc).lower()
    where = f"{display(path)}: " if path is not None else "the workspace manifest: "
    if "locked" in text or "busy" in text:
        return (f"{where}the manifest is locked ({exc}) for more than {BUSY_TIMEOUT_S:g} s: another "
                "curate (or sqlite) process is using the workspace: wait for it to finish or stop it, "
                "then re-run")
    if "full" in text:
        return f"{where}cannot write the manifest ({exc}): free some disk space and re-run"
    if "readonly" in text or "read-only" in text or "unable to open" in text:
        return (f"{where}cannot write the manifest ({exc}): the workspace is read-only here: make it "
                "writable or copy it to a writable folder")
    return None


def now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def migrate(db: sqlite3.Connection) -> int:
    """Bring `db` to SCHEMA_VERSION, one transaction per step; returns the starting version."""
    start = db.execute("PRAGMA user_version").fetchone()[0]
    if start > SCHEMA_VERSION:
        raise CurateError(
            f"this workspace's manifest has schema version {start}, newer than this curate "
            f"understands ({SCHEMA_VERSION}): upgrade curate"
        )
    for version in range(start + 1, SCHEMA_VERSION + 1):
        step = MIGRATIONS.get(version)
        try:
            if step is None:  # a step of another branch not merged here: nothing to do
                db.executescript(f"BEGIN IMMEDIATE;\nPRAGMA user_version = {version};\nCOMMIT;")
            elif callable(step):
                db.execute("BEGIN IMMEDIATE")
                step(db)
                db.execute(f"PRAGMA user_version = {version}")
                db.execute("COMMIT")
            else:
                db.executescript(f"BEGIN IMMEDIATE;\n{step}\nPRAGMA user_version = {version};\nCOMMIT;")
        except sqlite3.Error:
            if db.in_transaction:
                db.execute("ROLLBACK")
            raise
    return start


class Manifest(DerivedQueries, ImageQueries, OriginQueries, TagQueries):
    """Typed access to the manifest tables. Writes happen inside `transaction()`; the image-side
    queries (derived files, stage runs, scores, hashes) come from derived.py and images.py."""

    def __init__(self, path: Path) -> None:
        self.path = path
        try:
            self.db = sqlite3.connect(path, isolation_level=None, timeout=BUSY_TIMEOUT_S)
            self.db.execute(f"PRAGMA busy_timeout = {int(BUSY_TIMEOUT_S * 1000)}")
            self.db.execute("PRAGMA journal_mode=WAL")
            self.db.execute("PRAGMA synchronous=NORMAL")
            self.db.execute("PRAGMA foreign_keys=ON")
            self.db.row_factory = sqlite3.Row
            migrate(self.db)
        except sqlite3.OperationalError as exc:
            line = sqlite_error_line(exc, path)
            if line is None:
                raise
            raise CurateError(line) from exc
        except sqlite3.DatabaseError as exc:
            raise CurateError(
                f"{path}: cannot open the manifest ({exc}); if the file is damaged, move it "
                "away and re-run the import"
            ) from exc
        OPEN_PATHS.append(path)

    def close(self) -> None:
        self.db.close()
        if self.path in OPEN_PATHS:
            OPEN_PATHS.remove(self.path)

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """BEGIN IMMEDIATE ... COMMIT; a locked, full or read-only manifest is a CurateError."""
        try:
            self.db.execute("BEGIN IMMEDIATE")
            try:
                yield self.db
            except BaseException:
                if self.db.in_transaction:  # sqlite may have rolled back already (disk full)
                    self.db.execute("ROLLBACK")
                raise
            self.db.execute("COMMIT")
        except sqlite3.OperationalError as exc:
            if self.db.in_transaction:  # a COMMIT that failed leaves the transaction open
                self.db.execute("ROLLBACK")
            line = sqlite_error_line(exc, self.path)
            if line is None:
                raise
            raise CurateError(line) from exc

    # -- runs ---------------------------------------------------------------------------
    def start_run(self, command: str, params: dict[str, Any]) -> int:
        with self.transaction() as db:
            cur = db.execute(
                "INSERT INTO runs (command, params, started_at) VALUES (?, ?, ?)",
                (command, json.dumps(params, sort_keys=True), now()),
            )
        return int(cur.lastrowid or 0)

    def finish_run(self, run_id: int, summary: dict[str, Any]) -> None:
        with self.transaction() as db:
            db.execute(
                "UPDATE runs SET summary = ?, finished_at = ? WHERE id = ?",
                (json.dumps(summary, sort_keys=True), now(), run_id),
            )

    # -- reads --------------------------------------------------------------------------
    def origin_fingerprints(self) -> dict[str, str]:
        rows = self.db.execute("SELECT source_path, fingerprint FROM origins")
        return {r["source_path"]: r["fingerprint"] for r in rows}

    def first_origins(self) -> dict[str, str]:
        """Image hash -> the first file it was imported from."""
        rows = self.db.execute(
            "SELECT image_sha256, source_path FROM origins WHERE image_sha256 IS NOT NULL "
            "ORDER BY id DESC"
        )
        return {r["image_sha256"]: r["source_path"] for r in rows}

    def verdict_counts(self) -> list[tuple[str, str, int]]:
        rows = self.db.execute(
            f"SELECT stage, verdict, COUNT(*) AS n FROM decisions WHERE {CURRENT_DECISION} "
            "GROUP BY stage, verdict ORDER BY stage, verdict"
        )
        return [(r["stage"], r["verdict"], r["n"]) for r in rows]

    def count(self, table: str) -> int:
        if table not in {"images", "origins", "tags", "captions", "decisions", "runs", "derived"}:
            raise ValueError(f"unknown table {table!r}")
        return int(self.db.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0])

    def decisions(self, stage: str | None = None, verdict: str | None = None) -> list[sqlite3.Row]:
        sql, args = f"SELECT * FROM decisions WHERE {CURRENT_DECISION}", []
        if stage is not None:
            sql, args = sql + " AND stage = ?", [*args, stage]
        if verdict is not None:
            sql, args = sql + " AND verdict = ?", [*args, verdict]
        return list(self.db.execute(sql + " ORDER BY id", args))

    def settings(self) -> dict[str, Any]:
        return {r[0]: json.loads(r[1]) for r in self.db.execute("SELECT key, value FROM settings")}

    def set_settings(self, values: dict[str, Any]) -> None:
        with self.transaction() as db:
            db.executemany("INSERT OR REPLACE INTO settings (key, value) VALUES (?, ?)",
                           [(k, json.dumps(v)) for k, v in values.items()])

    def rows(self, sql: str, args: Iterable[Any] = ()) -> list[sqlite3.Row]:
        return list(self.db.execute(sql, tuple(args)))

    def add_decisions(self, rows: Iterable[tuple[str | None, str, str, str, str]],
                      run_id: int | None = None) -> None:
        """Decisions (image, subject, stage, verdict, reason) of one run."""
        self.db.executemany("INSERT INTO decisions (image_sha256, subject, stage, verdict, reason, run_id, "
                            "created_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
                            [(*r, run_id, now()) for r in rows])
