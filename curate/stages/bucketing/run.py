"""`curate buckets TARGET`: the bucket report for a workspace or a dataset folder, crops that
move stray images into the main buckets, and optionally a copy of the dataset with those crops
(and a pre-resize to each image's bucket) applied. Sources are never changed in place.
"""

from __future__ import annotations

import io
import shutil
import tomllib
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from PIL import Image

from buckets import (
    BucketConfig,
    BucketReport,
    Fix,
    apply_fix,
    assign,
    bucket_report,
    resize_to_bucket,
    sizes_after,
)
from buckets import suggest_fixes as suggest
from curate.atomic import atomic_write_bytes
from curate.errors import CurateError
from curate.folder import walk_images
from curate.stages.ingest.sources import display
from curate.workspace import Workspace, is_workspace

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
    """Bucket settings from root/dataset.toml ([general] then the first [[datasets]])."""
    path = root / "dataset.toml"
    if not path.is_file():
        return {}
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise CurateError(f"{path}: not readable TOML ({exc})") from exc
    merged = {**data.get("general", {}), **(data.get("datasets") or [{}])[0]}
    return {k: merged[k] for k in (*DATASET_KEYS, "batch_size") if k in merged}


def _sizes(target: Path) -> tuple[dict[str, tuple[int, int]], dict[str, Path], list[tuple[str, str]]]:
    if is_workspace(target):
        with Workspace.open(target) as ws:
            records = ws.active_records()
        names = {r.origins[0].source_path if r.origins else str(r.path): r for r in records}
        return ({k: (r.width, r.height) for k, r in names.items()},
                {k: r.path for k, r in names.items()}, [])
    listing = walk_images(target)
    sizes, paths, skipped = {}, {}, list(listing.skipped)
    for rel in listing.relpaths:
        try:
            with Image.open(target / rel) as image:  # the header is enough for the size
                sizes[rel] = image.size
            paths[rel] = target / rel
        except Exception as exc:  # any unreadable image is skipped with its reason
            skipped.append((display(target / rel), f"not a readable image ({exc})"))
    return sizes, paths, skipped


def buckets_for(target: Path, config: BucketConfig, batch_size: int, *, fix: bool = False,
                max_loss: float = 0.15, apply_to: Path | None = None, resize: bool = False) -> BucketsResult:
    target = Path(target).absolute()
    if not target.is_dir():
        raise CurateError(f"{target}: no such folder (name a workspace or a dataset folder)")
    sizes, paths, skipped = _sizes(target)
    if not sizes:
        raise CurateError(f"{target}: no images to bucket")
    report = bucket_report(sizes, config, batch_size)
    result = BucketsResult(str(target), report, skipped=skipped)
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
        target = dest / rel
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
            if side.is_file():
                shutil.copy2(side, target.with_suffix(ext))
    for extra in ("dataset.toml",):
        if (root / extra).is_file():
            text = (root / extra).read_text(encoding="utf-8").replace(str(root), str(dest))
            (dest / extra).write_text(text, encoding="utf-8")
    return len(paths)


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
