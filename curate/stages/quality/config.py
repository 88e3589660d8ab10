"""Options of `curate filter` (the `[filter]` table of curate.toml; it was `[quality]`, still read).

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
    """Options of `curate filter`: the thresholds that reject an image, each with its check id."""

    min_sharpness: float = option(37.0, ge=0, help=(
        "blur: rejected when the variance of the Laplacian at 512 px (long side, never enlarged) "
        "is below this ..."))
    min_fine_detail: float = option(0.2, ge=0, help=(
        "... or when the finest octave holds so little next to the one above it (upscaled captures)."))
    min_side: int = option(256, ge=1, le=65_536, help=(
        "small: short side in pixels below this (sd-scripts' smallest bucket side at 512 is 256)."))
    max_aspect: float = option(4.0, ge=1, help=(
        "aspect: long side / short side above this (4:1 is the widest bucket at 512)."))
    dark_below: float = option(65.0, ge=0, le=255, help=(
        "dark: even the 99th-percentile brightness (0-255) is below this."))
    bright_above: float = option(160.0, ge=0, le=255, help=(
        "bright (washed out): even the 1st-percentile brightness (0-255) is above this."))
    # grey and sepia copies measure 0-2, the fixtures' colour photos 3.9 and up
    min_colour: float = option(2.9, ge=0, le=255, help=(
        "monochrome: colour spread off the main RGB axis (0-255 units) below this."))
    max_blockiness: float = option(1.7, ge=0, help=(
        "blocky: steps across 8x8 JPEG block borders / steps inside blocks above this."))
    max_text: float = option(0.025, ge=0, le=1, help=(
        "text: share of the picture covered by text lines above this."))
    faces: str = option("frontal", help=(
        "border_face: the face detector: \"frontal\", \"none\", an LBP cascade .xml (e.g. "
        "lbpcascade_animeface.xml) or a YuNet .onnx."))
    face_neighbors: int = option(7, ge=0, le=100, help="Neighbouring detector hits a face needs.")
    # the head around a detected face reaches further than its box
    border_margin: float = option(0.25, ge=0, le=2, help=(
        "How near the edge a face counts as touching it, as a share of the face box's size."))
    subject_face: float = option(0.25, ge=0, le=1, help=(
        "The largest face, when at least this share of the short side, is the subject itself, "
        "not another person at the border."))
    # scans and comics are text by design
    skip: tuple[str, ...] = option(("text",), help=(
        "Checks that do not run (text is opt-in): blur, small, aspect, dark, bright, monochrome, "
        "blocky, text, border_face."))
    workers: int = option(0, ge=0, le=512, help="Processes measuring images (0 = one per core).")

    def check(self) -> None:
        check_ranges(self, "filter")
        unknown = sorted(set(self.skip) - set(CHECKS))
        if unknown:
            raise CurateError(f"filter.skip: unknown check(s) {', '.join(unknown)}; "
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
