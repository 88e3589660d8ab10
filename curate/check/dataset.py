"""Where the datasets of a repository are, and how sd-scripts will read each of them.

Two shapes, as sd-scripts knows them (REFERENCE §1):

* **dataset.toml** (`--dataset_config`): `[general]`, `[[datasets]]`, `[[datasets.subsets]]`
  with image_dir, caption_extension, class_tokens, is_reg, alpha_mask... A field missing on a
  subset is taken from its dataset, then from `[general]`, as sd-scripts does. Folder names
  are not parsed in this mode. `curate layout` writes this shape: `DATASET/img/N_name/`,
  `DATASET/reg/N_class/` and `DATASET/dataset.toml` with absolute image_dir paths.
* **folder mode** (`--train_data_dir` / `--reg_data_dir`): a folder whose subfolders are named
  `N_name` (N repeats, class tokens "name"), e.g. `img/10_sks dog/`. Without a dataset.toml
  the caption extension is unknown to us: sd-scripts defaults to `.caption` unless
  `--caption_extension` is passed, while taggers and curate write `.txt`. The check expects
  `[check] caption_ext` (default `.txt`) and warns about the default (rule
  caption-extension-default).

`discover(path)` walks down from a folder; `dataset_at(folder)` walks up from a folder (that of
a file pre-commit passes) to the dataset it belongs to.
"""

from __future__ import annotations

import json
import os
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from curate import kohya
from curate.kohya import SD_IMAGE_EXTS, Subset, parse_folder_name
from curate.kohya.folders import subdirs
from curate.kohya.toml_io import line_of

DATASET_TOML = kohya.DATASET_TOML
SD_EXTS = frozenset(SD_IMAGE_EXTS)
OTHER_IMAGE_EXTS = frozenset({".gif", ".avif", ".jxl", ".tif", ".tiff", ".heic", ".heif", ".jpe", ".jfif"})
ANY_IMAGE_EXTS = SD_EXTS | OTHER_IMAGE_EXTS
CAPTION_EXTS = (".txt", ".caption")
# Folders a dataset walk never enters: tool state, environments, caches.
PRUNE = frozenset({"node_modules", "__pycache__", "venv", "site-packages", "__MACOSX"})
# The names kohya_ss' folder preparation gives train_data_dir and reg_data_dir: such a folder
# is a dataset even when none of its subfolders has a valid N_name yet. (Broader names such as
# "images" would turn a repository's screenshots folder into a dataset full of errors.)
TRAIN_NAMES = frozenset({"img"})
REG_NAMES = frozenset({"reg"})


@dataclass
class Problem:
    path: Path
    line: int | None
    problem: str
    fix: str


@dataclass
class Dataset:
    root: Path  # the folder holding dataset.toml, or the train/reg data dir
    config_file: Path | None  # dataset.toml; None in folder mode
    subsets: list[Subset] = field(default_factory=list)
    min_bucket_reso: int | None = None
    problems: list[Problem] = field(default_factory=list)  # dataset.toml errors
    bad_folders: list[Path] = field(default_factory=list)  # folder mode: not N_name, holding images
    parents: list[Path] = field(default_factory=list)  # folders whose other children no subset reads


def has_images(folder: Path, recursive: bool = False) -> bool:
    return next(images_in(folder, recursive), None) is not None


def images_in(folder: Path, recursive: bool = False) -> Iterator[Path]:
    """Image-looking files (any case, any format) in folder, hidden files left out."""
    try:
        with os.scandir(folder) as it:
            entries = sorted(it, key=lambda e: e.name)
    except OSError:
        return
    for entry in entries:
        if entry.name.startswith("."):
            continue
        if entry.is_dir():
            # a symlinked folder is not entered: a link to a parent would never end
            if recursive and entry.name not in PRUNE and not entry.is_symlink():
                yield from images_in(Path(entry.path), True)
        elif os.path.splitext(entry.name)[1].lower() in ANY_IMAGE_EXTS:
            yield Path(entry.path)


def is_train_dir(folder: Path) -> bool:
    """A train_data_dir / reg_data_dir: an `N_name` subfolder holding images, or a folder named
    like one (img/, reg/...) whose subfolders hold images."""
    children = subdirs(folder)
    if any(parse_folder_name(c.name) and has_images(c) for c in children):
        return True
    return folder.name.lower() in TRAIN_NAMES | REG_NAMES and any(has_images(c) for c in children)


def folder_dataset(root: Path) -> Dataset:
    """A train/reg data dir in sd-scripts' folder mode (read by curate.kohya), with the folders
    holding images that sd-scripts skips for their name."""
    subsets = kohya.folder_subsets(root, is_reg=root.name.lower() in REG_NAMES)
    read = {s.image_dir for s in subsets}
    bad = [c for c in subdirs(root) if c not in read and has_images(c, recursive=True)]
    return Dataset(root, None, subsets, bad_folders=bad, parents=[root])


@dataclass
class Discovery:
    datasets: list[Dataset] = field(default_factory=list)
    configs: list[Path] = field(default_factory=list)  # *.toml / *.json that may be training configs


def discover(path: Path) -> Discovery:
    """Every dataset and candidate training config under `path`."""
    found = Discovery()
    for dirpath, dirnames, filenames in os.walk(path):
        here = Path(dirpath)
        dirnames[:] = sorted(d for d in dirnames if not d.startswith(".") and d not in PRUNE)
        found.configs += [here / f for f in sorted(filenames)
                          if f.endswith((".toml", ".json")) and not f.startswith(".")]
        if DATASET_TOML in filenames:
            found.datasets.append(read_dataset_toml(here / DATASET_TOML))
            dirnames[:] = []
        elif is_train_dir(here):
            found.datasets.append(folder_dataset(here))
            dirnames[:] = []
    return found


def dataset_at(folder: Path, cache: dict[Path, Path | None]) -> Path | None:
    """The dataset `folder` is in or is: the nearest dataset.toml at or above it, else the
    nearest train/reg data dir; None when there is none below the repository root."""
    if folder not in cache:
        chain = []
        for current in (folder, *folder.parents):
            chain.append(current)
            if os.path.exists(current / ".git") or len(chain) > 12:
                break
        toml = next((f / DATASET_TOML for f in chain if (f / DATASET_TOML).is_file()), None)
        cache[folder] = toml or next((f for f in chain if is_train_dir(f)), None)
    return cache[folder]


def load_dataset(key: Path) -> Dataset:
    """A dataset from what `dataset_at` returned."""
    return read_dataset_toml(key) if key.name == DATASET_TOML and key.is_file() else folder_dataset(key)


def read_dataset_toml(path: Path) -> Dataset:
    """A dataset.toml as sd-scripts reads it (curate.kohya.read_toml), its problems located."""
    model = kohya.read_toml(path)
    data = Dataset(path.parent, path, model.subsets,
                   problems=[Problem(path, p.line, p.problem, p.fix) for p in model.problems])
    reso = model.first.settings.get("min_bucket_reso")
    data.min_bucket_reso = reso if isinstance(reso, int) and not isinstance(reso, bool) else None
    parents = {s.image_dir.parent for s in data.subsets}
    data.parents = sorted(p for p in parents if _within(p, data.root))
    return data


def _within(folder: Path, root: Path) -> bool:
    return folder == root or root in folder.parents


@dataclass(frozen=True)
class NetworkConfig:
    path: Path
    dim: float
    alpha: float
    line: int | None


def read_network_config(path: Path) -> NetworkConfig | None:
    """network_dim / network_alpha of an sd-scripts (TOML) or kohya_ss GUI (JSON) training
    config; None for any other file. Values may be numbers or strings (the GUI saves both)."""
    try:
        if path.stat().st_size > 1 << 20:
            return None
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return None
    if "network_alpha" not in text or "network_dim" not in text:
        return None
    try:
        doc = tomllib.loads(text) if path.suffix == ".toml" else json.loads(text)
    except (tomllib.TOMLDecodeError, json.JSONDecodeError):
        return None
    dim, alpha = _find_key(doc, "network_dim"), _find_key(doc, "network_alpha")
    try:
        dim_value, alpha_value = float(dim), float(alpha)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None
    return NetworkConfig(path, dim_value, alpha_value, line_of(text, r"network_alpha"))


def _find_key(doc: Any, key: str) -> Any:
    """The first value of `key` at any depth: sd-scripts config files group keys in tables."""
    if isinstance(doc, dict):
        if key in doc:
            return doc[key]
        for value in doc.values():
            found = _find_key(value, key)
            if found is not None:
                return found
    return None
