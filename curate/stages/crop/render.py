"""One image in, its crops out: the subject, the main window, head close-ups, encoded bytes.

Runs in worker processes (`crop_file` takes and returns picklable values); writing the bytes
and recording them is the caller's job.
"""

from __future__ import annotations

import io
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from curate.paths import first_line
from curate.stages.crop.config import CropConfig
from curate.stages.crop.geometry import Window, output_size, place_window
from curate.stages.crop.subject import HEAD, Box, Subject, find_subject, grow
from curate.stages.quality.config import QualityConfig

JPEG_QUALITY = 95
# A close-up window wider than this many head widths is a medium shot, not a close-up.
CLOSEUP_MAX_ZOOM_OUT = 1.6
# A close-up that covers this share of the main crop adds nothing: the main crop is one.
CLOSEUP_MAX_OVERLAP = 0.7
EXTS = {"JPEG": ".jpg", "PNG": ".png", "WEBP": ".webp"}


@dataclass
class Piece:
    kind: str  # "main" or "closeup-N"
    window: Window
    data: bytes | None = None
    format: str = "PNG"
    mode: str = "RGB"

    @property
    def ext(self) -> str:
        return EXTS[self.format]


@dataclass
class Outcome:
    size: tuple[int, int] = (0, 0)  # the original's
    subject: Subject | None = None
    pieces: list[Piece] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    error: str | None = None


def crop_file(job: tuple[str, Box | None, CropConfig, bool]) -> Outcome:
    """Open `path`, find its subject (the user box when given) and its crops; with `render`,
    encode each crop."""
    path, user, config, render = job
    try:
        with Image.open(Path(path)) as image:
            image.load()
            fmt = image.format or "PNG"
            image = ImageOps.exif_transpose(image)
    except (OSError, ValueError, Image.DecompressionBombError) as exc:
        return Outcome(error=f"cannot decode ({first_line(exc)}): re-download it or leave it out")
    outcome = plan(image, config, user)
    if render:
        for piece in outcome.pieces:
            encode(image, piece, fmt, config.format)
    return outcome


def plan(image: Image.Image, config: CropConfig, user: Box | None = None) -> Outcome:
    """The subject and the windows of every crop of an opened image."""
    has_alpha = image.mode in ("RGBA", "LA", "PA") or "transparency" in image.info
    rgba = image.convert("RGBA") if has_alpha else None
    rgb = np.asarray(_flat(rgba) if rgba is not None else image.convert("RGB"))
    alpha = np.asarray(rgba.getchannel("A")) if rgba is not None else None
    quality = replace(QualityConfig(), face_neighbors=config.face_neighbors)
    subject = find_subject(rgb, alpha, sources=config.sources, detector=config.detector, quality=quality,
                           user=_clip(user, image.size) if user else None,
                           saliency_level=config.saliency_level)
    out = output_size(config.size, config.aspect, image.size, subject.box)
    main = place_window(image.size, subject.box, out, fit=config.fit, padding=config.padding,
                        max_upscale=config.max_upscale, focus=subject.focus)
    outcome = Outcome(image.size, subject, [Piece("main", main)])
    if config.face_closeups:
        _closeups(outcome, config, out)
    return outcome


def _closeups(outcome: Outcome, config: CropConfig, out: tuple[int, int]) -> None:
    main = outcome.pieces[0].window
    faces = sorted(outcome.subject.faces if outcome.subject else (), key=lambda f: -f.w * f.h)
    for n, face in enumerate(faces, 1):
        head = grow(face.box, HEAD, outcome.size)
        centre = (face.x + face.w / 2, face.y + face.h / 2)
        window = place_window(outcome.size, head, out, fit="subject", padding=0.0,
                              max_upscale=config.max_upscale, focus=centre)
        if window.small or window.box[2] > CLOSEUP_MAX_ZOOM_OUT * head[2]:
            outcome.notes.append(f"face {n} ({face.w}x{face.h} px) is too small for a {out[0]}x{out[1]} "
                                 f"close-up without enlarging it more than {config.max_upscale:g}x")
        elif _share_of(main.box, window.box) >= CLOSEUP_MAX_OVERLAP:
            outcome.notes.append(f"face {n}: the main crop is already a close-up of it")
        else:
            outcome.pieces.append(Piece(f"closeup-{n}", window))


def encode(image: Image.Image, piece: Piece, source_format: str, policy: str) -> None:
    """The crop's bytes: JPEG stays JPEG (quality 95) unless it has transparency, WebP stays
    WebP (lossless), everything else and `policy` "png" is PNG."""
    x, y, w, h = piece.window.box
    keep_alpha = image.mode in ("RGBA", "LA", "PA") or "transparency" in image.info
    source = image.convert("RGBA" if keep_alpha else "RGB")
    if (w, h) == piece.window.out:
        cropped = source.crop((x, y, x + w, y + h))
    elif keep_alpha:
        # Pillow resizes RGBA premultiplied, which turns the colour under alpha 0 black: a cut-out's
        # fill (what a trainer without alpha_mask sees) is resized apart from its mask instead.
        def scaled(im: Image.Image) -> Image.Image:
            return im.resize(piece.window.out, Image.Resampling.LANCZOS, box=(x, y, x + w, y + h))
        colour, mask = scaled(source.convert("RGB")), scaled(source.getchannel("A"))
        cropped = Image.merge("RGBA", (*colour.split(), mask))
    else:
        cropped = source.resize(piece.window.out, Image.Resampling.LANCZOS, box=(x, y, x + w, y + h))
    fmt = source_format if policy == "same" and source_format in EXTS else "PNG"
    if fmt == "JPEG" and keep_alpha:
        fmt = "PNG"
    buf = io.BytesIO()
    options = {"JPEG": {"quality": JPEG_QUALITY, "subsampling": 0}, "WEBP": {"lossless": True}}
    cropped.save(buf, fmt, **options.get(fmt, {}))
    piece.data, piece.format, piece.mode = buf.getvalue(), fmt, cropped.mode


def _share_of(a: tuple[int, int, int, int], b: tuple[int, int, int, int]) -> float:
    """Share of box a's area that box b covers."""
    ix = max(0, min(a[0] + a[2], b[0] + b[2]) - max(a[0], b[0]))
    iy = max(0, min(a[1] + a[3], b[1] + b[3]) - max(a[1], b[1]))
    return ix * iy / max(1, a[2] * a[3])


def _flat(rgba: Image.Image) -> Image.Image:
    white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
    return Image.alpha_composite(white, rgba).convert("RGB")


def _clip(box: Box, size: tuple[int, int]) -> Box:
    x0, y0 = min(max(box[0], 0.0), size[0] - 1.0), min(max(box[1], 0.0), size[1] - 1.0)
    x1, y1 = min(box[0] + box[2], float(size[0])), min(box[1] + box[3], float(size[1]))
    return x0, y0, max(1.0, x1 - x0), max(1.0, y1 - y0)
