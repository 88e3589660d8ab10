"""The report's training view: the bucket histogram and the layout plan (repeats, steps).

Both reuse the code that really does the work, so the report cannot drift from training:
the plan is `curate layout --dry-run` (`curate.stages.layout.layout`) with the workspace's
`[layout]` options, and the buckets are `buckets.bucket_report` (sd-scripts' assignment via
`curate.buckets.assign`) with the same options' resolution and bucket limits.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from curate.buckets import BucketConfig, bucket_report
from curate.config import CONFIG_NAME, load_toml, stage_config
from curate.errors import CurateError
from curate.record import Record
from curate.stages.layout import LayoutConfig, layout


@dataclass(frozen=True)
class BucketView:
    rows: tuple[tuple[tuple[int, int], int], ...] = ()  # ((width, height), images)
    warnings: tuple[str, ...] = ()
    unbucketable: tuple[tuple[str, str], ...] = ()
    note: str = ""  # why there is no histogram, or what settings it used


@dataclass(frozen=True)
class PlanView:
    configured: bool  # the workspace's curate.toml sets [layout] options
    rows: tuple[dict[str, Any], ...] = ()  # as LayoutResult.plan
    total_steps: int = 0
    steps_per_epoch: int = 0
    epochs: int = 0
    batch_size: int = 0
    note: str = ""
    warnings: tuple[tuple[str, str], ...] = field(default_factory=tuple)

    def as_dict(self) -> dict[str, Any]:
        return {"configured": self.configured, "subsets": list(self.rows), "total_steps": self.total_steps,
                "steps_per_epoch": self.steps_per_epoch, "epochs": self.epochs,
                "batch_size": self.batch_size, "note": self.note}


def _layout_config(root: Path) -> tuple[LayoutConfig, bool]:
    path = root / CONFIG_NAME
    # `curate init` writes an empty (all commented) [layout] table: only set keys count
    return stage_config(LayoutConfig, "layout", path), bool(load_toml(path).get("layout"))


def plan_view(root: Path) -> PlanView:
    """What `curate layout WS --dry-run` would plan with the workspace's own options."""
    try:
        config, configured = _layout_config(root)
        with tempfile.TemporaryDirectory(prefix="curate-report-") as tmp:
            # dry run: the folder is never written, it only has to be one layout may replace
            result = layout(root, Path(tmp) / "dataset", config, dry_run=True)
    except CurateError as exc:
        return PlanView(configured=False, note=f"no training plan: {exc}")
    note = "" if configured else (
        f"No [layout] settings in {root / CONFIG_NAME}: this is layout's default plan "
        f"(repeats {config.repeats or 1}, {config.epochs} epochs, batch size {config.batch_size}); "
        "add a [layout] table (repeats or target_steps) to plan the run you mean.")
    per_epoch = -(-result.total_steps // max(1, result.epochs))
    return PlanView(configured, tuple(result.plan), result.total_steps, per_epoch, result.epochs,
                    result.batch_size, note, tuple(result.warnings))


def bucket_view(root: Path, records: list[Record]) -> BucketView:
    """Images per sd-scripts bucket at the layout's resolution and bucket options."""
    if not records:
        return BucketView(note="no kept images to bucket")
    try:
        layout_config, _ = _layout_config(root)
        config = BucketConfig(resolution=layout_config.resolution,
                              min_bucket_reso=layout_config.bucket_bounds[0],
                              max_bucket_reso=layout_config.bucket_bounds[1],
                              bucket_reso_steps=layout_config.bucket_reso_steps,
                              bucket_no_upscale=layout_config.bucket_no_upscale)
        # keyed by the path the user knows: bucket warnings name images by key
        sizes = {r.origins[0].source_path if r.origins else str(r.path): (r.width, r.height) for r in records}
        report = bucket_report(sizes, config, layout_config.batch_size)
    except CurateError as exc:
        return BucketView(note=f"no bucket histogram: {exc}")
    note = (f"resolution {layout_config.resolution}, buckets {config.bucket_limits[0]}-"
            f"{config.bucket_limits[1]} px in steps of {config.bucket_reso_steps}, "
            f"batch size {layout_config.batch_size}")
    return BucketView(tuple((b.resolution, b.count) for b in report.buckets), tuple(report.warnings),
                      tuple(report.unbucketable.items()), note)
