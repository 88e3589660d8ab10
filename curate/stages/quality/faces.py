"""Face detection for the quality filter (faces at the border) and for crops (subject boxes).

Detectors by name (`DETECTORS`) or by file: an OpenCV LBP cascade `.xml` (e.g. nagadomi's
`lbpcascade_animeface.xml` for anime faces) runs in `cascade.py`; a YuNet `.onnx` face model
runs in OpenCV's `FaceDetectorYN`. The built-in "frontal" is OpenCV's
`lbpcascade_frontalface.xml` (shipped in `data/`, as scikit-image ships it): OpenCV 5 wheels
no longer carry cascade files in `cv2.data.haarcascades`.

Images are searched at most `DETECT_SIDE` px on the long side: faces smaller than the
cascade's 24 px window there (about 5% of the long side) are not found, and a 4000 px photo
costs what a 640 px one does.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from curate.errors import CurateError
from curate.stages.quality.cascade import detect, load_cascade

DETECT_SIDE = 640
DATA = Path(__file__).parent / "data"
DETECTORS = {"frontal": DATA / "lbpcascade_frontalface.xml"}
NO_FACES = "none"
# Cascade hits are grouped at this many neighbours; what counts as a face is decided later
# (QualityConfig.face_neighbors), so that a stricter setting needs no second detection.
BASE_NEIGHBORS = 2
PAD = 0.1  # replicated margin around the image while searching, as a share of the long side


@dataclass(frozen=True)
class Face:
    x: int
    y: int
    w: int
    h: int
    score: float  # cascade: neighbouring hits; YuNet: confidence x 100

    @property
    def box(self) -> tuple[int, int, int, int]:
        return self.x, self.y, self.w, self.h

    def as_list(self) -> list[float]:
        return [self.x, self.y, self.w, self.h, self.score]


def detector_key(name: str) -> str:
    """What identifies a detector's results: its name, or its file with size and mtime."""
    if name in DETECTORS or name == NO_FACES:
        return name
    path = Path(name)
    try:
        st = path.stat()
    except OSError as exc:
        raise CurateError(f"face detector {name!r}: not one of {', '.join([*DETECTORS, NO_FACES])} "
                          f"and not a readable file ({exc.strerror})") from exc
    return f"{path.absolute()}:{st.st_size}:{st.st_mtime_ns}"


def check_detector(name: str) -> None:
    """Fail early, with the valid choices, on a detector that cannot be used."""
    detector_key(name)
    if name not in DETECTORS and name != NO_FACES and Path(name).suffix.lower() not in (".xml", ".onnx"):
        raise CurateError(f"face detector {name!r}: give an OpenCV LBP cascade (.xml) or a YuNet "
                          f"model (.onnx), or one of {', '.join([*DETECTORS, NO_FACES])}")
    if name not in DETECTORS and Path(name).suffix.lower() == ".xml":
        _cascade(str(Path(name).absolute()))


@functools.cache
def _cascade(path: str):  # type: ignore[no-untyped-def]
    return load_cascade(Path(path))


def find_faces(rgb: np.ndarray, detector: str) -> list[Face]:
    """Faces in an RGB uint8 image, in its own pixel coordinates, largest first."""
    if detector == NO_FACES:
        return []
    import cv2

    from curate.stages.quality.measures import luminance, shrink

    small = shrink(rgb, DETECT_SIDE)
    scale = rgb.shape[1] / small.shape[1]
    # A face flush with the edge has fewer window positions around it, so the cascade finds it
    # with few neighbours or not at all; a replicated margin gives it the same support as a
    # face inside the frame (border faces 7-53 neighbours instead of 3-34 on the fixtures).
    pad = round(PAD * max(small.shape[:2]))
    padded = cv2.copyMakeBorder(small, pad, pad, pad, pad, cv2.BORDER_REPLICATE)
    path = DETECTORS.get(detector, Path(detector))
    if path.suffix.lower() == ".onnx":
        found = _yunet(padded, path)
    else:
        hits = detect(_cascade(str(path.absolute())), luminance(padded), min_neighbors=BASE_NEIGHBORS)
        found = [Face(*box, float(n)) for box, n in hits]
    faces = [_clip(f, pad, scale, rgb.shape[1], rgb.shape[0]) for f in found]
    return sorted((f for f in faces if f.w > 0 and f.h > 0), key=lambda f: -f.w * f.h)


def _clip(face: Face, pad: int, scale: float, width: int, height: int) -> Face:
    """From padded, shrunk coordinates to the image's own, cut to the frame."""
    x0, y0 = max(0.0, (face.x - pad) * scale), max(0.0, (face.y - pad) * scale)
    x1 = min(float(width), (face.x - pad + face.w) * scale)
    y1 = min(float(height), (face.y - pad + face.h) * scale)
    return Face(round(x0), round(y0), round(x1 - x0), round(y1 - y0), face.score)


def _yunet(rgb: np.ndarray, model: Path) -> list[Face]:
    """OpenCV's YuNet face detector (a face_detection_yunet_*.onnx file)."""
    import cv2

    try:
        net = cv2.FaceDetectorYN.create(str(model), "", (rgb.shape[1], rgb.shape[0]), 0.6, 0.3, 500)
        _, found = net.detect(np.ascontiguousarray(rgb[..., ::-1]))
    except cv2.error as exc:
        raise CurateError(f"{model}: cannot run it as a YuNet face model ({exc.msg.strip()})") from exc
    if found is None:
        return []
    return [Face(round(r[0]), round(r[1]), round(r[2]), round(r[3]), float(r[-1]) * 100) for r in found]
