"""Thresholds applied to stored scores: which checks an image fails, each with a reason.

Pure functions of (scores, config): re-judging at other thresholds reads no image.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from curate.stages.quality.config import QualityConfig

Scores = dict[str, Any]
Failure = tuple[str, str]  # (check id, reason)


def _blur(s: Scores, c: QualityConfig) -> str | None:
    if s["sharpness"] < c.min_sharpness:
        return (f"blurry: sharpness {s['sharpness']:.1f} < {c.min_sharpness:g} "
                "(variance of the Laplacian at 512 px)")
    if s["fine_detail"] < c.min_fine_detail:
        return (f"blurry: fine detail {s['fine_detail']:.2f} < {c.min_fine_detail:g} "
                "(looks upscaled from a smaller image)")
    return None


def _small(s: Scores, c: QualityConfig) -> str | None:
    if min(s["width"], s["height"]) < c.min_side:
        return f"too small: {s['width']}x{s['height']}, short side below {c.min_side} px"
    return None


def _aspect(s: Scores, c: QualityConfig) -> str | None:
    ratio = max(s["width"], s["height"]) / max(1, min(s["width"], s["height"]))
    if ratio > c.max_aspect:
        return f"extreme aspect ratio {ratio:.1f}:1 (above {c.max_aspect:g}:1)"
    return None


def _dark(s: Scores, c: QualityConfig) -> str | None:
    if s["p99"] < c.dark_below:
        return f"too dark: 99% of the pixels are at or below {s['p99']:.0f} of 255 (limit {c.dark_below:g})"
    return None


def _bright(s: Scores, c: QualityConfig) -> str | None:
    if s["p1"] > c.bright_above:
        return (f"washed out: 99% of the pixels are at or above {s['p1']:.0f} of 255 "
                f"(limit {c.bright_above:g})")
    return None


def _monochrome(s: Scores, c: QualityConfig) -> str | None:
    if s["colour"] < c.min_colour:
        return f"greyscale or monochrome: colour spread {s['colour']:.1f} < {c.min_colour:g}"
    return None


def _blocky(s: Scores, c: QualityConfig) -> str | None:
    if s["blockiness"] > c.max_blockiness:
        return f"heavy JPEG blocks: blockiness {s['blockiness']:.2f} > {c.max_blockiness:g}"
    return None


def _text(s: Scores, c: QualityConfig) -> str | None:
    if s["text"] > c.max_text:
        return f"text or watermark over {s['text']:.0%} of the picture (limit {c.max_text:.0%})"
    return None


def _border_face(s: Scores, c: QualityConfig) -> str | None:
    faces = border_faces(s, c)
    if not faces:
        return None
    x, y, w, h = faces[0]
    more = f" and {len(faces) - 1} more" if len(faces) > 1 else ""
    return f"another person's face at the border: {w}x{h} at ({x},{y}){more}"


def faces(s: Scores, c: QualityConfig) -> list[tuple[int, int, int, int]]:
    """Detected faces with enough neighbouring hits, largest first."""
    return [tuple(int(v) for v in f[:4]) for f in s.get("faces", ())  # type: ignore[misc]
            if f[4] >= c.face_neighbors]


def border_faces(s: Scores, c: QualityConfig) -> list[tuple[int, int, int, int]]:
    """Faces touching an edge, except the subject: the largest face when it is a close-up."""
    width, height = s["width"], s["height"]
    out = []
    for i, (x, y, w, h) in enumerate(faces(s, c)):
        if i == 0 and h >= c.subject_face * min(width, height):
            continue
        # the head reaches beyond the detected face box: grow it by border_margin of its size
        mx, my = c.border_margin * w, c.border_margin * h
        if x - mx <= 0 or y - my <= 0 or x + w + mx >= width or y + h + my >= height:
            out.append((x, y, w, h))
    return out


JUDGES: dict[str, Callable[[Scores, QualityConfig], str | None]] = {
    "blur": _blur, "small": _small, "aspect": _aspect, "dark": _dark, "bright": _bright,
    "monochrome": _monochrome, "blocky": _blocky, "text": _text, "border_face": _border_face,
}


def judge(scores: Scores, config: QualityConfig) -> list[Failure]:
    """The checks `scores` fail under `config`, in CHECKS order."""
    out = []
    for check in config.active:
        reason = JUDGES[check](scores, config)
        if reason is not None:
            out.append((check, reason))
    return out
