"""The output of a Cut: an RGBA PNG (alpha = mask; colour = subject over the fill, or the
subject with a black background when the fill is transparent, as rembg writes cut-outs), or
the mask alone as a greyscale PNG."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

from curate.stages.background.masks import Cut


def compose(cut: Cut, fill: tuple[int, int, int] | None) -> Image.Image:
    alpha = cut.mask.astype(np.float32)[:, :, None] / 255.0
    colour = cut.colour.astype(np.float32) * alpha
    if fill is not None:
        colour += np.asarray(fill, np.float32) * (1.0 - alpha)
    rgba = np.dstack([np.clip(np.rint(colour), 0, 255).astype(np.uint8), cut.mask])
    return Image.fromarray(rgba, "RGBA")


def encode(cut: Cut, fill: tuple[int, int, int] | None, mask_only: bool) -> tuple[bytes, Image.Image]:
    image = Image.fromarray(cut.mask, "L") if mask_only else compose(cut, fill)
    buf = io.BytesIO()
    image.save(buf, "PNG", optimize=False)
    return buf.getvalue(), image


def coverage(mask: np.ndarray) -> float:
    """Share of the image that is subject (alpha >= 128)."""
    return float((mask >= 128).mean())
