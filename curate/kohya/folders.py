"""Folder mode (`--train_data_dir` / `--reg_data_dir`), and which scraped folders are Kohya subsets.

sd-scripts reads every immediate subfolder of a train (or reg) data dir whose name
`parse_folder_name` accepts (`config_util.generate_dreambooth_subsets_config_by_subdirs`), as a
subset with those repeats and class tokens; `curate layout` and kohya_ss' folder preparation
put them in `img/` and `reg/` (`img/10_sks woman/`, `reg/1_woman/`, beside `log/` and `model/`).

Import must not take any folder named `N_...` for a subset: gallery-dl names its folders after
the search (`100_percent_orange_juice/`). `import_subset` says a folder is one only when it
holds what a subset holds and sits where a dataset puts subsets (see its docstring).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from curate.kohya.model import Dataset, DatasetConfig, Subset
from curate.kohya.rules import caption_names, parse_folder_name, sd_image

# The names kohya_ss' folder preparation gives train_data_dir and reg_data_dir (and sd-scripts'
# own README's train_<class> / reg_<class>, matched by prefix in `data_dir_kind`).
TRAIN_NAMES = frozenset({"img", "train", "training", "train_data", "train_data_dir"})
REG_NAMES = frozenset({"reg", "regularization", "regularisation", "reg_data", "reg_data_dir"})
CAPTION_EXTS = (".txt", ".caption")


def data_dir_kind(name: str) -> str | None:
    """"train" or "reg" for a folder named as kohya_ss and sd-scripts' docs name data dirs."""
    low = name.lower()
    if low in REG_NAMES or low.startswith("reg_"):
        return "reg"
    if low in TRAIN_NAMES or low.startswith("train_"):
        return "train"
    return None


def subdirs(folder: Path) -> list[Path]:
    try:
        with os.scandir(folder) as it:
            return sorted(Path(e.path) for e in it if e.is_dir() and not e.name.startswith("."))
    except OSError:
        return []


def folder_subsets(parent: Path, is_reg: bool) -> list[Subset]:
    """The subsets sd-scripts makes of a train/reg data dir: its `N_name` subfolders."""
    out = []
    for child in subdirs(parent):
        parsed = parse_folder_name(child.name)
        if parsed is not None:
            out.append(Subset(child, parsed[0], parsed[1] or None, is_reg, source=f"folder {child.name}"))
    return out


def read_folders(train_dir: Path, reg_dir: Path | None = None) -> DatasetConfig:
    """Folder mode: `--train_data_dir train_dir [--reg_data_dir reg_dir]`."""
    subsets = folder_subsets(train_dir, False) + (folder_subsets(reg_dir, True) if reg_dir else [])
    return DatasetConfig(train_dir, None, [Dataset(subsets)])


def read_project(root: Path) -> DatasetConfig:
    """A dataset folder in folder mode: root/img (+ root/reg), as `curate layout` and kohya_ss
    arrange them, else root itself as the train data dir."""
    if (root / "img").is_dir():
        reg = root / "reg"
        return read_folders(root / "img", reg if reg.is_dir() else None)
    return read_folders(root)


@dataclass(frozen=True)
class FolderSubset:
    """What import records about an image's Kohya folder (origin metadata `kohya`)."""

    folder: str
    repeats: int
    class_tokens: str
    is_reg: bool

    def as_metadata(self) -> dict[str, object]:
        return {"folder": self.folder, "repeats": self.repeats, "class_tokens": self.class_tokens,
                "is_reg": self.is_reg}


def holds_subset(names: set[str]) -> bool:
    """Whether a folder's files are a Kohya subset's: images sd-scripts globs, captions named
    after the image's stem, and no scraper sidecars (`a.jpg.json`, `a.jpg.txt`, `a.json`: gallery-dl,
    Hydrus, imgbrd-grabber and img2dataset name them after the whole file or write JSON)."""
    images = [n for n in names if sd_image(n)]
    if not images:
        return False
    stems = {os.path.splitext(n)[0] for n in images}
    for name in names:
        base, ext = os.path.splitext(name)
        if ext.lower() == ".json" and (base in stems or base in names):
            return False
        if ext.lower() in CAPTION_EXTS and base in names:  # a.jpg.txt: named after the file
            return False
    return True


def has_captions(names: set[str]) -> bool:
    return any(c in names for n in names if sd_image(n)
               for ext in CAPTION_EXTS for c in caption_names(n, ext))


def import_subset(folder: str, names: Mapping[str, set[str]], root_name: str) -> FolderSubset | None:
    """The Kohya subset a scraped folder is, or None. `folder` is posix, relative to the walked
    root (named `root_name`); `names` maps each walked folder to its entries.

    A subset when (1) sd-scripts reads its name (`parse_folder_name`), (2) it holds what a subset
    holds (`holds_subset`), and (3) it sits where a dataset puts subsets: in a data dir named as
    kohya_ss names them (`img/`, `reg/`, ...), or beside a dataset.toml, or in a folder whose
    every image folder is such a subset with caption files (a train dir of any name)."""
    parent, _, name = folder.rpartition("/")
    parsed = parse_folder_name(name) if name else None
    if parsed is None or not holds_subset(names.get(folder, set())):
        return None
    parent_name = parent.rpartition("/")[2] if parent else root_name
    kind = data_dir_kind(parent_name)
    if kind is None:
        grand = parent.rpartition("/")[0]
        beside_toml = "dataset.toml" in names.get(parent, set()) or (
            bool(parent) and "dataset.toml" in names.get(grand, set()))
        if not beside_toml and not _train_dir(parent, names):
            return None
    return FolderSubset(name, parsed[0], parsed[1], kind == "reg")


def _train_dir(parent: str, names: Mapping[str, set[str]]) -> bool:
    prefix = f"{parent}/" if parent else ""
    children = [f for f in names if f.startswith(prefix) and f != parent and "/" not in f[len(prefix):]]
    with_images = [c for c in children if any(sd_image(n) for n in names[c])]
    return bool(with_images) and all(
        parse_folder_name(c.rpartition("/")[2]) is not None and holds_subset(names[c])
        and has_captions(names[c]) for c in with_images)
