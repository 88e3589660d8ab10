"""Annotation queries of the manifest, mixed into Manifest: tags (with their removed marks and
caption ranks), texts (sentences), user captions and the caption model's cache. Writers run
inside the caller's `transaction()`, so a stage commits its batch at once."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable

from curate.manifest.caches import read_captions, write_captions
from curate.record import Tag, Text


class TagQueries:
    db: sqlite3.Connection

    TAG_COLUMNS = "rowid, image_sha256, source, tag, category, confidence, removed, rank"

    def tag_rows(self, image: str | None = None, source: str | None = None) -> list[sqlite3.Row]:
        """Tag rows in insertion order, optionally of one image and/or one source."""
        sql, args = f"SELECT {self.TAG_COLUMNS} FROM tags WHERE 1", []
        for column, value in (("image_sha256", image), ("source", source)):
            if value is not None:
                sql, args = sql + f" AND {column} = ?", [*args, value]
        return list(self.db.execute(sql + " ORDER BY image_sha256, rowid", args))

    def tag_sources(self, prefix: str) -> list[str]:
        rows = self.db.execute("SELECT DISTINCT source FROM tags WHERE source LIKE ? ORDER BY source",
                               (prefix + "%",))
        return [r[0] for r in rows]

    def tagged_images(self, source: str) -> set[str]:
        rows = self.db.execute("SELECT DISTINCT image_sha256 FROM tags WHERE source = ?", (source,))
        return {r[0] for r in rows}

    def tag_inputs(self, source: str) -> dict[str, str]:
        rows = self.db.execute("SELECT image_sha256, input_sha256 FROM tag_inputs WHERE source = ?",
                               (source,))
        return {r[0]: r[1] for r in rows}

    def text_rows(self) -> list[sqlite3.Row]:
        """Texts and user captions: user ones first, then by source."""
        return list(self.db.execute("SELECT image_sha256, source, text FROM captions "
                                    "ORDER BY image_sha256, source NOT LIKE 'user%', source"))

    def add_imported(self, image: str, tags: Iterable[Tag], texts: Iterable[Text]) -> None:
        """What an import's sidecars say: tags (canonical name, category, source) and sentence
        texts, each kept with its own source (a .txt's tags and a .caption's sentence both)."""
        self.db.executemany("INSERT OR IGNORE INTO tags (image_sha256, source, tag, category, confidence) "
                            "VALUES (?, ?, ?, ?, ?)",
                            [(image, t.source, t.name, t.category, t.confidence) for t in tags])
        self.db.executemany("INSERT OR REPLACE INTO captions (image_sha256, source, text) VALUES (?, ?, ?)",
                            [(image, t.source, t.text) for t in texts])

    def replace_scores(self, image: str, source: str, rows: Iterable[tuple[str, str, float]],
                       input_sha: str) -> None:
        """A tagger's scores for an image, replacing its earlier ones; a tag the user or a filter
        rule removed stays removed under the new scores."""
        kept = {r[0]: r[1] for r in self.db.execute(
            "SELECT tag, removed FROM tags WHERE image_sha256 = ? AND source = ? AND removed != '' "
            "AND removed NOT LIKE 'tag:%'", (image, source))}
        self.db.execute("DELETE FROM tags WHERE image_sha256 = ? AND source = ?", (image, source))
        self.db.executemany("INSERT OR REPLACE INTO tags (image_sha256, source, tag, category, confidence, "
                            "removed) VALUES (?, ?, ?, ?, ?, ?)",
                            [(image, source, n, c, p, kept.get(n, "")) for n, c, p in rows])
        self.db.execute("INSERT OR REPLACE INTO tag_inputs (image_sha256, source, input_sha256) "
                        "VALUES (?, ?, ?)", (image, source, input_sha))

    def put_tags(self, image: str, source: str, tags: Iterable[tuple[str, str, float, int | None]]) -> None:
        """Tags (name, category, confidence, rank) of `source`, kept, replacing same-named ones."""
        self.db.executemany("INSERT OR REPLACE INTO tags (image_sha256, source, tag, category, confidence, "
                            "removed, rank) VALUES (?, ?, ?, ?, ?, '', ?)",
                            [(image, source, *t) for t in tags])

    def delete_tags(self, image: str, source: str) -> None:
        self.db.execute("DELETE FROM tags WHERE image_sha256 = ? AND source = ?", (image, source))

    def mark_tags(self, marks: Iterable[tuple[int, str, int | None]]) -> None:
        """(rowid, removed, rank) for each tag row: who took it out ('' = kept), its place."""
        self.db.executemany("UPDATE tags SET removed = ?, rank = ? WHERE rowid = ?",
                            [(removed, rank, rowid) for rowid, removed, rank in marks])

    def clear_filter_marks(self) -> None:
        """Bring back every tag a `curate tags filter` rule removed (the next run re-decides)."""
        self.db.execute("UPDATE tags SET removed = '' WHERE removed NOT IN ('', 'user') "
                        "AND removed NOT LIKE 'tag:%'")

    def set_user_caption(self, image: str, source: str, text: str) -> None:
        self.db.execute("INSERT OR REPLACE INTO captions (image_sha256, source, text) VALUES (?, ?, ?)",
                        (image, source, text))

    def put_text(self, image: str, source: str, text: str, *, replaces: str | None = None) -> None:
        """A sentence of `source`; `replaces` (a source prefix such as "vlm:") drops the image's
        other texts under it first, so one model sentence stands for the image."""
        if replaces is not None:
            self.db.execute("DELETE FROM captions WHERE image_sha256 = ? AND substr(source, 1, ?) = ? "
                            "AND source != ?", (image, len(replaces), replaces, source))
        self.db.execute("INSERT OR REPLACE INTO captions (image_sha256, source, text) VALUES (?, ?, ?)",
                        (image, source, text))

    def delete_text(self, image: str, source: str) -> None:
        self.db.execute("DELETE FROM captions WHERE image_sha256 = ? AND source = ?", (image, source))

    def cached_captions(self, keys: Iterable[str]) -> dict[str, str]:
        """Cache key -> what the caption model answered (curate.manifest.caches.CAPTION_CACHE_TABLE)."""
        return read_captions(self.db, keys)

    def cache_captions(self, rows: Iterable[tuple[str, str, str, str]]) -> None:
        """(key, text, source, created_at) rows, inside the caller's transaction."""
        write_captions(self.db, rows)
