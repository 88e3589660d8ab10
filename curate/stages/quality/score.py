"""One image in, its raw quality scores out (a plain dict, stored as JSON and cached).

Scores never depend on thresholds, so changing a threshold re-judges stored scores without
reading a single image again. `SCORES_VERSION` changes whenever a measure changes.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageOps

from curate.paths import first_line
from curate.stages.quality import measures as m
from curate.stages.quality.faces import find_faces

SCORES_VERSION = 1
Scores = dict[str, Any]


def scores_key(detector_key: str) -> str:
    return f"quality-v{SCORES_VERSION}:{detector_key}"


def measure_image(image: Image.Image, detector: str) -> Scores:
    """Every measure of `measures.py` and the faces, for an opened image."""
    image.load()
    ImageOps.exif_transpose(image, in_place=True)
    rgb = np.asarray(m.flat_rgb(image))
    grey = m.luminance(rgb)
    grey_small = m.shrink(grey)
    dark_p99 = m.exposure(grey_small)
    return {
        "width": image.width, "height": image.height,
        "sharpness": round(m.sharpness(grey_small), 3),
        "fine_detail": round(m.fine_detail(grey_small), 4),
        "p1": dark_p99[0], "p99": dark_p99[1],
        "colour": round(m.colour_spread(m.shrink(rgb)), 3),
        "blockiness": round(m.blockiness(grey), 4),
        "text": round(m.text_cover(grey_small), 4),
        "faces": [f.as_list() for f in find_faces(rgb, detector)],
    }


def measure_file(job: tuple[str, str]) -> tuple[Scores | None, str | None]:
    """(scores, None) or (None, why it could not be read); picklable for a process pool.

    Only decoding is caught here; a measure that fails on the pixels raises, and the stage's
    per-image guard (`curate.stages.guard`) names the measure's exception instead."""
    path, detector = job
    try:
        image = Image.open(Path(path))
        image.load()
    except (OSError, ValueError, Image.DecompressionBombError) as exc:
        return None, f"cannot decode ({first_line(exc)}): re-download it or leave it out"
    with image:
        return measure_image(image, detector), None
