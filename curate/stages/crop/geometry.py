"""Where a crop window goes: its output size from `--size`/`--aspect`, its size in the image
from the subject box and the fit mode, and its place. Pure functions on numbers.

A window never leaves the image. With fit "subject" it is the smallest window of the target
aspect holding the subject box plus padding, grown (up to the largest window that fits) until
the output needs no more than `max_upscale`: a small subject gets more context rather than a
blurry enlargement. With fit "max" it is the largest window of the target aspect. Either way
it is placed to hold the whole subject, centred on it; a subject larger than the window keeps
its focus point (a face) in the middle.
"""

from __future__ import annotations

from dataclasses import dataclass

from curate.buckets import BucketConfig
from curate.errors import CurateError

Box = tuple[float, float, float, float]  # x, y, w, h


@dataclass(frozen=True)
class Window:
    box: tuple[int, int, int, int]  # x, y, w, h in the image
    out: tuple[int, int]  # output width, height
    scale: float  # output / window (> 1: enlarged)
    small: bool  # the target needed more than max_upscale: `out` is smaller than it
    target: tuple[int, int] = (0, 0)  # the output asked for

    def kept(self, subject: Box) -> float:
        """Share of the subject box's area inside the window."""
        x, y, w, h = self.box
        ix = max(0.0, min(x + w, subject[0] + subject[2]) - max(x, subject[0]))
        iy = max(0.0, min(y + h, subject[1] + subject[3]) - max(y, subject[1]))
        return ix * iy / max(subject[2] * subject[3], 1e-9)


def parse_aspect(aspect: str) -> float | None:
    """'W:H' -> W/H; 'keep' and 'bucket' -> None (decided per image)."""
    if aspect in ("keep", "bucket"):
        return None
    try:
        w, h = (float(v) for v in aspect.split(":"))
    except ValueError:
        w = h = 0.0
    if w <= 0 or h <= 0:
        raise CurateError(f"crop.aspect = {aspect!r}: give W:H (e.g. 1:1, 2:3), keep or bucket")
    return w / h


def output_size(size: int, aspect: str, image: tuple[int, int], subject: Box) -> tuple[int, int]:
    """Output (width, height): about size x size pixels at the aspect (multiples of 8); 'keep'
    keeps the image's aspect, 'bucket' takes sd-scripts' bucket at `size` nearest to the
    aspect of the subject (fit "subject") or of the image."""
    if aspect == "bucket":
        ratio = subject[2] / subject[3]
        buckets = BucketConfig(resolution=(size, size)).resolutions()
        return min(buckets, key=lambda b: abs(b[0] / b[1] - ratio))
    ratio = parse_aspect(aspect) or image[0] / image[1]
    width = size * ratio ** 0.5
    return max(8, round(width / 8) * 8), max(8, round(size * size / width / 8) * 8)


def largest(image: tuple[int, int], ratio: float) -> tuple[float, float]:
    width, height = image
    return (height * ratio, float(height)) if width / height > ratio else (float(width), width / ratio)


def _place(lo: float, length: float, pad: float, win: float, limit: float, focus: float) -> float:
    """Start of a window of size `win` on one axis, inside [0, limit]: holding the subject
    [lo, lo + length] with its padding, else without it, centred on the subject; a window
    shorter than the subject stays inside it, centred on `focus` as far as that allows."""
    if win >= length + 2 * pad:
        span_lo, span, centre = lo - pad, length + 2 * pad, lo + length / 2
    else:
        span_lo, span, centre = lo, length, lo + length / 2 if win >= length else focus
    start = centre - win / 2
    if win >= span:
        start = min(max(start, span_lo + span - win), span_lo)
    else:
        start = min(max(start, span_lo), span_lo + span - win)
    return min(max(start, 0.0), limit - win)


def place_window(image: tuple[int, int], subject: Box, out: tuple[int, int], *, fit: str = "subject",
                 padding: float = 0.1, max_upscale: float = 1.0, focus: tuple[float, float] | None = None
                 ) -> Window:
    """The crop window for `subject` in an image of size `image` (see module doc)."""
    ratio = out[0] / out[1]
    max_w = largest(image, ratio)[0]
    sx, sy, sw, sh = subject
    want = (sw * (1 + 2 * padding), sh * (1 + 2 * padding))
    if fit == "max":
        win_w = max_w
    else:
        win_w = max(want[0], want[1] * ratio, out[0] / max_upscale)
        win_w = min(win_w, max_w)
    win_h = win_w / ratio
    fx, fy = focus or (sx + sw / 2, sy + sh / 2)
    x = _place(sx, sw, sw * padding, win_w, image[0], fx)
    y = _place(sy, sh, sh * padding, win_h, image[1], fy)
    box = _round_box(x, y, win_w, win_h, image)
    scale = out[0] / box[2]
    if scale <= max_upscale + 1e-9:
        return Window(box, out, scale, False, out)
    # too small for the target: the largest output the upscale limit allows, same aspect
    shrunk = (max(1, int(box[2] * max_upscale)), max(1, int(box[2] * max_upscale / ratio)))
    return Window(box, shrunk, shrunk[0] / box[2], True, out)


def _round_box(x: float, y: float, w: float, h: float, image: tuple[int, int]) -> tuple[int, int, int, int]:
    w_i, h_i = min(round(w), image[0]), min(round(h), image[1])
    x_i = min(max(round(x), 0), image[0] - w_i)
    y_i = min(max(round(y), 0), image[1] - h_i)
    return x_i, y_i, w_i, h_i
