"""Reading and writing sd-scripts' dataset config (`dataset.toml`, `--dataset_config`).

`read_toml` gives the model (curate.kohya.model) with every problem sd-scripts would refuse or
read otherwise than meant, each with its line; `load_toml` gives the raw tables (for tools that
rewrite a user's file keeping every key); `dumps` writes the `[general]` / `[[datasets]]` /
`[[datasets.subsets]]` shape and `to_data` turns the model back into tables, writing only what
differs from sd-scripts' defaults (plus what a reader must never guess: image_dir, num_repeats,
caption_extension).
"""

from __future__ import annotations

import os
import re
import tomllib
from dataclasses import fields
from pathlib import Path
from typing import Any

from curate.config import toml_key, toml_value
from curate.errors import CurateError
from curate.kohya.model import (
    ALLOWED,
    DATASET_DEFAULTS,
    KEY_TYPES,
    SUBSET_DEFAULTS,
    SUBSET_FIELDS,
    SUBSET_ONLY,
    Dataset,
    DatasetConfig,
    Problem,
    Subset,
    effective,
)
from curate.paths import display, printable

DATASET_TOML = "dataset.toml"
SUBSET_HEADER = r"^\s*\[\[\s*datasets\.subsets\s*\]\]"
DATASET_HEADER = r"^\s*\[\[\s*datasets\s*\]\]"


def load_toml(path: Path) -> dict[str, Any]:
    """The tables of a dataset.toml; a CurateError naming the file when it cannot be used."""
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise CurateError(f"{display(path)}: cannot read ({printable(str(exc))}); fix the TOML or "
                          "re-run `curate layout`") from exc
    if not isinstance(data.get("datasets"), list) or not data["datasets"]:
        raise CurateError(f"{display(path)}: no [[datasets]] table; re-run `curate layout` or add one")
    return data


def read_toml(path: Path) -> DatasetConfig:
    """A dataset.toml as sd-scripts reads it, with the problems found (never raises)."""
    config = DatasetConfig(path.parent, path)
    try:
        text = path.read_text(encoding="utf-8")
        doc = tomllib.loads(text)
    except (OSError, UnicodeDecodeError) as exc:
        config.problems.append(Problem(f"cannot be read ({printable(str(exc))})", "re-save it as UTF-8"))
        config.unreadable = True
        return config
    except tomllib.TOMLDecodeError as exc:
        line = re.search(r"at line (\d+)", str(exc))
        config.problems.append(Problem(f"not valid TOML ({exc})",
                                       "fix the syntax; sd-scripts refuses the file",
                                       int(line[1]) if line else None))
        config.unreadable = True
        return config
    general = doc.get("general", {})
    config.general = general if isinstance(general, dict) else {}
    _check_level(config, text, config.general, "[general]", "general", line_of(text, r"^\s*\[general\]"))
    datasets = doc.get("datasets")
    if not isinstance(datasets, list) or not datasets:
        config.problems.append(Problem("has no [[datasets]] table",
                                       "add [[datasets]] with [[datasets.subsets]] image_dir = ..."))
        return config
    number = 0
    for index, table in enumerate(datasets, 1):
        line = nth_line(text, DATASET_HEADER, index)
        table = table if isinstance(table, dict) else {}
        if not table.get("subsets"):  # its settings still count (buckets reads them)
            config.problems.append(Problem(f"dataset {index} has no subsets",
                                           "add [[datasets.subsets]] with image_dir = ... under it", line))
        _check_level(config, text, table, f"dataset {index}", "dataset", line)
        dataset = Dataset(settings={k: table.get(k, config.general.get(k)) for k in DATASET_DEFAULTS
                                    if k in table or k in config.general})
        subsets = table.get("subsets")
        for raw in subsets if isinstance(subsets, list) else []:
            number += 1
            if isinstance(raw, dict):
                subset = _subset(config, text, raw, table, number)
                if subset is not None:
                    dataset.subsets.append(subset)
        config.datasets.append(dataset)
    return config


def _check_level(config: DatasetConfig, text: str, table: dict[str, Any], where: str, level: str,
                 line: int | None) -> None:
    """Keys sd-scripts' schema refuses at this level (model.ALLOWED), and values of the wrong type."""
    for key, value in table.items():
        at = line_of(text, rf"^\s*{re.escape(key)}\s*=") or line
        if key not in ALLOWED[level]:
            places = [name for name, keys in ALLOWED.items() if key in keys]
            what = (f"is read only in {' or '.join(places)} tables" if places
                    else "is not a key sd-scripts knows")
            config.problems.append(Problem(f"{where}: {printable(key)} {what}",
                                           "move or remove it; sd-scripts refuses the file", at))
        elif key in KEY_TYPES and not _typed(value, KEY_TYPES[key]):
            names = " or ".join(t.__name__ for t in KEY_TYPES[key])
            config.problems.append(Problem(f"{where}: {key} {printable(repr(value))} is not a {names}",
                                           f"write {key} as a {names}; sd-scripts refuses the file", at))


def _typed(value: Any, types: tuple[type, ...]) -> bool:
    # a TOML bool is not an int to sd-scripts' schema, nor an int a bool
    if isinstance(value, bool):
        return bool in types
    return isinstance(value, types)


def _subset(config: DatasetConfig, text: str, raw: dict[str, Any], dataset: dict[str, Any],
            number: int) -> Subset | None:
    where, line = f"subset {number}", nth_line(text, SUBSET_HEADER, number)
    _check_level(config, text, raw, where, "subset", line)
    image_dir, metadata = raw.get("image_dir"), raw.get("metadata_file")
    if not isinstance(image_dir, str) or not image_dir:
        if not metadata:
            config.problems.append(Problem(f"{where} has no image_dir",
                                           "set image_dir = \"path/to/10_name\"", line))
            return None
        image_dir = "."
    folder = resolve_image_dir(config.root, image_dir)
    if folder is None:
        config.problems.append(Problem(f"{where}: image_dir {printable(repr(image_dir))} does not exist",
                                       "fix the path (relative paths are resolved from sd-scripts' working "
                                       "folder; curate layout writes absolute ones)", line))
        return None
    levels = (raw, dataset, config.general)
    values = {k: effective(k, *levels) for k in SUBSET_FIELDS - SUBSET_ONLY}
    values.update({k: raw.get(k) for k in SUBSET_ONLY & SUBSET_FIELDS - {"image_dir"}})
    # a value of the wrong type is a problem already reported; the subset reads its default
    values = {k: v for k, v in values.items() if v is not None and _typed(v, KEY_TYPES[k])}
    repeats = values.get("num_repeats", 1)
    if repeats < 1:
        config.problems.append(Problem(f"{where}: num_repeats {repeats!r} is not a whole number >= 1",
                                       "set num_repeats = 1 or more", line))
        values.pop("num_repeats")
    if isinstance(values.get("class_tokens"), str) and not values["class_tokens"].strip():
        values.pop("class_tokens")
    return Subset(folder, **values, source=f"{DATASET_TOML} {where}")


def resolve_image_dir(root: Path, image_dir: str) -> Path | None:
    """An image_dir as a folder: absolute as given, or relative to the dataset.toml's folder, else
    to the working folder (where sd-scripts resolves it); None when it is neither."""
    given = Path(image_dir).expanduser()
    for candidate in ((given,) if given.is_absolute() else (root / given, Path.cwd() / given)):
        if candidate.is_dir():
            return Path(os.path.abspath(candidate))
    return None


def line_of(text: str, pattern: str) -> int | None:
    """1-based line of the first match of regex `pattern`."""
    return next((n for n, line in enumerate(text.splitlines(), 1) if re.search(pattern, line)), None)


def nth_line(text: str, pattern: str, n: int) -> int | None:
    hits = [i + 1 for i, line in enumerate(text.splitlines()) if re.search(pattern, line)]
    return hits[n - 1] if len(hits) >= n else None


def subset_table(subset: Subset) -> dict[str, Any]:
    """A [[datasets.subsets]] table: image_dir (absolute), num_repeats and caption_extension always
    (sd-scripts' default .caption is rarely what a folder holds), the rest when not the default."""
    table: dict[str, Any] = {"image_dir": str(subset.image_dir.absolute()), "num_repeats": subset.num_repeats}
    if subset.caption_extension:
        table["caption_extension"] = subset.caption_extension
    for f in fields(Subset):
        value = getattr(subset, f.name)
        default = SUBSET_DEFAULTS.get(f.name, f.default)
        if f.name in table or f.name == "source" or value is None or value == default:
            continue
        table[f.name] = value
    return table


def to_data(config: DatasetConfig) -> dict[str, Any]:
    """The model as dataset.toml tables: [general] as given, each dataset's settings and subsets."""
    datasets = [{**d.settings, "subsets": [subset_table(s) for s in d.subsets]} for d in config.datasets]
    return {"general": dict(config.general), "datasets": datasets}


def _is_tables(value: Any) -> bool:
    return isinstance(value, list) and bool(value) and all(isinstance(v, dict) for v in value)


def _table(header: str, table: dict[str, Any], indent: str) -> list[str]:
    lines = ["", f"{indent}{header}"]
    lines += [f"{indent}{toml_key(k)} = {toml_value(v)}" for k, v in table.items()
              if v is not None and not _is_tables(v)]
    for name, subtables in ((k, v) for k, v in table.items() if _is_tables(v)):
        for sub in subtables:
            inner = header.strip("[]")
            lines += _table(f"[[{inner}.{toml_key(name)}]]", sub, indent + "  ")
    return lines


def dumps(data: dict[str, Any], comments: list[str]) -> str:
    """TOML for sd-scripts' dataset config shape: [general], [[datasets]], [[datasets.subsets]]
    (None values left out: TOML has none, and sd-scripts reads a missing key as its default)."""
    lines = [f"# {c}" for c in comments]
    lines += [f"{toml_key(k)} = {toml_value(v)}" for k, v in data.items()
              if v is not None and not isinstance(v, dict) and not _is_tables(v)]
    for name, value in data.items():
        if isinstance(value, dict):
            lines += _table(f"[{toml_key(name)}]", value, "")
        elif _is_tables(value):
            for table in value:
                lines += _table(f"[[{toml_key(name)}]]", table, "")
    return "\n".join(lines) + "\n"


def write_toml(config: DatasetConfig, comments: list[str]) -> str:
    """The text of a dataset.toml for `config` (see `to_data`)."""
    return dumps(to_data(config), comments)
