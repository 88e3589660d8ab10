"""Options of `curate filter` (the `[quality]` table of curate.toml; `[filter]` belongs to
`curate tags filter`).

Every default threshold is the one `bench/filter_quality.py` chooses from its fixture table
(docs/benchmarks.md): real photos and their blurred, small, dark, washed-out, grey,
sepia, heavily compressed, stretched, text-covered and face-at-the-border copies.
"""

from __future__ import annotations

from dataclasses import dataclass

from curate.config import check_ranges, option
from curate.errors import CurateError
from curate.stages.quality.faces import check_detector

# Check ids, in report order; the reason of each rejected image names them.
CHECKS = ("blur", "small", "aspect", "dark", "bright", "monochrome", "blocky", "text", "border_face")


@dataclass(frozen=True)
class QualityConfig:
    # blur: variance of the Laplacian at 512 px (long side, never enlarged) below this ...
    min_sharpness: float = option(37.0, ge=0)
    # ... or so little in the finest octave relative to the next (upscaled captures)
    min_fine_detail: float = option(0.2, ge=0)
    # too small: short side in pixels (sd-scripts' smallest bucket side at 512 is 256)
    min_side: int = option(256, ge=1, le=65_536)
    # extreme aspect ratio: long side / short side above this (4:1 is 512's widest bucket)
    max_aspect: float = option(4.0, ge=1)
    # too dark: even the 99th-percentile brightness (0-255) is below this
    dark_below: float = option(65.0, ge=0, le=255)
    # washed out: even the 1st-percentile brightness is above this
    bright_above: float = option(160.0, ge=0, le=255)
    # near-monochrome: colour spread off the main RGB axis (0-255 units) below this
    # (grey and sepia copies 0-2, the fixtures' colour photos 3.9 and up)
    min_colour: float = option(2.9, ge=0, le=255)
    # JPEG blocks: steps across 8x8 block borders / steps inside blocks above this
    max_blockiness: float = option(1.7, ge=0)
    # text-heavy: share of the picture covered by text lines above this
    max_text: float = option(0.025, ge=0, le=1)
    # faces at the border: detector ("frontal", "none", an LBP cascade .xml or YuNet .onnx),
    # the neighbouring hits a face needs, and how near the edge counts as touching it (a
    # share of the face box's size: the head around a detected face reaches further)
    faces: str = "frontal"
    face_neighbors: int = option(7, ge=0, le=100)
    border_margin: float = option(0.25, ge=0, le=2)
    # a face this large (share of the short side) that is the largest is the subject itself
    subject_face: float = option(0.25, ge=0, le=1)
    # checks that do not run; text is opt-in (scans and comics are text by design)
    skip: tuple[str, ...] = ("text",)
    # processes measuring images (0 = one per core)
    workers: int = option(0, ge=0, le=512)

    def check(self) -> None:
        check_ranges(self, "quality")
        unknown = sorted(set(self.skip) - set(CHECKS))
        if unknown:
            raise CurateError(f"quality.skip: unknown check(s) {', '.join(unknown)}; "
                              f"valid: {', '.join(CHECKS)}")
        if "border_face" not in self.skip:
            check_detector(self.faces)

    @property
    def active(self) -> tuple[str, ...]:
        return tuple(c for c in CHECKS if c not in self.skip)

    @property
    def detector(self) -> str:
        """The detector scores are computed with ("none" when faces are not checked)."""
        return "none" if "border_face" in self.skip else self.faces
