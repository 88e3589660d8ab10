"""Quality measures: raw numbers about an image, no thresholds (those are in `judge`).

Each measure works on a fixed view of the image, so that its number means the same for a
256 px thumbnail and a 4000 px photo:

- sharpness: variance of the Laplacian of the grey image shrunk (never enlarged) to
  `ANALYSIS_SIDE` on its long side: what a 512 px training sees, whatever size the file is;
  fine detail: the same at that size over the same at half that size (upscaled captures);
- exposure: the 1st and 99th percentile of luminance. An underexposed photo has no bright
  pixels at all, while a night sky or the deep field has a few (stars), so a high percentile
  separates them where the mean cannot; the same for washed-out images, mirrored;
- colour: spread of the pixels off the main axis of their RGB cloud (PCA). Grey images lie
  on the grey axis, sepia and other tinted monochrome images on one tinted axis: both ~0;
- blockiness: how much larger the grey steps across the 8x8 JPEG block borders are than the
  steps inside the blocks, at full resolution (the grid is only there at the stored size);
- text: the share of the picture covered by text-like strokes (thin, high-contrast, lined up
  in rows);
- faces: see `faces.py`.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

ANALYSIS_SIDE = 512
JPEG_BLOCK = 8
STROKE_CONTRAST = 40  # grey levels a text stroke stands out by


def flat_rgb(image: Image.Image) -> Image.Image:
    """RGB with transparency composited onto white (a cut-out is judged as it would train)."""
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    return image.convert("RGB")


def shrink(pixels: np.ndarray, side: int = ANALYSIS_SIDE) -> np.ndarray:
    """Area-averaged down to `side` on the long side; smaller images are left as they are."""
    import cv2

    height, width = pixels.shape[:2]
    scale = side / max(height, width)
    if scale >= 1:
        return pixels
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    return cv2.resize(pixels, size, interpolation=cv2.INTER_AREA)


def luminance(rgb: np.ndarray) -> np.ndarray:
    """Rec. 601 luma as uint8, as Pillow's convert("L") computes it."""
    weights = np.array([299, 587, 114], dtype=np.uint32)
    return ((rgb.astype(np.uint32) @ weights + 500) // 1000).astype(np.uint8)


def sharpness(grey_small: np.ndarray) -> float:
    import cv2

    return float(cv2.Laplacian(grey_small, cv2.CV_64F).var())


def fine_detail(grey_small: np.ndarray) -> float:
    """Laplacian variance at this scale / at half this scale. An image upscaled from a smaller
    one has nothing in its finest octave, whatever its contrast: ~0.1 where sharp photos
    have 0.3 and more."""
    import cv2

    height, width = grey_small.shape
    if min(height, width) < 16:
        return 1.0
    half = cv2.resize(grey_small, (width // 2, height // 2), interpolation=cv2.INTER_AREA)
    return sharpness(grey_small) / max(sharpness(half), 1e-6)


def exposure(grey_small: np.ndarray) -> tuple[float, float]:
    low, high = np.percentile(grey_small, [1, 99])
    return float(low), float(high)


def colour_spread(rgb_small: np.ndarray) -> float:
    """Standard deviation (0-255 units) of the pixels off their RGB cloud's main axis."""
    points = rgb_small.reshape(-1, 3).astype(np.float64)
    cov = np.cov(points, rowvar=False)
    eigen = np.linalg.eigvalsh(cov)  # ascending
    return float(np.sqrt(max(eigen[0] + eigen[1], 0.0)))


def blockiness(grey: np.ndarray) -> float:
    """Mean step across 8x8 block borders / mean step inside blocks (1.0 = no grid)."""
    g = grey.astype(np.float64)
    ratios = []
    for diff in (np.abs(np.diff(g, axis=1)), np.abs(np.diff(g, axis=0)).T):
        if diff.shape[1] < 2 * JPEG_BLOCK:
            continue
        cols = np.arange(diff.shape[1])
        border = diff[:, cols % JPEG_BLOCK == JPEG_BLOCK - 1].mean()
        inside = diff[:, cols % JPEG_BLOCK != JPEG_BLOCK - 1].mean()
        ratios.append((border + 0.5) / (inside + 0.5))  # +0.5: flat images read 1.0, not 0/0
    return float(np.mean(ratios)) if ratios else 1.0


def text_cover(grey_small: np.ndarray) -> float:
    """Share of the image inside text-line boxes: thin strokes (top-hat, bright and dark, at
    least `STROKE_CONTRAST` above their surroundings) closed along rows into wide, short,
    mostly filled components. The top-hat drops shapes wider than a stroke, so a row of coins
    does not join the text lines into one blob."""
    import cv2

    kernel = cv2.getStructuringElement(cv2.MORPH_RECT, (9, 9))
    strokes = np.maximum(cv2.morphologyEx(grey_small, cv2.MORPH_TOPHAT, kernel),
                         cv2.morphologyEx(grey_small, cv2.MORPH_BLACKHAT, kernel))
    _, binary = cv2.threshold(strokes, 0, 255, cv2.THRESH_BINARY | cv2.THRESH_OTSU)
    binary &= np.where(strokes >= STROKE_CONTRAST, 255, 0).astype(np.uint8)
    closed = cv2.morphologyEx(binary, cv2.MORPH_CLOSE, cv2.getStructuringElement(cv2.MORPH_RECT, (9, 1)))
    count, _labels, stats, _ = cv2.connectedComponentsWithStats(closed, connectivity=8)
    height = grey_small.shape[0]
    covered = 0
    for _x, _y, w, h, area in stats[1:count]:
        line = 6 <= h <= height // 8 and w >= 2.5 * h
        if line and area / (w * h) >= 0.45:
            covered += w * h
    return covered / grey_small.size
