"""Which imported images come from a Kohya dataset, and with what repeats, class tokens and
reg flag (recorded as the origin's `kohya` metadata, which `curate layout` lays out again).

Two ways a folder is a subset: a dataset.toml beside its data dir (or beside the folder) lists
it as an image_dir (its num_repeats, class_tokens, is_reg; folder names are not parsed then, as
in sd-scripts), or folder mode, decided by curate.kohya.import_subset: a name sd-scripts reads,
the files a subset holds, in a place a dataset puts subsets.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from curate.kohya import DATASET_TOML, Subset, import_subset, read_toml
from curate.stages.ingest.sources import FolderTree, SourceTree


def kohya_subset(tree: SourceTree, folder: str) -> dict[str, Any] | None:
    """The `kohya` origin metadata for images in `folder` (posix, relative to the tree), or None."""
    cache: dict[str, dict[str, Any] | None] = tree.__dict__.setdefault("_kohya_subsets", {})
    if folder not in cache:
        cache[folder] = _toml_subset(tree, folder) or _folder_subset(tree, folder)
    return cache[folder]


def _folder_subset(tree: SourceTree, folder: str) -> dict[str, Any] | None:
    found = import_subset(folder, tree.names, tree.root_name) if folder else None
    return found.as_metadata() if found else None


def _toml_subset(tree: SourceTree, folder: str) -> dict[str, Any] | None:
    """The subset of a dataset.toml in the folder's parent or grandparent whose image_dir it is
    (on disk only: an archived dataset.toml names paths of the machine that wrote it)."""
    if not isinstance(tree, FolderTree):
        return None
    real = os.path.realpath(tree.root / folder)
    for parent in (Path(real).parent, Path(real).parent.parent):
        if not (parent / DATASET_TOML).is_file():
            continue
        for subset in read_toml(parent / DATASET_TOML).subsets:
            if os.path.realpath(subset.image_dir) == real:
                return _metadata(subset)
    return None


def _metadata(subset: Subset) -> dict[str, Any]:
    out: dict[str, Any] = {"folder": subset.image_dir.name, "repeats": subset.num_repeats,
                           "class_tokens": subset.class_tokens or "", "is_reg": subset.is_reg}
    if subset.caption_extension:
        out["caption_extension"] = subset.caption_extension
    return out
