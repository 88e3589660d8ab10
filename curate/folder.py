"""Plain folders of images, as the commands that work without a workspace see them.

The walk is `curate import`'s (same idea of what an image is, same symlink rules), so
`curate dedupe ./raw` and `curate tag ./raw` look at exactly the files an import would take.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from curate.stages.ingest.sources import Archive, FolderTree, Problem, display


@dataclass
class FolderImages:
    relpaths: list[str] = field(default_factory=list)  # posix, relative to the root, walk order
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (file, reason)
    ignored: list[tuple[str, str]] = field(default_factory=list)


def walk_images(root: Path, exclude: Sequence[Path] = (), archives: str = "not opened") -> FolderImages:
    """Every image file below root, depth first in name order; problems with reasons."""
    tree = FolderTree(root, frozenset(os.path.realpath(p) for p in exclude))
    found = FolderImages()
    for entry in tree.entries():
        if isinstance(entry, Problem):
            bucket = found.ignored if entry.severity == "ignored" else found.skipped
            bucket.append((entry.subject, entry.reason))
        elif isinstance(entry, Archive):
            found.ignored.append((display(entry.path), f"zip archive: {archives}; `curate import` it "
                                  "into a workspace to work on its images"))
        else:
            found.relpaths.append(entry.relpath)
    return found


def resolve_target(target: Path) -> tuple[Path, str]:
    """The absolute TARGET of a command that takes a folder or a workspace, and which it is."""
    from curate.errors import CurateError
    from curate.workspace import is_workspace

    target = Path(target).absolute()
    if not target.is_dir():
        what = "does not exist" if not target.exists() else "is not a folder"
        raise CurateError(f"{target} {what}: name a folder of images or a workspace")
    return target, "workspace" if is_workspace(target) else "folder"
