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

from curate.paths import display, is_url
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
    roots = m.source_roots()
    moves = {root: new for root in roots if (new := _canonical_root(root, [cwd, ws.root])) is not None}
    if not moves:
        return 0
    status = m.origin_status()
    forms: dict[str, set[str]] = {}  # canonical name -> every name it was recorded under
    with m.transaction():
        for old_root, new_root in moves.items():
            for old in m.origins_under(old_root):
                new = new_root + old[len(old_root):] if old.startswith(old_root) else old
                # recorded under both names, the row that is not a "merged" one (the file
                # merged with itself under its other name) stays
                keep_new = new in status and not (status[new] == "merged" and status[old] != "merged")
                m.rename_origin(old, new, new_root, keep_new)
                if not keep_new:
                    status[new] = status[old]
                forms.setdefault(new, {new}).add(old)
        for new, names in forms.items():
            m.drop_repeated_import_decisions(new, names)
    return len(forms)


def recorded_sources(ws: Workspace, cwd: Path) -> list[Path | str]:
    """The SRC arguments earlier imports into this workspace named, canonical, that still
    exist (URLs as they were: whether they still answer is the import's to say), in the order
    first imported."""
    found: list[Path | str] = []
    for params in ws.manifest.import_params():
        try:
            sources = json.loads(params).get("sources", [])
        except (ValueError, AttributeError):
            continue
        for source in sources if isinstance(sources, list) else []:
            if is_url(source):
                if source not in found:
                    found.append(source)
                continue
            bases = [Path(source)] if os.path.isabs(source) else [cwd / source, ws.root / source]
            path = next((canonical_source(p) for p in bases if os.path.lexists(p)), None)
            if path is not None and path not in found:
                found.append(path)
    return found
