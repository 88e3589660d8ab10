"""The bucket resolutions sd-scripts trains with, for a target resolution.

Same algorithm as `make_bucket_resolutions` in kohya-ss/sd-scripts `library/model_util.py`
(read at commit 48d368fa557731ad0488c07304dfeba8c07910eb), written anew here without torch:

- the square bucket: the side is sqrt(max_area) rounded down to a multiple of `divisible`;
- for every width from `min_size` to `max_size` in steps of `divisible`, the height is the
  largest multiple of `divisible` with width x height <= max_area, capped at `max_size`; the
  pair is kept (with its transpose) when that height is at least `min_size`.

The result is sorted as sd-scripts sorts it, because nearest-aspect selection takes the first
bucket among equal aspect errors, so the order decides ties.
"""

from __future__ import annotations

import math


def bucket_resolutions(
    max_reso: tuple[int, int], min_size: int = 256, max_size: int = 1024, divisible: int = 64
) -> list[tuple[int, int]]:
    """Sorted (width, height) buckets whose area is at most max_reso's, sides in [min_size, max_size]."""
    max_width, max_height = max_reso
    max_area = max_width * max_height
    # math.sqrt on purpose (not isqrt): the same float floor sd-scripts takes, so no edge case differs
    side = int(math.sqrt(max_area) // divisible) * divisible
    resos = {(side, side)}
    for width in range(min_size, max_size + 1, divisible):
        height = min(max_size, (max_area // width) // divisible * divisible)
        if height >= min_size:
            resos.add((width, height))
            resos.add((height, width))
    return sorted(resos)
