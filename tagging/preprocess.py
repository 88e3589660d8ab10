"""An image as a WD14 / SmilingWolf tagger expects it: one `[S, S, 3]` float32 BGR array.

The steps and their order follow SmilingWolf's own demo (`wd-tagger` space), which is how the
models were trained and evaluated:

1. EXIF orientation applied: it decides which side is the width, and so where padding goes.
2. Transparency composited onto white, before padding, so that transparent pixels and the
   padding end up the same white rather than whatever colour hides under alpha = 0.
3. Padded to a centred square with white (255): resizing a non-square image straight to a
   square would squash it; padding keeps the aspect ratio the model was trained on.
4. Resized to S x S with BICUBIC (skipped when the square already is S x S, as in the demo).
5. float32 in 0..255, no mean/std normalisation (the network does its own).
6. RGB -> BGR last: PIL works in RGB and the models were trained on OpenCV-style BGR.

The batch axis (NHWC) is added by the caller when it stacks images.
"""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageOps

ORIENTATION_TAG = 0x0112
WHITE = (255, 255, 255)


def preprocess(image: Image.Image, size: int) -> np.ndarray:
    """`image` as a C-contiguous `[size, size, 3]` float32 BGR array in 0..255."""
    rgb = flatten_on_white(upright(image))
    square = pad_square(rgb)
    if square.size != (size, size):
        square = square.resize((size, size), Image.Resampling.BICUBIC)
    pixels = np.asarray(square)
    return pixels[:, :, ::-1].astype(np.float32)  # one pass: BGR order, float32, C-contiguous


def upright(image: Image.Image) -> Image.Image:
    """The image turned as its EXIF orientation says; untouched (not copied) when upright."""
    try:
        orientation = image.getexif().get(ORIENTATION_TAG, 1)
    except Exception:  # a broken EXIF block is no reason to lose the image
        return image
    if orientation in range(2, 9):
        return ImageOps.exif_transpose(image)
    return image


def flatten_on_white(image: Image.Image) -> Image.Image:
    """RGB, with any transparency (alpha channel or palette transparency) composited onto white."""
    if image.mode.startswith("I;16") or image.mode in ("I", "F"):
        image = _to_8bit(image)
    if image.mode in ("PA", "LA", "La", "RGBa") or "transparency" in image.info:
        image = image.convert("RGBA")
    if image.mode == "RGBA":
        white = Image.new("RGBA", image.size, (*WHITE, 255))
        return Image.alpha_composite(white, image).convert("RGB")
    return image if image.mode == "RGB" else image.convert("RGB")


def pad_square(image: Image.Image) -> Image.Image:
    """The image centred on a white square whose side is its longer side (extra pixel right/bottom)."""
    width, height = image.size
    side = max(width, height)
    if width == height:
        return image
    canvas = Image.new("RGB", (side, side), WHITE)
    canvas.paste(image, ((side - width) // 2, (side - height) // 2))
    return canvas


def _to_8bit(image: Image.Image) -> Image.Image:
    """16-bit and float greyscale scaled into 0..255; PIL's own convert() would clip instead."""
    values = np.asarray(image).astype(np.float64)
    top = float(values.max(initial=0.0))
    if image.mode != "F":
        top = 65535.0 if top > 255 else 255.0
    scaled = np.clip(np.rint(values * (255.0 / max(top, 1e-12))), 0, 255).astype(np.uint8)
    return Image.fromarray(scaled, "L")
