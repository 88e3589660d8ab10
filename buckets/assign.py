"""Which bucket an image trains in, and the resize and crop that put it there, as sd-scripts does.

A reimplementation (not a copy) of kohya-ss/sd-scripts, read at commit
48d368fa557731ad0488c07304dfeba8c07910eb: `BucketManager.select_bucket` and `round_to_steps`,
the bucket fields `DreamBoothDataset.__init__` and `BaseDataset.make_buckets` set up
(`adjust_min_max_bucket_reso_by_steps`, the single fixed bucket without `enable_bucket`), and
the resize and centre crop of `trim_and_resize_if_required` with `library/utils.resize_image`.
`tests/data/sd_scripts_buckets.json`, produced by running sd-scripts' own code
(`fixtures/bucket_table.py`), pins every number below.

With predefined buckets (the default): an image whose size is a bucket keeps it; otherwise it
takes the bucket nearest in aspect ratio (the first in sorted order on ties). It is scaled so
that it covers the bucket: its relatively shorter side matches the bucket exactly, the other
overhangs; each side is rounded half up. The overhang is cut evenly from both ends, the odd
pixel coming off the right or bottom.

With `bucket_no_upscale`, buckets come from the image itself: an image larger than the target
area is shrunk to that area at its own aspect ratio (one side rounded to the bucket step, the
one giving the smaller aspect error), a smaller image keeps its size; each side is then cut
down to a multiple of the step. sd-scripts ignores min/max_bucket_reso there, and so do we.

Resampling, as `resize_image` does by default: OpenCV INTER_AREA when neither side grows,
otherwise Pillow's Lanczos. The names sd-scripts accepts for `resize_interpolation` pick one
explicitly, with the same library for each.

The one deliberate difference: images sd-scripts cannot bucket (with `bucket_no_upscale`, a side
below one step or an extreme aspect ratio at a large size) make it raise ZeroDivisionError or
create a bucket with a zero side that fails only later in training; `assign` raises
`UnbucketableImage` with the reason instead.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

from PIL import Image

from curate.buckets.resolutions import bucket_resolutions
from curate.errors import CurateError

Size = tuple[int, int]  # (width, height)


class UnbucketableImage(CurateError):
    """sd-scripts cannot train on this image with this configuration."""


def derived_bucket_reso(resolution: int, steps: int = 64) -> tuple[int, int]:
    """min/max_bucket_reso for a resolution when they are not given: half the resolution (at most
    256) rounded down to the step, and twice the resolution rounded up to it. This is sd-scripts'
    256/1024 at 512 px, 64/256 at 128 px, 256/2048 at SDXL's 1024."""
    low = max(steps, min(256, resolution // 2) // steps * steps)
    high = -(-2 * resolution // steps) * steps
    return low, high


@dataclass(frozen=True)
class BucketConfig:
    """sd-scripts' dataset fields for bucketing; defaults are its own, except `enable_bucket`.

    sd-scripts defaults `enable_bucket` to off, yet every GUI and guide turns it on; a bucket
    report is only meaningful with it on.
    """

    resolution: tuple[int, int] = (512, 512)  # (width, height), as sd-scripts parses "512,768"
    min_bucket_reso: int = 256
    max_bucket_reso: int = 1024
    bucket_reso_steps: int = 64
    bucket_no_upscale: bool = False
    enable_bucket: bool = True

    def __post_init__(self) -> None:
        # sd-scripts reads "512" as (512, 512); TOML may give an int or a list
        resolution = self.resolution
        values = (resolution, resolution) if isinstance(resolution, int) else tuple(resolution)
        object.__setattr__(self, "resolution", tuple(int(v) for v in values))
        if len(self.resolution) != 2 or min(self.resolution) < 1:
            raise CurateError(f"bucket resolution {self.resolution}: give (width, height), both positive")
        if self.bucket_reso_steps < 1 or self.min_bucket_reso < 1:
            raise CurateError("bucket_reso_steps and min_bucket_reso must be positive")
        if not self.enable_bucket:
            return
        low, high = self.bucket_limits
        # sd-scripts asserts both, after rounding the limits to the step
        if min(self.resolution) < low:
            raise CurateError(f"min_bucket_reso {low} is above the resolution's short side "
                              f"{min(self.resolution)}: lower min_bucket_reso or raise the resolution")
        if max(self.resolution) > high:
            raise CurateError(f"max_bucket_reso {high} is below the resolution's long side "
                              f"{max(self.resolution)}: raise max_bucket_reso or lower the resolution")

    @property
    def bucket_limits(self) -> tuple[int, int]:
        """(min, max) bucket side as sd-scripts uses them: min rounded down, max up, to the step."""
        steps = self.bucket_reso_steps
        low = self.min_bucket_reso - self.min_bucket_reso % steps
        high = self.max_bucket_reso
        if high % steps:
            high += steps - high % steps
        return low, high

    @property
    def max_area(self) -> int:
        return self.resolution[0] * self.resolution[1]

    def resolutions(self) -> list[tuple[int, int]]:
        """The predefined buckets; empty with `bucket_no_upscale`, where each image makes its own."""
        return list(_predefined(self)[0])


@dataclass(frozen=True)
class Assignment:
    """Where one image goes. `crop` is (left, top, right, bottom) in the resized image."""

    bucket: tuple[int, int]
    resized: tuple[int, int]
    crop: tuple[int, int, int, int]
    aspect_error: float  # bucket w/h minus image w/h, signed as select_bucket returns it
    lost_fraction: float  # share of the resized image's pixels the crop removes
    size: tuple[int, int]  # the original image's (width, height)

    @property
    def scale(self) -> float:
        """Resize factor (above 1: upscaled)."""
        return max(self.resized[0] / self.size[0], self.resized[1] / self.size[1])


@functools.cache
def _predefined(config: BucketConfig) -> tuple[tuple[Size, ...], frozenset[Size], tuple[float, ...]]:
    if not config.enable_bucket:
        resos = [config.resolution]  # sd-scripts: one fixed bucket, min/max/steps unused
    elif config.bucket_no_upscale:
        resos = []
    else:
        low, high = config.bucket_limits
        resos = bucket_resolutions(config.resolution, low, high, config.bucket_reso_steps)
    return tuple(resos), frozenset(resos), tuple(w / h for w, h in resos)


def _nearest_bucket(width: int, height: int, config: BucketConfig) -> tuple[Size, Size]:
    resos, reso_set, ratios = _predefined(config)
    aspect = width / height
    if (width, height) in reso_set:
        bucket = (width, height)
    else:
        # min() keeps the first of equal errors, as numpy's argmin does over the sorted list
        bucket = resos[min(range(len(resos)), key=lambda i: abs(ratios[i] - aspect))]
    # the image's limiting side matches the bucket exactly, the other overhangs (cover)
    scale = bucket[1] / height if aspect > bucket[0] / bucket[1] else bucket[0] / width
    return bucket, (int(width * scale + 0.5), int(height * scale + 0.5))


def _round_to_steps(value: float, steps: int) -> int:
    rounded = int(value + 0.5)
    return rounded - rounded % steps


def _no_upscale_bucket(width: int, height: int, config: BucketConfig) -> tuple[Size, Size]:
    steps, aspect = config.bucket_reso_steps, width / height
    resized = (width, height)
    if width * height > config.max_area:
        exact_width = math.sqrt(config.max_area * aspect)
        exact_height = config.max_area / exact_width
        # round one side to the step, derive the other, keep whichever misses the aspect less
        by_width = _round_to_steps(exact_width, steps)
        height_for_width = _round_to_steps(by_width / aspect, steps)
        by_height = _round_to_steps(exact_height, steps)
        width_for_height = _round_to_steps(by_height * aspect, steps)
        if 0 in (height_for_width, by_height):
            raise UnbucketableImage(f"{width}x{height}: aspect ratio too extreme for bucket_no_upscale at "
                                    f"step {steps} (sd-scripts fails with ZeroDivisionError); crop it")
        error_by_width = abs(by_width / height_for_width - aspect)
        error_by_height = abs(width_for_height / by_height - aspect)
        if error_by_width < error_by_height:
            resized = (by_width, int(by_width / aspect + 0.5))
        else:
            resized = (int(by_height * aspect + 0.5), by_height)
    bucket = (resized[0] - resized[0] % steps, resized[1] - resized[1] % steps)
    if 0 in bucket:
        raise UnbucketableImage(f"{width}x{height}: a side is below bucket_reso_steps {steps}, so its "
                                f"bucket_no_upscale bucket would be {bucket[0]}x{bucket[1]}, which "
                                "sd-scripts cannot train on; upscale or drop the image")
    return bucket, resized


def assign(size: tuple[int, int], config: BucketConfig) -> Assignment:
    """The bucket, resized size and crop sd-scripts gives an image of `size` (width, height)."""
    width, height = size
    if width < 1 or height < 1:
        raise UnbucketableImage(f"{width}x{height}: an image needs at least one pixel per side")
    if config.enable_bucket and config.bucket_no_upscale:
        bucket, resized = _no_upscale_bucket(width, height, config)
    else:
        bucket, resized = _nearest_bucket(width, height, config)
    # trim_and_resize_if_required's centre crop: floor((excess) / 2) off the left/top
    left = (resized[0] - bucket[0]) // 2 if resized[0] > bucket[0] else 0
    top = (resized[1] - bucket[1]) // 2 if resized[1] > bucket[1] else 0
    return Assignment(
        bucket=bucket,
        resized=resized,
        crop=(left, top, left + bucket[0], top + bucket[1]),
        aspect_error=bucket[0] / bucket[1] - width / height,
        lost_fraction=1.0 - (bucket[0] * bucket[1]) / (resized[0] * resized[1]),
        size=(width, height),
    )


# sd-scripts' `resize_interpolation` names -> (library, filter); Lanczos and box go through
# Pillow (its "backward compatibility" choice), the rest through OpenCV.
_INTERPOLATIONS: dict[str, tuple[str, str]] = {
    "lanczos": ("pil", "LANCZOS"),
    "box": ("pil", "BOX"),
    "area": ("cv2", "INTER_AREA"),
    "nearest": ("cv2", "INTER_NEAREST_EXACT"),
    "bilinear": ("cv2", "INTER_LINEAR"),
    "linear": ("cv2", "INTER_LINEAR"),
    "bicubic": ("cv2", "INTER_CUBIC"),
    "cubic": ("cv2", "INTER_CUBIC"),
}
INTERPOLATIONS = tuple(_INTERPOLATIONS)


def _resample(image: Image.Image, size: tuple[int, int], interpolation: str) -> Image.Image:
    try:
        library, name = _INTERPOLATIONS[interpolation]
    except KeyError:
        choices = ", ".join(INTERPOLATIONS)
        raise CurateError(f"unknown interpolation {interpolation!r}; choose one of {choices}") from None
    if library == "pil":
        return image.resize(size, resample=getattr(Image.Resampling, name))
    import cv2  # only when resizing: keeps `import buckets` light
    import numpy as np

    return Image.fromarray(cv2.resize(np.asarray(image), size, interpolation=getattr(cv2, name)))


def resize_to_bucket(
    image: Image.Image, assignment: Assignment, interpolation: str | None = None
) -> Image.Image:
    """The image as sd-scripts feeds it to the VAE: resized to `assignment.resized`, then cropped.

    `interpolation` is sd-scripts' `resize_interpolation` (None: area to shrink, else Lanczos).
    Modes other than RGB, RGBA and L become RGB (RGBA if they carry transparency), as
    sd-scripts loads images as RGB, or RGBA for alpha masks.
    """
    if image.size != assignment.size:
        raise CurateError(f"image is {image.size[0]}x{image.size[1]} but the assignment is for "
                          f"{assignment.size[0]}x{assignment.size[1]}")
    if image.mode not in ("RGB", "RGBA", "L"):
        image = image.convert("RGBA" if image.has_transparency_data else "RGB")
    if image.size != assignment.resized:
        if interpolation is None:
            shrinks = image.width >= assignment.resized[0] and image.height >= assignment.resized[1]
            interpolation = "area" if shrinks else "lanczos"
        image = _resample(image, assignment.resized, interpolation)
    if image.size == assignment.bucket:
        return image
    return image.crop(assignment.crop)
