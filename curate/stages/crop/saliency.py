"""The saliency fallback: where the eye goes when nothing better says where the subject is.

Spectral residual saliency (Hou & Zhang, CVPR 2007), as OpenCV contrib's
`StaticSaliencySpectralResidual` computes it, which opencv-python-headless does not ship:
on a 64 px copy, the log amplitude spectrum minus its local average keeps what is unusual in
the image; back in space (with the original phase), squared and smoothed, it marks the parts
that stand out from their surroundings. A second map, colour distance from the image's mean
colour (Achanta's frequency-tuned saliency), catches large flat subjects the first misses;
the two are averaged.

The subject box is the bounding box of the salient regions: pixels above `LEVEL` x the map's
mean, in components holding at least `MIN_SHARE` of the largest one's salient mass.
"""

from __future__ import annotations

import numpy as np

SIDE = 64
LEVEL = 1.5  # chosen by bench/crop_accuracy.py (docs/benchmarks.md)
MIN_SHARE = 0.1


def saliency_map(rgb: np.ndarray) -> np.ndarray:
    """A float map in [0, 1] at 64 px on the long side."""
    import cv2

    height, width = rgb.shape[:2]
    scale = SIDE / max(height, width)
    size = (max(8, round(width * scale)), max(8, round(height * scale)))
    small = cv2.resize(rgb, size, interpolation=cv2.INTER_AREA).astype(np.float64)
    grey = small.mean(axis=2)
    spectrum = np.fft.fft2(grey)
    log_amplitude = np.log(np.abs(spectrum) + 1e-9)
    residual = log_amplitude - cv2.blur(log_amplitude, (3, 3))
    spectral = np.abs(np.fft.ifft2(np.exp(residual + 1j * np.angle(spectrum)))) ** 2
    lab = cv2.cvtColor(small.astype(np.uint8), cv2.COLOR_RGB2LAB).astype(np.float64)
    colour = np.linalg.norm(cv2.GaussianBlur(lab, (0, 0), 1.0) - lab.reshape(-1, 3).mean(axis=0), axis=2)
    maps = [cv2.GaussianBlur(m, (0, 0), 2.0) for m in (spectral, colour)]
    combined = sum(m / m.max() if m.max() > 0 else m for m in maps) / 2
    return combined / combined.max() if combined.max() > 0 else combined


def salient_box(rgb: np.ndarray, level: float = LEVEL
                ) -> tuple[tuple[float, float, float, float], tuple[float, float]]:
    """(box, focus) in the image's pixels: the bounding box of the regions above `level` x
    the map's mean, and the map's peak (where to centre a window smaller than the box)."""
    import cv2

    height, width = rgb.shape[:2]
    sal = saliency_map(rgb)
    mask = (sal > level * sal.mean()).astype(np.uint8)
    count, labels, stats, _ = cv2.connectedComponentsWithStats(mask, connectivity=8)
    mass = np.array([sal[labels == i].sum() for i in range(count)])
    scale_x, scale_y = width / sal.shape[1], height / sal.shape[0]
    peak_y, peak_x = np.unravel_index(np.argmax(sal), sal.shape)
    focus = ((peak_x + 0.5) * scale_x, (peak_y + 0.5) * scale_y)
    keep = [i for i in range(1, count) if mass[i] >= MIN_SHARE * mass[1:].max()] if count > 1 else []
    if not keep:
        return (0.0, 0.0, float(width), float(height)), focus
    x0 = min(stats[i, 0] for i in keep)
    y0 = min(stats[i, 1] for i in keep)
    x1 = max(stats[i, 0] + stats[i, 2] for i in keep)
    y1 = max(stats[i, 1] + stats[i, 3] for i in keep)
    return (x0 * scale_x, y0 * scale_y, (x1 - x0) * scale_x, (y1 - y0) * scale_y), focus
