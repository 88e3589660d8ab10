"""Aspect-ratio buckets, computed exactly as kohya-ss/sd-scripts' BucketManager does (issue 6).

- `resolutions.bucket_resolutions`: the bucket list for a resolution, min/max side and step;
- `assign.assign`: an image's bucket, resized size and centre crop; `resize_to_bucket` does the
  resize and crop with the same filters; `BucketConfig` holds sd-scripts' dataset fields;
- `report.bucket_report`: images per bucket, aspect error, pixels lost, warnings when the set
  is scattered over sparse buckets; `suggest_fixes` / `apply_fix`: crops into the main buckets.

Reference: sd-scripts commit 48d368fa557731ad0488c07304dfeba8c07910eb, pinned by
`tests/data/sd_scripts_buckets.json` (made by `fixtures/bucket_table.py` from sd-scripts' own
code). Importing this package loads Pillow only; OpenCV is imported when an image is resized.
"""

from curate.buckets.assign import (
    INTERPOLATIONS,
    Assignment,
    BucketConfig,
    UnbucketableImage,
    assign,
    resize_to_bucket,
)
from curate.buckets.report import (
    BucketCount,
    BucketReport,
    Fix,
    apply_fix,
    bucket_report,
    sizes_after,
    suggest_fixes,
)
from curate.buckets.resolutions import bucket_resolutions

__all__ = [
    "INTERPOLATIONS",
    "Assignment",
    "BucketConfig",
    "BucketCount",
    "BucketReport",
    "Fix",
    "UnbucketableImage",
    "apply_fix",
    "assign",
    "bucket_report",
    "bucket_resolutions",
    "resize_to_bucket",
    "sizes_after",
    "suggest_fixes",
]
