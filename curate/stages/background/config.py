"""Options of `curate bg` (the `[bg]` table of curate.toml)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from curate.config import check_ranges, option
from curate.errors import CurateError

METHODS = ("rembg", "grabcut")


@dataclass(frozen=True)
class BgConfig:
    # "rembg": a segmentation model (needs the bg extra); "grabcut": OpenCV, no model at all
    method: Literal["rembg", "grabcut"] = "rembg"
    # a rembg session name (u2net, isnet-anime, birefnet-general, ...); ignored with model_path
    model: str = "u2net"
    # a local ONNX file with u2net's I/O, used where it lies (no need to move it)
    model_path: str = ""
    # fetch a missing named model from rembg's GitHub releases; false: fail with where to put it
    download: bool = True
    # what replaces the background in the colour channels: transparent, white, black or #RRGGBB
    fill: str = "transparent"
    # refine soft edges (hair) with rembg's alpha matting
    alpha_matting: bool = False
    # write only the masks (folders with --out)
    mask_only: bool = False
    # GrabCut's rectangle: "subject" = the box `curate crop` would find (faces, then saliency),
    # grown by `margin` of its size; "centre" = the centre box leaving `margin` on each side.
    seed: Literal["subject", "centre"] = "subject"
    margin: float = option(0.1, ge=0, lt=0.5)
    iterations: int = option(5, ge=1, le=100)
    # GrabCut works on a copy at most this many pixels on the long side (the mask is scaled back)
    max_side: int = option(1024, ge=16, le=16_384)

    def check(self) -> None:
        check_ranges(self, "bg")
        if self.method not in METHODS:
            raise CurateError(f"bg.method: {self.method!r} is not one of {', '.join(METHODS)}")
        parse_fill(self.fill)


def parse_fill(fill: str) -> tuple[int, int, int] | None:
    """None for transparent, else the RGB colour of `white`, `black` or `#RRGGBB`."""
    named = {"transparent": None, "white": (255, 255, 255), "black": (0, 0, 0)}
    text = fill.strip().lower()
    if text in named:
        return named[text]
    if len(text) == 7 and text.startswith("#"):
        try:
            value = int(text[1:], 16)
        except ValueError:
            pass
        else:
            return (value >> 16) & 255, (value >> 8) & 255, value & 255
    raise CurateError(f"bg.fill: {fill!r} is not transparent, white, black or #RRGGBB")
