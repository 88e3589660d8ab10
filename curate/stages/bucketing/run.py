"""`curate buckets TARGET`: the bucket report for a workspace or a dataset folder, crops that
move stray images into the main buckets, and optionally a copy of the dataset with those crops
(and a pre-resize to each image's bucket) applied. Sources are never changed in place.
"""

from __future__ import annotations

import io
import os
import shutil
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from PIL import Image

from curate import kohya
from curate.atomic import atomic_write_bytes
from curate.buckets import (
    BucketConfig,
    BucketReport,
    Fix,
    apply_fix,
    assign,
    bucket_report,
    resize_to_bucket,
    sizes_after,
)
from curate.buckets import suggest_fixes as suggest
from curate.errors import CurateError
from curate.kohya import readable_plugin_exts, sd_image, unsafe_caption_reason
from curate.paths import display, is_inside, printable, special_file_reason
from curate.workspace import Workspace, is_workspace

# Folders a dataset walk never enters (tool state, caches), as `curate check` skips them.
PRUNE = frozenset({"node_modules", "__pycache__", "venv", "site-packages", "__MACOSX"})
DATASET_KEYS = ("resolution", "min_bucket_reso", "max_bucket_reso", "bucket_reso_steps",
                "bucket_no_upscale", "enable_bucket")
SIDECARS = (".txt", ".caption", ".json", ".npz")


@dataclass
class BucketsResult:
    target: str
    report: BucketReport
    fixes: list[Fix] = field(default_factory=list)
    after: BucketReport | None = None
    written: int = 0
    skipped: list[tuple[str, str]] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        r = self.report
        return {
            "target": self.target,
            "buckets": [{"resolution": list(b.resolution), "images": b.count} for b in r.buckets],
            "mean_aspect_error": r.mean_aspect_error, "lost_fraction": dict(r.lost_fraction),
            "warnings": list(r.warnings), "unbucketable": dict(r.unbucketable),
            "fixes": [{"file": f.key, "crop_box": list(f.crop_box), "from": list(f.source),
                       "to": list(f.target), "lost_fraction": f.lost_fraction} for f in self.fixes],
            "after_fixes": None if self.after is None else
            [{"resolution": list(b.resolution), "images": b.count} for b in self.after.buckets],
            "written": self.written, "skipped": [{"file": f, "reason": x} for f, x in self.skipped],
        }


def dataset_settings(root: Path) -> dict[str, Any]:
    """Bucket settings from root/dataset.toml: its first [[datasets]] over [general], as
    sd-scripts merges them (curate.kohya.read_toml)."""
    path = root / kohya.DATASET_TOML
    if not path.is_file():
        return {}
    config = kohya.read_toml(path)
    if config.unreadable:
        problem = config.problems[0]
        raise CurateError(f"{display(path)}: {problem.problem}; {problem.fix}")
    merged = config.first.settings if config.datasets else config.general
    return {k: merged[k] for k in (*DATASET_KEYS, "batch_size") if k in merged}


def dataset_images(root: Path) -> Iterator[tuple[str, Path] | tuple[str, str]]:
    """(shown relpath, path) of every image below root that sd-scripts would glob, depth first in
    name order, or (shown path, reason) for a file that is not read.

    Symlinked files are followed when they resolve to a regular file, wherever it lies:
    `curate layout --link symlink` points a dataset's images into the workspace (and the reg
    folder), and sd-scripts opens them too; only their pixel sizes are read. Symlinked folders
    are not entered (a link to a parent would never end), nor hidden ones. A FIFO, socket or
    device is never opened: reading one waits forever.
    """
    extra = readable_plugin_exts()
    stack = [root]
    while stack:
        folder = stack.pop()
        try:
            with os.scandir(folder) as it:
                entries = sorted(it, key=lambda e: e.name)
        except OSError as exc:
            yield display(folder), f"cannot list folder ({exc.strerror})"
            continue
        subdirs = []
        for entry in entries:
            if entry.name.startswith(".") or entry.name in PRUNE:
                continue
            if entry.is_dir(follow_symlinks=False):
                subdirs.append(Path(entry.path))
            elif sd_image(entry.name, extra):
                yield _image_entry(root, entry)
        stack.extend(reversed(subdirs))


def _image_entry(root: Path, entry: os.DirEntry[str]) -> tuple[str, Path] | tuple[str, str]:
    path = Path(entry.path)
    try:
        reason = special_file_reason(entry.stat().st_mode)
    except OSError as exc:
        return display(path), f"broken symlink or unreadable ({exc.strerror}): fix or remove it"
    if reason is not None or entry.is_dir():
        return display(path), reason or "symlink to a folder, not an image: not followed"
    return display(path.relative_to(root).as_posix()), path


def _sizes(target: Path) -> tuple[dict[str, tuple[int, int]], dict[str, Path], list[tuple[str, str]]]:
    if is_workspace(target):
        with Workspace.open(target) as ws:
            records = ws.active_records()
        names = {r.origins[0].source_path if r.origins else str(r.path): r for r in records}
        return ({k: (r.width, r.height) for k, r in names.items()},
                {k: r.path for k, r in names.items()}, [])
    sizes, paths, skipped = {}, {}, []
    for key, found in dataset_images(target):
        if isinstance(found, str):
            skipped.append((key, found))
            continue
        try:
            with Image.open(found) as image:  # the header is enough for the size
                sizes[key] = image.size
            paths[key] = found
        except Exception as exc:  # any unreadable image is skipped with its reason
            # Pillow's message repeats the file name, undecodable bytes included
            skipped.append((display(found), printable(f"not a readable image ({exc})")))
    return sizes, paths, skipped


def buckets_for(target: Path, config: BucketConfig, batch_size: int, *, fix: bool = False,
                max_loss: float = 0.15, apply_to: Path | None = None, resize: bool = False) -> BucketsResult:
    target = Path(target).absolute()
    if not target.is_dir():
        raise CurateError(f"{display(target)}: no such folder (name a workspace or a dataset folder)")
    sizes, paths, skipped = _sizes(target)
    if not sizes:
        raise CurateError(f"{display(target)}: no images to bucket")
    report = bucket_report(sizes, config, batch_size)
    result = BucketsResult(display(target), report, skipped=skipped)
    if fix or apply_to is not None:
        result.fixes = suggest(report, max_loss)
        result.after = bucket_report(sizes_after(sizes, result.fixes), config, batch_size)
    if apply_to is not None:
        if is_workspace(target):
            raise CurateError("--apply-to copies a dataset folder; for a workspace run `curate layout` "
                              "first, then `curate buckets DATASET --apply-to DIR`")
        result.written = _write_copy(target, Path(apply_to).absolute(), paths, result.fixes,
                                     config if resize else None)
    return result


def _write_copy(root: Path, dest: Path, paths: dict[str, Path], fixes: list[Fix],
                resize: BucketConfig | None) -> int:
    """The dataset again under dest: fixed images cropped, all resized when asked, sidecars copied."""
    if dest == root or root in dest.parents:
        raise CurateError("--apply-to must be outside the dataset folder")
    crops = {f.key: f.crop_box for f in fixes}
    for rel, src in paths.items():
        target = dest / src.relative_to(root)  # the real name: `rel` is the printable one
        if rel in crops or resize is not None:
            with Image.open(src) as image:
                image.load()
                edited = apply_fix(image, crops[rel]) if rel in crops else image
                if resize is not None:
                    edited = resize_to_bucket(edited, assign(edited.size, resize))
                atomic_write_bytes(target, _encode(edited, src.suffix.lower()))
        else:
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, target)
        for ext in SIDECARS:
            side = src.with_suffix(ext)
            # the caption rule of check and train: no text from a symlink leaving the dataset
            if side.is_file() and is_inside(root, side) and (
                    ext not in (".txt", ".caption") or unsafe_caption_reason(side, (root,)) is None):
                shutil.copy2(side, target.with_suffix(ext))
    _copy_dataset_toml(root, dest)
    return len(paths)


def _copy_dataset_toml(root: Path, dest: Path) -> None:
    """root's dataset.toml with every image_dir inside root pointed at its copy under dest."""
    path = root / kohya.DATASET_TOML
    if not path.is_file():
        return
    data, top = kohya.load_toml(path), Path(os.path.abspath(root))
    for table in data["datasets"]:
        for subset in table.get("subsets", []) if isinstance(table, dict) else []:
            image_dir = subset.get("image_dir") if isinstance(subset, dict) else None
            folder = kohya.resolve_image_dir(top, image_dir) if isinstance(image_dir, str) else None
            if folder is not None and (folder == top or top in folder.parents):
                subset["image_dir"] = str(dest / folder.relative_to(top))
    text = kohya.dumps(data, [f"The dataset config of {display(root)}, pointed at this copy by "
                              "`curate buckets --apply-to`."])
    atomic_write_bytes(dest / kohya.DATASET_TOML, text.encode("utf-8"))


def _encode(image: Image.Image, suffix: str) -> bytes:
    buf = io.BytesIO()
    if suffix in (".jpg", ".jpeg"):
        image.convert("RGB").save(buf, "JPEG", quality=95)
    elif suffix == ".webp":
        image.save(buf, "WEBP", lossless=True)
    else:
        image.save(buf, "PNG")
    return buf.getvalue()


def config_from(settings: dict[str, Any], flags: dict[str, Any]) -> tuple[BucketConfig, int]:
    values = {**settings, **{k: v for k, v in flags.items() if v is not None}}
    batch = int(values.pop("batch_size", 1))
    res = values.get("resolution", 512)
    if isinstance(res, int | float):
        values["resolution"] = (int(res), int(res))
    elif isinstance(res, list | tuple):
        values["resolution"] = (int(res[0]), int(res[-1]))
    try:
        return replace(BucketConfig(), **{k: values[k] for k in DATASET_KEYS if k in values}), batch
    except (TypeError, ValueError) as exc:
        raise CurateError(f"bucket settings: {exc}") from exc
