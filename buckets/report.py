"""How a set of images spreads over sd-scripts' buckets, what warrants a warning, and crops that help.

The community guides observe that a dataset "bucketed too randomly" trains worse than one where
most images share a bucket or the buckets are evenly filled: sd-scripts builds every batch from
one bucket, so a bucket with fewer images than the batch size yields short batches made of the
same few pictures, and many such buckets mean many odd steps. Definitions used here:

- a bucket is *sparse* when it holds fewer distinct images than `max(batch_size, SPARSE_MIN_IMAGES)`
  (repeats are not counted: repeating one image does not make its batches varied);
- the *main* buckets are the others; if every bucket is sparse, the most populated ones (when
  they hold at least two images), so that a small dataset still has somewhere to go;
- the set is *scattered* when more than `SCATTERED_SHARE` (20%) of its images sit in sparse
  buckets.

`bucket_report` measures (counts, mean aspect error as sd-scripts logs it, pixels each image
loses to the crop) and then judges with thresholds given as arguments, so that changing a
threshold never means reassigning. `suggest_fixes` proposes, for each image in a sparse bucket,
the centred crop of the original that lands it in a main bucket losing the fewest pixels in
total (the crop plus the bucket's own crop), within `MAX_FIX_LOSS`; every proposal is checked by
running `assign` on the cropped size. `apply_fix` performs one.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, replace

from PIL import Image

from curate.buckets.assign import Assignment, BucketConfig, UnbucketableImage, assign
from curate.errors import CurateError

SPARSE_MIN_IMAGES = 3  # buckets of one or two images are sparse even at batch size 1
SCATTERED_SHARE = 0.20  # more than this share of images in sparse buckets: warn
HEAVY_CROP = 0.20  # an image losing more than this share of its pixels to the crop: warn
STRONG_UPSCALE = 2.0  # an image enlarged more than this to reach its bucket: warn (soft results)
MAX_FIX_LOSS = 0.15  # suggest_fixes never proposes a crop that loses more than this


@dataclass(frozen=True)
class BucketCount:
    resolution: tuple[int, int]
    keys: tuple[str, ...]  # sorted

    @property
    def count(self) -> int:
        return len(self.keys)


@dataclass(frozen=True)
class BucketReport:
    config: BucketConfig
    batch_size: int
    sparse_below: int  # buckets with fewer images than this are sparse
    assignments: Mapping[str, Assignment]
    buckets: tuple[BucketCount, ...]  # sorted by resolution, as sd-scripts lists them
    unbucketable: Mapping[str, str]  # key -> why sd-scripts cannot train on it
    warnings: tuple[str, ...]

    @property
    def mean_aspect_error(self) -> float:
        """Mean |bucket aspect - image aspect|: sd-scripts' `mean_img_ar_error` (0 when empty)."""
        errors = [abs(a.aspect_error) for a in self.assignments.values()]
        return sum(errors) / len(errors) if errors else 0.0

    @property
    def lost_fraction(self) -> dict[str, float]:
        """Per image, the share of its pixels the bucket crop removes."""
        return {key: a.lost_fraction for key, a in self.assignments.items()}

    @property
    def sparse_buckets(self) -> tuple[BucketCount, ...]:
        return tuple(b for b in self.buckets if b.count < self.sparse_below)

    @property
    def main_buckets(self) -> tuple[BucketCount, ...]:
        main = tuple(b for b in self.buckets if b.count >= self.sparse_below)
        if main or not self.buckets:
            return main
        top = max(b.count for b in self.buckets)
        return tuple(b for b in self.buckets if b.count == top) if top >= 2 else ()

    @property
    def sparse_share(self) -> float:
        """Share of the bucketed images that sit in sparse buckets."""
        total = len(self.assignments)
        return sum(b.count for b in self.sparse_buckets) / total if total else 0.0

    def lines(self) -> list[str]:
        """A plain-text summary: one line per bucket, then the means and the warnings."""
        out = [f"{_n(len(self.assignments), 'image')} in {_n(len(self.buckets), 'bucket')} "
               f"(batch size {self.batch_size}; sparse below {self.sparse_below} images)"]
        for bucket in self.buckets:
            lost = sum(self.assignments[k].lost_fraction for k in bucket.keys) / bucket.count
            mark = "  sparse" if bucket.count < self.sparse_below else ""
            width, height = bucket.resolution
            images = _n(bucket.count, "image")
            out.append(f"  {width:>5} x {height:<5} {images:>11}, mean crop {lost:.1%}{mark}")
        out.append(f"mean aspect error {self.mean_aspect_error:.4f}")
        out += [f"warning: {w}" for w in self.warnings]
        return out


def _n(count: int, noun: str) -> str:
    return f"{count} {noun}" if count == 1 else f"{count} {noun}s"


def bucket_report(
    sizes: Mapping[str, tuple[int, int]],
    config: BucketConfig,
    batch_size: int = 1,
    *,
    sparse_min_images: int = SPARSE_MIN_IMAGES,
    scattered_share: float = SCATTERED_SHARE,
    heavy_crop: float = HEAVY_CROP,
    strong_upscale: float = STRONG_UPSCALE,
) -> BucketReport:
    """Assign every image (key -> (width, height)) and judge the spread. batch_size as in training."""
    if batch_size < 1:
        raise CurateError(f"batch size {batch_size}: must be at least 1")
    assignments: dict[str, Assignment] = {}
    unbucketable: dict[str, str] = {}
    members: dict[tuple[int, int], list[str]] = {}
    for key in sorted(sizes):
        try:
            assignment = assign(sizes[key], config)
        except UnbucketableImage as error:
            unbucketable[key] = str(error)
            continue
        assignments[key] = assignment
        members.setdefault(assignment.bucket, []).append(key)
    report = BucketReport(
        config=config, batch_size=batch_size, sparse_below=max(batch_size, sparse_min_images),
        assignments=assignments, unbucketable=unbucketable, warnings=(),
        buckets=tuple(BucketCount(reso, tuple(keys)) for reso, keys in sorted(members.items())),
    )
    warnings = _warnings(report, scattered_share, heavy_crop, strong_upscale)
    return replace(report, warnings=tuple(warnings))


def _warnings(
    report: BucketReport, scattered_share: float, heavy_crop: float, strong_upscale: float
) -> list[str]:
    out = []
    sparse = report.sparse_buckets
    if report.sparse_share > scattered_share:
        images = sum(b.count for b in sparse)
        out.append(f"scattered buckets: {images} of {len(report.assignments)} images "
                   f"({report.sparse_share:.0%}, limit {scattered_share:.0%}) sit in {len(sparse)} of "
                   f"{len(report.buckets)} buckets holding fewer than {report.sparse_below} images each; "
                   "crop them into the main buckets (suggested fixes) or leave them out")
    items = report.assignments.items()
    heavy = sorted(((a.lost_fraction, k) for k, a in items if a.lost_fraction > heavy_crop), reverse=True)
    if heavy:
        out.append(f"heavy crops: {_n(len(heavy), 'image')} losing more than {heavy_crop:.0%} of the pixels "
                   f"to the bucket crop (worst: {heavy[0][1]}, {heavy[0][0]:.0%}); crop by hand to keep "
                   "what matters")
    if not report.config.bucket_no_upscale:
        soft = sorted(((a.scale, k) for k, a in items if a.scale > strong_upscale), reverse=True)
        if soft:
            out.append(f"upscaled: {_n(len(soft), 'image')} enlarged more than {strong_upscale:g}x to fill "
                       f"the bucket (most: {soft[0][1]}, {soft[0][0]:.1f}x), which trains soft; find larger "
                       "sources")
    if report.unbucketable:
        first = next(iter(report.unbucketable.values()))
        out.append(f"unbucketable: {_n(len(report.unbucketable), 'image')} left out ({first})")
    return out


@dataclass(frozen=True)
class Fix:
    """Crop `key` to `crop_box` (left, top, right, bottom in the original) to move it to `target`."""

    key: str
    crop_box: tuple[int, int, int, int]
    source: tuple[int, int]
    target: tuple[int, int]
    lost_fraction: float  # share of the original's pixels not trained on: this crop plus the bucket's

    @property
    def size(self) -> tuple[int, int]:
        return self.crop_box[2] - self.crop_box[0], self.crop_box[3] - self.crop_box[1]


def _crop_sizes(size: tuple[int, int], target: tuple[int, int], steps: int) -> Iterator[tuple[int, int]]:
    """Crop sizes likely to land in `target`; assign() decides which really do."""
    width, height = size
    ratio = target[0] / target[1]
    if width / height > ratio:  # too wide: trim the sides (and try a pixel either way of rounding)
        base = round(height * ratio)
        yield from ((base + d, height) for d in (0, -1, 1))
    else:
        base = round(width / ratio)
        yield from ((width, base + d) for d in (0, -1, 1))
    # with bucket_no_upscale a bucket is the size cut down to the step: the largest such crop
    if width >= target[0] and height >= target[1]:
        yield min(width, target[0] + steps - 1), min(height, target[1] + steps - 1)


def _best_fix(key: str, current: Assignment, targets: dict[tuple[int, int], int], config: BucketConfig,
              max_loss: float) -> Fix | None:
    width, height = current.size
    best: tuple[float, int, Fix] | None = None
    for target, count in targets.items():
        for crop_w, crop_h in _crop_sizes(current.size, target, config.bucket_reso_steps):
            if not (0 < crop_w <= width and 0 < crop_h <= height) or (crop_w, crop_h) == current.size:
                continue
            try:
                moved = assign((crop_w, crop_h), config)
            except UnbucketableImage:
                continue
            if moved.bucket != target:
                continue
            kept = crop_w * crop_h / (width * height) * (1.0 - moved.lost_fraction)
            left, top = (width - crop_w) // 2, (height - crop_h) // 2
            fix = Fix(key, (left, top, left + crop_w, top + crop_h), current.bucket, target, 1.0 - kept)
            # fewest pixels lost first; on a tie, the fuller bucket
            if fix.lost_fraction <= max_loss and (best is None or (fix.lost_fraction, -count) < best[:2]):
                best = (fix.lost_fraction, -count, fix)
    return best[2] if best else None


def suggest_fixes(report: BucketReport, max_loss: float = MAX_FIX_LOSS) -> list[Fix]:
    """For each image in a sparse bucket, the cheapest centred crop into a main bucket (if any)."""
    targets = {b.resolution: b.count for b in report.main_buckets}
    fixes = []
    for bucket in report.sparse_buckets:
        if bucket.resolution in targets:  # the fallback main bucket may itself be sparse
            continue
        for key in bucket.keys:
            fix = _best_fix(key, report.assignments[key], targets, report.config, max_loss)
            if fix is not None:
                fixes.append(fix)
    return fixes


def sizes_after(sizes: Mapping[str, tuple[int, int]], fixes: list[Fix]) -> dict[str, tuple[int, int]]:
    """The image sizes once `fixes` are applied, to report on the result before cropping anything."""
    out = dict(sizes)
    out.update((fix.key, fix.size) for fix in fixes)
    return out


def apply_fix(image: Image.Image, crop_box: tuple[int, int, int, int]) -> Image.Image:
    """The original image cut to `crop_box` (from a `Fix`)."""
    left, top, right, bottom = crop_box
    if not (0 <= left < right <= image.width and 0 <= top < bottom <= image.height):
        raise CurateError(f"crop box {crop_box} does not fit in a {image.width}x{image.height} image")
    return image.crop(crop_box)
