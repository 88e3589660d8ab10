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
    # output size: about size x size pixels at the aspect ("W:H", "keep" = the image's own,
    # "bucket" = sd-scripts' bucket at this resolution nearest to the subject's shape)
    size: int = option(512, ge=8, le=16_384)
    aspect: str = "1:1"
    # "subject": the smallest window holding the subject plus padding (grown to avoid
    # upscaling); "max": the largest window of the aspect, placed on the subject
    fit: Literal["subject", "max"] = "subject"
    padding: float = option(0.1, ge=0, le=2)  # share of the subject box added on each side
    # never enlarge more than this; an image too small for the target is written smaller
    # (same aspect) and recorded as "small"
    max_upscale: float = option(1.0, gt=0, le=64)
    # where the subject box comes from, in order, after the user's crops.csv (which always wins)
    sources: tuple[str, ...] = SOURCES
    # face detector: "frontal", "none", an LBP cascade .xml (e.g. lbpcascade_animeface.xml)
    # or a YuNet .onnx; and the neighbouring hits a face needs (as `curate filter`)
    faces: str = "frontal"
    face_neighbors: int = option(7, ge=0, le=100)
    # salient regions are those above this many times the saliency map's mean
    saliency_level: float = option(1.5, gt=0)
    # also write a head close-up per subject face
    face_closeups: bool = False
    # output file format: "same" as the image (JPEG at quality 95), or "png"
    format: Literal["same", "png"] = "same"
    # processes cropping images (0 = one per core)
    workers: int = option(0, ge=0, le=512)

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
