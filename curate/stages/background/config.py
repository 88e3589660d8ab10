"""Options of `curate bg` (the `[bg]` table of curate.toml)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from curate.config import check_ranges, option
from curate.errors import CurateError

METHODS = ("rembg", "grabcut")


@dataclass(frozen=True)
class BgConfig:
    """Options of `curate bg`: how the subject is cut out and what replaces the background."""

    method: Literal["rembg", "grabcut"] = option("rembg", help=(
        "rembg: a segmentation model (needs the bg extra); grabcut: OpenCV, no model at all."))
    model: str = option("u2net", help=(
        "The rembg model: u2net, isnet-anime, isnet-general-use, birefnet-general, ...; ignored "
        "with model_path."))
    model_path: str = option("", help=(
        "A local ONNX file with u2net's inputs and outputs, used where it lies."))
    download: bool = option(True, help=(
        "Fetch a missing named model from rembg's GitHub releases; false: fail, saying which file "
        "to put where."))
    fill: str = option("transparent", help=(
        "What replaces the background in the colour channels: transparent, white, black or "
        "#RRGGBB; the alpha channel keeps the mask."))
    alpha_matting: bool = option(False, help="Refine soft edges (hair) with rembg's alpha matting.")
    mask_only: bool = option(False, help="Write only the masks (greyscale PNG; plain folders with --out).")
    seed: Literal["subject", "centre"] = option("subject", help=(
        "GrabCut's rectangle: \"subject\" = the box `curate crop` would find (faces, then "
        "saliency), grown by margin of its size; \"centre\" = the centre box leaving margin on "
        "each side."))
    margin: float = option(0.1, ge=0, lt=0.5, help="GrabCut: the margin of its rectangle (see seed).")
    iterations: int = option(5, ge=1, le=100, help="GrabCut iterations.")
    max_side: int = option(1024, ge=16, le=16_384, help=(
        "GrabCut works on a copy at most this many pixels on the long side (the mask is scaled back)."))

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
