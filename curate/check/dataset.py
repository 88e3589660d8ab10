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
import re
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from curate.kohya import SD_IMAGE_EXTS, caption_extension, parse_folder_name

DATASET_TOML = "dataset.toml"
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
SUBSET_HEADER = r"^\s*\[\[\s*datasets\.subsets\s*\]\]"


@dataclass(frozen=True)
class Subset:
    """One image folder and the settings sd-scripts reads it with."""

    image_dir: Path
    is_reg: bool = False
    caption_extension: str | None = None  # as set in dataset.toml; None = not set anywhere
    alpha_mask: bool = False
    class_tokens: str | None = None
    keep_tokens: int = 0  # leading tags sd-scripts holds in place when it shuffles
    keep_tokens_separator: str = ""
    # keep_tokens_separator only splits when tags move (shuffle, tag dropout, token warm-up);
    # otherwise sd-scripts trains the separator as text
    tags_move: bool = False
    enable_wildcard: bool = False  # every non-blank caption line is an alternative
    caption_prefix: str = ""
    caption_suffix: str = ""
    captions_from_files: bool = True  # False: fine-tuning metadata_file supplies the captions
    source: str = ""  # "dataset.toml subset 2" or "folder 10_sks"


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


def _subdirs(folder: Path) -> list[Path]:
    try:
        with os.scandir(folder) as it:
            return sorted(Path(e.path) for e in it if e.is_dir() and not e.name.startswith("."))
    except OSError:
        return []


def is_train_dir(folder: Path) -> bool:
    """A train_data_dir / reg_data_dir: an `N_name` subfolder holding images, or a folder named
    like one (img/, reg/...) whose subfolders hold images."""
    children = _subdirs(folder)
    if any(parse_folder_name(c.name) and has_images(c) for c in children):
        return True
    return folder.name.lower() in TRAIN_NAMES | REG_NAMES and any(has_images(c) for c in children)


def folder_dataset(root: Path) -> Dataset:
    """A train/reg data dir in sd-scripts' folder mode."""
    data = Dataset(root, None, parents=[root])
    is_reg = root.name.lower() in REG_NAMES
    for child in _subdirs(root):
        parsed = parse_folder_name(child.name)
        if parsed is None:
            if has_images(child, recursive=True):
                data.bad_folders.append(child)
            continue
        data.subsets.append(Subset(child, is_reg, class_tokens=parsed[1], source=f"folder {child.name}"))
    return data


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


def line_of(text: str, pattern: str) -> int | None:
    """1-based line of the first match of regex `pattern`."""
    return next((n for n, line in enumerate(text.splitlines(), 1) if re.search(pattern, line)), None)


def read_dataset_toml(path: Path) -> Dataset:
    data = Dataset(path.parent, path)
    try:
        text = path.read_text(encoding="utf-8")
        doc = tomllib.loads(text)
    except (OSError, UnicodeDecodeError) as exc:
        data.problems.append(Problem(path, None, f"cannot be read ({exc})", "re-save it as UTF-8"))
        return data
    except tomllib.TOMLDecodeError as exc:
        line = re.search(r"at line (\d+)", str(exc))
        data.problems.append(Problem(path, int(line[1]) if line else None, f"not valid TOML ({exc})",
                                     "fix the syntax; sd-scripts refuses the file"))
        return data
    general = doc.get("general", {}) if isinstance(doc.get("general"), dict) else {}
    datasets = doc.get("datasets")
    if not isinstance(datasets, list) or not datasets:
        data.problems.append(Problem(path, None, "has no [[datasets]] table",
                                     "add [[datasets]] with [[datasets.subsets]] image_dir = ..."))
        return data
    subset_number = 0
    for number, dataset in enumerate(datasets, 1):
        if not isinstance(dataset, dict) or not dataset.get("subsets"):
            data.problems.append(Problem(path, _nth_line(text, r"^\s*\[\[\s*datasets\s*\]\]", number),
                                         f"dataset {number} has no subsets", "add [[datasets.subsets]] "
                                         "with image_dir = ... under it"))
            continue
        if data.min_bucket_reso is None:
            reso = dataset.get("min_bucket_reso", general.get("min_bucket_reso"))
            data.min_bucket_reso = reso if isinstance(reso, int) else None
        for table in dataset["subsets"]:
            subset_number += 1
            if not isinstance(table, dict):
                continue
            line = _nth_line(text, SUBSET_HEADER, subset_number)
            subset = _subset(data, text, table, (dataset, general), subset_number, line)
            if subset is not None:
                data.subsets.append(subset)
    parents = {s.image_dir.parent for s in data.subsets}
    data.parents = sorted(p for p in parents if _within(p, data.root))
    return data


def _nth_line(text: str, pattern: str, n: int) -> int | None:
    hits = [i + 1 for i, line in enumerate(text.splitlines()) if re.search(pattern, line)]
    return hits[n - 1] if len(hits) >= n else None


def _within(folder: Path, root: Path) -> bool:
    return folder == root or root in folder.parents


def _pick(table: dict[str, Any], outer: tuple[dict[str, Any], ...], key: str) -> Any:
    """A subset field as sd-scripts resolves it: the subset, else its dataset, else [general]."""
    for level in (table, *outer):
        if key in level:
            return level[key]
    return None


def _subset(data: Dataset, text: str, table: dict[str, Any], outer: tuple[dict[str, Any], ...],
            number: int, line: int | None) -> Subset | None:
    where, config = f"subset {number}", data.config_file or data.root
    image_dir, metadata = table.get("image_dir"), table.get("metadata_file")
    if not isinstance(image_dir, str) or not image_dir:
        if not metadata:
            data.problems.append(Problem(config, line, f"{where} has no image_dir",
                                         "set image_dir = \"path/to/10_name\""))
        return None
    folder = _resolve(data.root, image_dir)
    if folder is None:
        data.problems.append(Problem(config, line, f"{where}: image_dir {image_dir!r} does not exist",
                                     "fix the path (relative paths are resolved from sd-scripts' "
                                     "working folder; curate layout writes absolute ones)"))
        return None
    ext = _pick(table, outer, "caption_extension")
    if ext is not None and not isinstance(ext, str):
        data.problems.append(Problem(config, line_of(text, r"caption_extension") or line,
                                     f"caption_extension {ext!r} is not a string",
                                     "write caption_extension = \".txt\""))
        ext = None
    ext = caption_extension(ext) if ext else ext  # sd-scripts adds a missing dot: "txt" reads .txt
    repeats = table.get("num_repeats", 1)
    if not isinstance(repeats, int) or repeats < 1:
        data.problems.append(Problem(config, line, f"{where}: num_repeats {repeats!r} is not a whole "
                                     "number >= 1", "set num_repeats = 1 or more"))
    tokens = table.get("class_tokens")
    keep = _pick(table, outer, "keep_tokens")
    text_of = {k: _pick(table, outer, k)
               for k in ("keep_tokens_separator", "caption_prefix", "caption_suffix")}
    moves = any(_pick(table, outer, k)
                for k in ("shuffle_caption", "caption_tag_dropout_rate", "token_warmup_step"))
    return Subset(folder, bool(table.get("is_reg", False)), ext, bool(_pick(table, outer, "alpha_mask")),
                  tokens if isinstance(tokens, str) and tokens.strip() else None,
                  keep if isinstance(keep, int) and keep > 0 else 0,
                  **{k: v for k, v in text_of.items() if isinstance(v, str)}, tags_move=moves,
                  enable_wildcard=bool(_pick(table, outer, "enable_wildcard")),
                  captions_from_files=not metadata, source=f"{DATASET_TOML} {where}")


def _resolve(root: Path, image_dir: str) -> Path | None:
    given = Path(image_dir).expanduser()
    for candidate in ((given,) if given.is_absolute() else (root / given, Path.cwd() / given)):
        if candidate.is_dir():
            return Path(os.path.abspath(candidate))
    return None


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
