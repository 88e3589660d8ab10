"""Options of `curate crop` (the `[crop]` table of curate.toml)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from curate.config import check_ranges, option
from curate.errors import CurateError
from curate.stages.crop.geometry import parse_aspect
from curate.stages.crop.subject import SOURCES
from curate.stages.quality.faces import check_detector


@dataclass(frozen=True)
class CropConfig:
    """Options of `curate crop`: where the subject is found and the size and shape of each crop."""

    size: int = option(512, ge=8, le=16_384, help="Output size: about size x size pixels at the aspect.")
    aspect: str = option("1:1", help=(
        "Output aspect: \"W:H\" (1:1, 2:3, ...), \"keep\" (the image's own) or \"bucket\" "
        "(sd-scripts' bucket at this size nearest to the subject's shape)."))
    fit: Literal["subject", "max"] = option("subject", help=(
        "subject: the smallest window holding the subject plus padding (grown to avoid "
        "upscaling); max: the largest window of the aspect, placed on the subject."))
    padding: float = option(0.1, ge=0, le=2, help="Share of the subject box added on each side.")
    max_upscale: float = option(1.0, gt=0, le=64, help=(
        "Never enlarge more than this; an image too small for the target is written smaller "
        "(same aspect) and recorded as \"small\"."))
    sources: tuple[str, ...] = option(SOURCES, help=(
        "Where the subject box comes from, in order (alpha, faces, saliency), after the user's "
        "crops.csv, which always wins."))
    faces: str = option("frontal", help=(
        "The face detector, as `curate filter` uses it: \"frontal\", \"none\", an LBP cascade "
        ".xml (e.g. lbpcascade_animeface.xml) or a YuNet .onnx."))
    face_neighbors: int = option(7, ge=0, le=100, help="Neighbouring detector hits a face needs.")
    saliency_level: float = option(1.5, gt=0, help=(
        "Salient regions are those above this many times the saliency map's mean."))
    face_closeups: bool = option(False, help="Also write a head close-up per subject face.")
    format: Literal["same", "png"] = option("same", help=(
        "Output file format: \"same\" as the image (JPEG at quality 95), or \"png\"."))
    workers: int = option(0, ge=0, le=512, help="Processes cropping images (0 = one per core).")

    def check(self) -> None:
        check_ranges(self, "crop")
        parse_aspect(self.aspect)
        unknown = sorted(set(self.sources) - set(SOURCES))
        if unknown:
            raise CurateError(f"crop.sources: unknown {', '.join(unknown)}; valid: {', '.join(SOURCES)} "
                              "(a crops.csv always comes first)")
        if "faces" in self.sources or self.face_closeups:
            check_detector(self.faces)

    @property
    def detector(self) -> str:
        return self.faces if "faces" in self.sources or self.face_closeups else "none"
