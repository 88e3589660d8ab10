"""Masks: OpenCV GrabCut seeded from the subject (or centre) box, or a rembg session (named model or a local
ONNX file) made once and reused for the whole batch. rembg and onnxruntime load lazily."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from curate.errors import CurateError
from curate.paths import display, first_line
from curate.stages.background.config import BgConfig

RELEASES = "https://github.com/danielgatis/rembg/releases"


@dataclass
class Cut:
    mask: np.ndarray  # uint8 HxW, 255 = subject
    colour: np.ndarray  # uint8 HxWx3, the subject's colour (matted foreground or the image)


def seed_box(width: int, height: int, margin: float) -> tuple[int, int, int, int]:
    """The centre box x, y, w, h leaving `margin` of each side outside (GrabCut's rectangle)."""
    x, y = round(width * margin), round(height * margin)
    return x, y, max(1, width - 2 * x), max(1, height - 2 * y)


def subject_seed(rgb: np.ndarray, margin: float) -> tuple[int, int, int, int] | None:
    """The crop stage's subject box (faces, else saliency) grown by `margin` of its size, kept
    at least 2 px inside the image (GrabCut needs some background outside); None if it would
    cover the whole image."""
    from curate.stages.crop.subject import find_subject

    h, w = rgb.shape[:2]
    x, y, bw, bh = find_subject(rgb, None, sources=("faces", "saliency")).box
    x0, y0 = max(2, round(x - bw * margin)), max(2, round(y - bh * margin))
    x1, y1 = min(w - 2, round(x + bw * (1 + margin))), min(h - 2, round(y + bh * (1 + margin)))
    if x1 - x0 < 8 or y1 - y0 < 8 or (x1 - x0) * (y1 - y0) >= 0.95 * w * h:
        return None
    return x0, y0, x1 - x0, y1 - y0


# GrabCut models the background from the pixels outside its rectangle: a rectangle covering the
# image (margin 0, a subject that fills the frame, a tiny image) leaves it none and OpenCV
# asserts `!bgdSamples.empty()`. The rectangle is kept this share of each side (>= 2 px) inside.
MIN_BORDER = 0.02


def with_background(rect: tuple[int, int, int, int], width: int,
                    height: int) -> tuple[int, int, int, int] | None:
    """rect shrunk so that a border of every side stays outside it; None when the image is too
    small to have both a border and an inside."""
    bx, by = max(2, round(width * MIN_BORDER)), max(2, round(height * MIN_BORDER))
    if width < 2 * bx + 2 or height < 2 * by + 2:
        return None
    x0, y0 = max(rect[0], bx), max(rect[1], by)
    x1, y1 = min(rect[0] + rect[2], width - bx), min(rect[1] + rect[3], height - by)
    if x1 - x0 < 1 or y1 - y0 < 1:
        return bx, by, width - 2 * bx, height - 2 * by
    return x0, y0, x1 - x0, y1 - y0


def grabcut_mask(rgb: np.ndarray, config: BgConfig) -> np.ndarray:
    """GrabCut from the seed box: outside it is background, inside is modelled."""
    import cv2

    h, w = rgb.shape[:2]
    scale = min(1.0, config.max_side / max(h, w))
    small = rgb if scale == 1.0 else cv2.resize(rgb, (max(1, round(w * scale)), max(1, round(h * scale))),
                                                interpolation=cv2.INTER_AREA)
    sh, sw = small.shape[:2]
    rect = seed_box(sw, sh, config.margin)
    if config.seed == "subject":
        found = subject_seed(small, config.margin)
        rect = found if found is not None else rect
    inner = with_background(rect, sw, sh)
    if inner is None:  # a few pixels across: nothing to model a background from, all subject
        return np.full((h, w), 255, np.uint8)
    rect = inner
    mask = np.zeros((sh, sw), np.uint8)
    bgd, fgd = np.zeros((1, 65), np.float64), np.zeros((1, 65), np.float64)
    cv2.setRNGSeed(0)
    cv2.grabCut(np.ascontiguousarray(small[:, :, ::-1]), mask, rect, bgd, fgd,
                config.iterations, cv2.GC_INIT_WITH_RECT)
    fg = np.where((mask == cv2.GC_FGD) | (mask == cv2.GC_PR_FGD), 255, 0).astype(np.uint8)
    if scale != 1.0:
        fg = cv2.resize(fg, (w, h), interpolation=cv2.INTER_LINEAR)
    return fg


class Segmenter:
    """Makes a Cut per image with one method; `device` says where it runs, in one line."""

    def __init__(self, config: BgConfig) -> None:
        self.config = config
        self.session: Any = None
        self.device = "grabcut: OpenCV on CPU (no model)"
        if config.method == "rembg":
            self.session = open_session(config)
            providers = self.session.inner_session.get_providers()
            where = "GPU" if providers[0] != "CPUExecutionProvider" else "CPU"
            self.device = f"rembg: {self.session.model_name} on {where} ({providers[0]})"

    def cut(self, image: Image.Image) -> Cut:
        rgb = np.asarray(image.convert("RGB"))
        if self.session is None:
            return Cut(grabcut_mask(rgb, self.config), rgb)
        from rembg import remove

        out = np.asarray(remove(image.convert("RGB"), session=self.session,
                                alpha_matting=self.config.alpha_matting).convert("RGBA"))
        colour = out[:, :, :3] if self.config.alpha_matting else rgb
        return Cut(np.ascontiguousarray(out[:, :, 3]), colour)


def _rembg() -> Any:
    try:
        import rembg  # first import compiles numba code once (~40 s)
    except ImportError as exc:
        raise CurateError("bg --method rembg needs rembg and onnxruntime: pip install 'curate[bg]' "
                          "(or use --method grabcut, which needs no model)") from exc
    return rembg


def open_session(config: BgConfig) -> Any:
    rembg = _rembg()
    if config.model_path:
        path = Path(config.model_path).expanduser().absolute()
        if not path.is_file():
            raise CurateError(f"bg.model_path {path} is not a file: name a u2net-style .onnx model")
        try:
            with _model_home(path.parent):
                return _new(rembg, "u2net_custom", model_path=str(path))
        except Exception as exc:  # onnxruntime's InvalidProtobuf, NoSuchFile, Fail, ...: not a model
            raise CurateError(f"bg.model_path {display(path)}: cannot load it as an ONNX model "
                              f"({type(exc).__name__}: {first_line(exc)}): name a complete u2net-style "
                              ".onnx file (re-download it if it is damaged), or use --method "
                              "grabcut") from exc
    from rembg.sessions import sessions_class

    found = [c for c in sessions_class if c.name() == config.model]
    if not found:
        names = sorted(c.name() for c in sessions_class if not c.name().endswith("_custom"))
        raise CurateError(f"bg.model: rembg has no model {config.model!r}; known: {', '.join(names)}")
    fname = f"{config.model}.onnx"
    if not config.download and found[0].resolve_existing(fname) is None:
        raise CurateError(missing_model(found[0], fname))
    try:
        return _new(rembg, config.model)
    except (OSError, ValueError) as exc:  # a failed download (requests/pooch errors are OSError)
        raise CurateError(f"{missing_model(found[0], fname)} ({exc})") from exc


def missing_model(session_class: Any, fname: str) -> str:
    where = session_class.model_dir()
    return (f"rembg model {fname} is not here and was not downloaded: put {fname} (from {RELEASES}) "
            f"in {where} (or set U2NET_HOME to a folder holding it), or pass --model-path FILE.onnx, "
            "or use --method grabcut")


def _new(rembg: Any, name: str, **kwargs: Any) -> Any:
    import warnings

    with warnings.catch_warnings():  # the provider fallback is stated in Segmenter.device instead
        warnings.simplefilter("ignore", RuntimeWarning)
        return rembg.new_session(name, **kwargs)


@contextmanager
def _model_home(folder: Path) -> Iterator[None]:
    """rembg loads custom models only from inside its model home: point U2NET_HOME at the
    model's own folder while the session is made, so the file stays where the user keeps it."""
    old = os.environ.get("U2NET_HOME")
    os.environ["U2NET_HOME"] = str(folder)
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("U2NET_HOME", None)
        else:
            os.environ["U2NET_HOME"] = old
