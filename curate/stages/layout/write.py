"""Writing a Kohya dataset: `img/N_name/` (image + caption, same stem), `reg/N_class/`, and a
`dataset.toml` that sd-scripts' `--dataset_config` reads unchanged.

The whole dataset is built in a temporary sibling folder and swapped in with renames, so a
killed run leaves the previous dataset (or none), never half of one. A folder is only replaced
when it carries the marker an earlier `curate layout` left; anything else is refused.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from curate import kohya
from curate.atomic import TMP_PREFIX
from curate.errors import CurateError
from curate.paths import child_path
from curate.stages.layout.config import LayoutConfig

MARKER = ".curate-layout.json"
OLD_PREFIX = ".curate-old-"
UNSAFE = re.compile(r"[^\w.\- ()\[\]]+", re.UNICODE)


@dataclass(frozen=True)
class Entry:
    """One image of the dataset: where it comes from, what it is called, its caption."""

    source: Path
    stem: str
    ext: str
    caption: str
    image: str | None = None  # the workspace image's sha256 (None: a close-up or a reg image)


@dataclass(frozen=True)
class Subset:
    folder: str  # "img/10_sks" or "reg/1_woman"
    entries: tuple[Entry, ...]
    repeats: int
    class_tokens: str | None
    is_reg: bool = False
    alpha_mask: bool = False
    # the compiled captions' subset keys: shuffle_caption, keep_tokens, keep_tokens_separator...
    captions: dict[str, Any] = field(default_factory=dict)


def safe_stem(name: str) -> str:
    stem = UNSAFE.sub("_", Path(name).stem).strip(" ._") or "image"
    return stem[:100]


def unique_stems(names: Iterable[tuple[str, str]]) -> list[str]:
    """File stems for (wanted name, sha256) pairs; clashes get a hash suffix (case-insensitive,
    since Windows and macOS users check datasets out too)."""
    seen: set[str] = set()
    out = []
    for name, sha in names:
        stem = safe_stem(name)
        if stem.lower() in seen:
            stem = f"{stem}-{sha[:8]}"
        seen.add(stem.lower())
        out.append(stem)
    return out


def check_target(out: Path) -> None:
    ours = (out / MARKER).is_file()
    if out.exists() and not ours and (not out.is_dir() or any(out.iterdir())):
        raise CurateError(f"{out} exists and was not written by `curate layout`: choose a new "
                              "folder (curate only replaces datasets it wrote)")


def write_dataset(out: Path, subsets: list[Subset], config: LayoutConfig, general: dict[str, object]) -> None:
    out = out.absolute()
    check_target(out)
    _sweep(out)
    tmp = out.with_name(f"{TMP_PREFIX}{out.name}-{os.getpid()}")
    tmp.mkdir(parents=True)
    try:
        for subset in subsets:
            kind, _, name = subset.folder.partition("/")  # "img", "10_sks"
            _write_subset(child_path(tmp / kind, name, "concept folder"), subset, config)
        (tmp / "dataset.toml").write_text(dataset_toml(out, subsets, config, general), encoding="utf-8")
        files = sorted(str(p.relative_to(tmp)) for p in tmp.rglob("*") if p.is_file())
        # which caption went to which image: the next layout tells hand edits from its own text
        captions = {f"{s.folder}/{e.stem}{config.caption_ext}": {"image": e.image, "text": e.caption}
                    for s in subsets for e in s.entries if e.image}
        marker = {"files": files, "captions": captions}
        (tmp / MARKER).write_text(json.dumps(marker, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
        _swap(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _write_subset(folder: Path, subset: Subset, config: LayoutConfig) -> None:
    folder.mkdir(parents=True)
    for entry in subset.entries:
        target = folder / f"{entry.stem}{entry.ext}"
        _place(entry.source, target, config.link)
        (folder / f"{entry.stem}{config.caption_ext}").write_text(entry.caption + "\n", encoding="utf-8")


def _place(source: Path, target: Path, link: str) -> None:
    if link == "symlink":
        target.symlink_to(source.absolute())
        return
    if link == "hardlink":
        try:
            os.link(source, target)
            return
        except OSError:
            pass  # another filesystem, or links not allowed: a copy is still a valid dataset
    shutil.copyfile(source, target)


def _swap(tmp: Path, out: Path) -> None:
    if out.exists():
        old = out.with_name(f"{OLD_PREFIX}{out.name}-{os.getpid()}")
        out.rename(old)
        tmp.rename(out)
        shutil.rmtree(old, ignore_errors=True)
    else:
        tmp.rename(out)


def _sweep(out: Path) -> None:
    """Remove what a killed layout left beside `out`."""
    if not out.parent.is_dir():
        return
    for leftover in out.parent.iterdir():
        if leftover.name.startswith((f"{TMP_PREFIX}{out.name}-", f"{OLD_PREFIX}{out.name}-")):
            shutil.rmtree(leftover, ignore_errors=True)


def dataset_toml(out: Path, subsets: list[Subset], config: LayoutConfig, general: dict[str, object]) -> str:
    """The dataset.toml of the laid-out folders, written by the Kohya model's one writer."""
    dataset = {"resolution": config.resolution, "batch_size": config.batch_size,
               "enable_bucket": config.enable_bucket, "min_bucket_reso": config.bucket_bounds[0],
               "max_bucket_reso": config.bucket_bounds[1], "bucket_reso_steps": config.bucket_reso_steps,
               "bucket_no_upscale": config.bucket_no_upscale}
    model = [kohya.Subset(out / s.folder, s.repeats, s.class_tokens, s.is_reg, config.caption_ext,
                          flip_aug=config.flip_aug and not s.is_reg, alpha_mask=s.alpha_mask, **s.captions)
             for s in subsets]
    data = kohya.DatasetConfig(out, out / kohya.DATASET_TOML, [kohya.Dataset(model, dataset)],
                               {k: v for k, v in general.items() if v is not None})
    return kohya.write_toml(data, [
        "Written by `curate layout`. Use with sd-scripts: --dataset_config dataset.toml",
        "(image_dir paths are absolute: sd-scripts resolves relative ones from its working dir)"])
