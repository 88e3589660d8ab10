"""One source, one identity: a folder is recorded by its real absolute path however it is named.

`curate run` names a source relative to the workspace (`../raw`), `curate import` relative to
the cwd (`./raw`); recorded as typed, the same files had two names and were imported, counted
and listed twice. Sources are now made canonical before the walk, and the forms that older
imports recorded (relative, `..`, through a symlink) are rewritten to the canonical one the
first time an import sees them, so existing workspaces stop doubling too.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from curate.paths import display
from curate.workspace import Workspace


def canonical_source(src: Path) -> Path:
    """SRC as its real absolute path; a single file keeps its own name (a symlinked image is
    still found under the name the user gave, in the real folder that holds the link)."""
    src = Path(os.path.abspath(src))
    if src.is_dir():
        return Path(os.path.realpath(src))
    return Path(os.path.realpath(src.parent)) / src.name


def _canonical_root(root: str, bases: list[Path]) -> str | None:
    """The canonical form of a recorded source_root, or None when it is one already or cannot
    be found again (then it is left as it was)."""
    candidates = [Path(root)] if os.path.isabs(root) else [base / root for base in bases]
    for path in candidates:
        if os.path.lexists(path):
            real = display(canonical_source(path))
            return None if real == root else real
    return None


def migrate_origins(ws: Workspace, cwd: Path) -> int:
    """Rewrite origins (and their decisions) recorded under a non-canonical source root; a
    file recorded under both forms keeps one row. Returns how many files were renamed.

    A relative root was relative to the cwd of that import, which is not recorded: the current
    cwd and the workspace's parent are tried, and a root found under neither stays as it is.
    """
    m = ws.manifest
    roots = [r[0] for r in m.rows("SELECT DISTINCT source_root FROM origins")]
    moves = {root: new for root in roots if (new := _canonical_root(root, [cwd, ws.root])) is not None}
    if not moves:
        return 0
    status = {r[0]: r[1] for r in m.rows("SELECT source_path, status FROM origins")}
    forms: dict[str, set[str]] = {}  # canonical name -> every name it was recorded under
    with m.transaction() as db:
        for old_root, new_root in moves.items():
            for (old,) in db.execute("SELECT source_path FROM origins WHERE source_root = ?",
                                     (old_root,)).fetchall():
                new = new_root + old[len(old_root):] if old.startswith(old_root) else old
                _rewrite(db, old, new, new_root, status)
                forms.setdefault(new, {new}).add(old)
        for new, names in forms.items():
            _drop_repeats(db, new, names)
    return len(forms)


def _rewrite(db: Any, old: str, new: str, new_root: str, status: dict[str, str]) -> None:
    """Rename one origin row; recorded under both names, the row that is not a "merged" one
    (the file merged with itself under its other name) stays."""
    if new in status and not (status[new] == "merged" and status[old] != "merged"):
        db.execute("DELETE FROM origins WHERE source_path = ?", (old,))
    else:
        db.execute("DELETE FROM origins WHERE source_path = ?", (new,))
        db.execute("UPDATE origins SET source_path = ?, source_root = ? WHERE source_path = ?",
                   (new, new_root, old))
        status[new] = status[old]
    db.execute("UPDATE decisions SET subject = ? WHERE subject = ?", (new, old))


def _drop_repeats(db: Any, subject: str, names: set[str]) -> None:
    """Import decisions about one file recorded under two names: the same decision twice keeps
    the latest, and "same bytes as <itself under its other name>" goes."""
    for name in names:
        db.execute("DELETE FROM decisions WHERE stage = 'import' AND subject = ? AND verdict = "
                   "'merged' AND reason = ?", (subject, f"same bytes as {name}: stored once"))
    db.execute(
        "DELETE FROM decisions WHERE stage = 'import' AND subject = ? AND id NOT IN ("
        "SELECT MAX(id) FROM decisions WHERE stage = 'import' AND subject = ? "
        "GROUP BY verdict, reason, image_sha256)", (subject, subject))


def recorded_sources(ws: Workspace, cwd: Path) -> list[Path]:
    """The SRC arguments earlier imports into this workspace named, canonical, that still
    exist, in the order first imported."""
    found: list[Path] = []
    for (params,) in ws.manifest.rows("SELECT params FROM runs WHERE command = 'import' ORDER BY id"):
        try:
            sources = json.loads(params).get("sources", [])
        except (ValueError, AttributeError):
            continue
        for source in sources if isinstance(sources, list) else []:
            bases = [Path(source)] if os.path.isabs(source) else [cwd / source, ws.root / source]
            path = next((canonical_source(p) for p in bases if os.path.lexists(p)), None)
            if path is not None and path not in found:
                found.append(path)
    return found
