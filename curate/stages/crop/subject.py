"""Where the subject of an image is: a box to keep and a focus point, from the first source
that knows. The user's box (crops.csv) always wins; then, in the configured order, the alpha
mask left by background removal, detected faces, saliency; the whole image last.

A face is a small part of a person: the subject box of a face reaches from half a face above
it to three faces below it and three quarters of a face to each side (head and shoulders,
upper chest), with the face as the focus. Faces at the border that are not the largest
(other people, see `curate filter`) and faces under half the largest one's size do not count,
unless all faces are at the border.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace

import numpy as np

from curate.stages.quality.config import QualityConfig
from curate.stages.quality.faces import Face, find_faces
from curate.stages.quality.judge import border_faces

Box = tuple[float, float, float, float]
SOURCES = ("alpha", "faces", "saliency")
OPAQUE = 128  # alpha at or above this is subject
# rows/columns with fewer opaque pixels than this share of the side are specks, not subject
SPECK = 0.002
# the person around a face, in face sizes: (left, top, width, height)
BODY = (-0.75, -0.5, 2.5, 4.0)
# the head around a face, for close-ups: hair above, chin and neck below
HEAD = (-0.35, -0.5, 1.7, 1.9)


@dataclass(frozen=True)
class Subject:
    box: Box
    source: str  # user, alpha, face, saliency, centre
    focus: tuple[float, float]
    faces: tuple[Face, ...] = ()


def grow(face: tuple[int, int, int, int], shape: tuple[float, float, float, float],
         size: tuple[int, int]) -> Box:
    """A box around a face (in face sizes), clipped to the image."""
    x, y, w, h = face
    x0, y0 = max(0.0, x + shape[0] * w), max(0.0, y + shape[1] * h)
    x1 = min(float(size[0]), x + (shape[0] + shape[2]) * w)
    y1 = min(float(size[1]), y + (shape[1] + shape[3]) * h)
    return x0, y0, x1 - x0, y1 - y0


def union(boxes: list[Box]) -> Box:
    x0, y0 = min(b[0] for b in boxes), min(b[1] for b in boxes)
    x1, y1 = max(b[0] + b[2] for b in boxes), max(b[1] + b[3] for b in boxes)
    return x0, y0, x1 - x0, y1 - y0


def from_alpha(alpha: np.ndarray | None) -> Subject | None:
    """The opaque part's bounding box, when some of the image is transparent."""
    if alpha is None:
        return None
    opaque = alpha >= OPAQUE
    if opaque.all() or not opaque.any():
        return None
    rows = np.nonzero(opaque.sum(axis=1) > SPECK * opaque.shape[1])[0]
    cols = np.nonzero(opaque.sum(axis=0) > SPECK * opaque.shape[0])[0]
    if not len(rows) or not len(cols):
        return None
    box = (float(cols[0]), float(rows[0]), float(cols[-1] + 1 - cols[0]), float(rows[-1] + 1 - rows[0]))
    ys, xs = np.nonzero(opaque)
    return Subject(box, "alpha", (float(xs.mean()), float(ys.mean())))


def subject_faces(faces: list[Face], size: tuple[int, int], quality: QualityConfig) -> list[Face]:
    """The faces that belong to the subject: strong ones at least half the largest, without
    another person's face at the border (unless every face is at the border: then they are
    the subject, framed tightly)."""
    strong = [f for f in faces if f.score >= quality.face_neighbors]
    scores = {"width": size[0], "height": size[1], "faces": [f.as_list() for f in strong]}
    others = set(border_faces(scores, quality))
    inside = [f for f in strong if f.box not in others] or strong
    if not inside:
        return []
    largest = max(f.w * f.h for f in inside)
    return [f for f in inside if f.w * f.h >= 0.25 * largest]  # half the size: a quarter the area


def from_faces(faces: list[Face], size: tuple[int, int]) -> Subject | None:
    if not faces:
        return None
    box = union([grow(f.box, BODY, size) for f in faces])
    focus_face = max(faces, key=lambda f: f.w * f.h)
    return Subject(box, "face", (focus_face.x + focus_face.w / 2, focus_face.y + focus_face.h / 2),
                   tuple(faces))


def from_saliency(rgb: np.ndarray, level: float) -> Subject:
    from curate.stages.crop.saliency import salient_box

    box, focus = salient_box(rgb, level)
    return Subject(box, "saliency", focus)


def find_subject(rgb: np.ndarray, alpha: np.ndarray | None, *, sources: tuple[str, ...] = SOURCES,
                 detector: str = "frontal", quality: QualityConfig | None = None,
                 user: Box | None = None, saliency_level: float = 1.5) -> Subject:
    """The subject of an image (see module doc); faces are always looked for when a source
    or close-ups may need them, so `Subject.faces` lists them whichever source won."""
    quality = quality or QualityConfig()
    size = (rgb.shape[1], rgb.shape[0])
    faces = subject_faces(find_faces(rgb, detector), size, quality) if "faces" in sources else []
    if user is not None:
        return Subject(user, "user", (user[0] + user[2] / 2, user[1] + user[3] / 2), tuple(faces))
    finders: dict[str, Callable[[], Subject | None]] = {
        "alpha": lambda: from_alpha(alpha),
        "faces": lambda: from_faces(faces, size),
        "saliency": lambda: from_saliency(rgb, saliency_level),
    }
    for name in sources:
        found = finders[name]()
        if found is not None:
            return replace(found, faces=tuple(faces))
    return Subject((0.0, 0.0, float(size[0]), float(size[1])), "centre", (size[0] / 2, size[1] / 2),
                   tuple(faces))
