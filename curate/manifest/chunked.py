"""Queries over a list longer than SQLite lets one statement bind."""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from typing import Any

# Under SQLite's bound-parameter limit (999 before 3.32), with room for a query's other parameters.
CHUNK = 500


def execute_in(db: sqlite3.Connection, sql: str, values: Sequence[Any],
              params: Sequence[Any] = ()) -> list[Any]:
    """`sql` run for every value: its `{marks}` is an IN list's placeholders, filled chunk by
    chunk after `params`. Returns the rows in chunk order (sort them where order matters)."""
    rows: list[Any] = []
    for start in range(0, len(values), CHUNK):
        chunk = list(values[start:start + CHUNK])
        rows += db.execute(sql.format(marks=", ".join("?" * len(chunk))), [*params, *chunk])
    return rows
