"""Import-side queries of the manifest, mixed into Manifest: stored images, the origins they came
from (a source file, its stamp, its sidecars), import decisions, the identity of sources
(one real path per file, older relative forms rewritten) and what Workspace.records() reads."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterable
from typing import Any


def _now() -> str:
    from curate.manifest import now

    return now()


class OriginQueries:
    db: sqlite3.Connection

    # -- writes of one import (inside the caller's transaction) -------------------------------
    def put_image(self, sha256: str, stored: str, size: tuple[int, int], mode: str, fmt: str,
                  source_format: str, file_bytes: int, changes: list[str]) -> None:
        self.db.execute("INSERT OR IGNORE INTO images VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                        (sha256, stored, *size, mode, fmt, source_format, file_bytes,
                         json.dumps(changes), _now()))

    def put_origin(self, shown: str, root: str, kind: str, fingerprint: str, sha256: str | None,
                   status: str, sidecars: list[str], meta: dict[str, Any]) -> None:
        """One source file's row: a re-import of the same path replaces it."""
        self.db.execute(
            "INSERT INTO origins (source_path, source_root, source_kind, fingerprint, "
            "image_sha256, status, sidecars, metadata, imported_at) VALUES (?,?,?,?,?,?,?,?,?) "
            "ON CONFLICT(source_path) DO UPDATE SET source_root=excluded.source_root, "
            "source_kind=excluded.source_kind, fingerprint=excluded.fingerprint, "
            "image_sha256=excluded.image_sha256, status=excluded.status, "
            "sidecars=excluded.sidecars, metadata=excluded.metadata, "
            "imported_at=excluded.imported_at",
            (shown, root, kind, fingerprint, sha256, status, json.dumps(sidecars),
             json.dumps(meta, ensure_ascii=False, default=str), _now()))

    # -- what Workspace.records() reads ---------------------------------------------------------
    def image_records(self) -> list[sqlite3.Row]:
        """Every stored image, every column, in import order (Workspace.records())."""
        return list(self.db.execute("SELECT * FROM images ORDER BY rowid"))

    def origin_rows(self) -> list[sqlite3.Row]:
        """Origins that became images, in import order."""
        return list(self.db.execute("SELECT * FROM origins WHERE image_sha256 IS NOT NULL ORDER BY id"))

    def current_decision_rows(self) -> list[sqlite3.Row]:
        """Decisions about images that still count (the latest finished run of a replacing stage)."""
        from curate.manifest import CURRENT_DECISION

        return list(self.db.execute("SELECT * FROM decisions WHERE image_sha256 IS NOT NULL AND "
                                    f"{CURRENT_DECISION} ORDER BY id"))

    # -- one source, one identity (curate/stages/ingest/identity.py) ---------------------------
    def source_roots(self) -> list[str]:
        return [r[0] for r in self.db.execute("SELECT DISTINCT source_root FROM origins")]

    def origin_status(self) -> dict[str, str]:
        return {r[0]: r[1] for r in self.db.execute("SELECT source_path, status FROM origins")}

    def origins_under(self, root: str) -> list[str]:
        return [r[0] for r in self.db.execute("SELECT source_path FROM origins WHERE source_root = ?",
                                              (root,))]

    def rename_origin(self, old: str, new: str, new_root: str, keep_new: bool) -> None:
        """Rename one origin row (and its decisions' subject); recorded under both names, the
        row `keep_new` says survives."""
        if keep_new:
            self.db.execute("DELETE FROM origins WHERE source_path = ?", (old,))
        else:
            self.db.execute("DELETE FROM origins WHERE source_path = ?", (new,))
            self.db.execute("UPDATE origins SET source_path = ?, source_root = ? WHERE source_path = ?",
                            (new, new_root, old))
        self.db.execute("UPDATE decisions SET subject = ? WHERE subject = ?", (new, old))

    def drop_repeated_import_decisions(self, subject: str, names: Iterable[str]) -> None:
        """Import decisions about one file recorded under two names: the same decision twice
        keeps the latest, and "same bytes as <itself under its other name>" goes."""
        for name in names:
            self.db.execute("DELETE FROM decisions WHERE stage = 'import' AND subject = ? AND verdict = "
                            "'merged' AND reason = ?", (subject, f"same bytes as {name}: stored once"))
        self.db.execute(
            "DELETE FROM decisions WHERE stage = 'import' AND subject = ? AND id NOT IN ("
            "SELECT MAX(id) FROM decisions WHERE stage = 'import' AND subject = ? "
            "GROUP BY verdict, reason, image_sha256)", (subject, subject))

    def import_params(self) -> list[str]:
        """The params JSON of every import run, oldest first."""
        return [r[0] for r in self.db.execute("SELECT params FROM runs WHERE command = 'import' ORDER BY id")]
