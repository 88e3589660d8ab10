"""OpenCV LBP cascades (the `lbpcascade_*.xml` files) evaluated with numpy.

OpenCV 5 dropped `cv2.CascadeClassifier` and the cascade files from `cv2.data`, yet the face
detectors users have are cascades: OpenCV's `lbpcascade_frontalface.xml` (shipped here, under
`data/`) and nagadomi's `lbpcascade_animeface.xml` for anime faces. This is OpenCV's
`detectMultiScale` for LBP cascades, step for step: the image is shrunk by `scale_factor` per
level (bilinear), the window moves 2 px per step (1 px once the scale passes 2), each stage
sums its weak classifiers' leaves and rejects a window below the stage threshold, and the
hits are merged by `group_rectangles` (OpenCV's `groupRectangles`, eps 0.2).

A weak classifier reads one LBP feature: a 3x3 grid of equal blocks at a fixed place in the
window; the 8-bit code has one bit per outer block, set when its sum is >= the centre's, and
picks the left or right leaf through a 256-bit subset mask.

Windows are evaluated all at once per stage (numpy gathers on the integral image), so a
640 px image takes a few hundred milliseconds.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from curate.errors import CurateError

Box = tuple[int, int, int, int]  # x, y, w, h
THRESHOLD_EPS = 1e-5  # OpenCV lowers every stage threshold by this (float rounding)
# Bit of each outer block of the 3x3 grid, as OpenCV's LBPEvaluator orders them: clockwise
# from the top-left corner, top-left = 128.
_BIT_BLOCKS = ((0, 0, 128), (0, 1, 64), (0, 2, 32), (1, 2, 16), (2, 2, 8), (2, 1, 4), (2, 0, 2), (1, 0, 1))


@dataclass(frozen=True)
class Stage:
    threshold: float
    features: np.ndarray  # (K,) index into LbpCascade.rects
    subsets: np.ndarray  # (K, 256) bool: code -> left leaf
    leaves: np.ndarray  # (K, 2) float


@dataclass(frozen=True)
class LbpCascade:
    width: int
    height: int
    rects: np.ndarray  # (F, 4): x, y, block width, block height
    stages: tuple[Stage, ...]


def load_cascade(path: Path) -> LbpCascade:
    """Read an OpenCV cascade XML (the format opencv_traincascade writes, LBP features)."""
    try:
        root = ET.parse(path).getroot()
    except (OSError, ET.ParseError) as exc:
        raise CurateError(f"{path}: cannot read the cascade ({exc})") from exc
    cascade = root.find("cascade")
    if cascade is None:
        raise CurateError(f"{path}: not an OpenCV cascade in the traincascade format (no <cascade>); "
                          "old-format Haar files need opencv-python < 5 and are not supported")
    kind = (cascade.findtext("featureType") or "").strip().upper()
    if kind != "LBP":
        raise CurateError(f"{path}: a {kind or 'unknown'}-feature cascade; only LBP cascades "
                          "(lbpcascade_*.xml) run without cv2.CascadeClassifier, which OpenCV 5 removed; "
                          "use an LBP cascade or a YuNet .onnx face model")
    rects = np.array([[int(v) for v in (r.findtext("rect") or "").split()]
                      for r in cascade.iterfind("features/_")], dtype=np.int64)
    stages = tuple(_stage(node) for node in cascade.iterfind("stages/_"))
    if not len(rects) or not stages or rects.shape[1] != 4:
        raise CurateError(f"{path}: the cascade has no stages or features")
    return LbpCascade(int(cascade.findtext("width") or 0), int(cascade.findtext("height") or 0),
                      rects, stages)


def _stage(node: ET.Element) -> Stage:
    features, subsets, leaves = [], [], []
    for weak in node.iterfind("weakClassifiers/_"):
        values = [int(v) for v in (weak.findtext("internalNodes") or "").split()]
        # "left right feature subset[8]": stumps only (maxDepth 1), as every LBP cascade is
        features.append(values[2])
        words = np.array(values[3:11], dtype=np.int64) & 0xFFFFFFFF
        bits = (words[:, None] >> np.arange(32)) & 1  # code c -> word c >> 5, bit c & 31
        subsets.append(bits.reshape(256).astype(bool))
        leaves.append([float(v) for v in (weak.findtext("leafValues") or "").split()])
    return Stage(float(node.findtext("stageThreshold") or 0) - THRESHOLD_EPS,
                 np.array(features), np.array(subsets), np.array(leaves))


def _codes(blocks: list[list[np.ndarray]]) -> np.ndarray:
    """LBP codes from the 3x3 block sums (any array shape)."""
    centre = blocks[1][1]
    code = np.zeros(centre.shape, dtype=np.uint8)
    for i, j, bit in _BIT_BLOCKS:
        code |= (blocks[i][j] >= centre).astype(np.uint8) * np.uint8(bit)
    return code


def _dense_sums(stage: Stage, cascade: LbpCascade, table: np.ndarray, grid: tuple[int, int],
                step: int) -> np.ndarray:
    """Stage sums at every window of the grid: block sums by slicing, no gathers (early stages,
    where most windows are still alive)."""
    ny, nx = grid
    total = np.zeros(grid)
    for k, f in enumerate(stage.features):
        fx, fy, bw, bh = (int(v) for v in cascade.rects[f])
        # sum of the bw x bh block whose top-left corner is at each pixel
        box = table[bh:, bw:] - table[:-bh, bw:] - table[bh:, :-bw] + table[:-bh, :-bw]
        blocks = [[box[fy + i * bh:fy + i * bh + (ny - 1) * step + 1:step,
                       fx + j * bw:fx + j * bw + (nx - 1) * step + 1:step] for j in range(3)]
                  for i in range(3)]
        total += np.where(stage.subsets[k][_codes(blocks)], stage.leaves[k, 0], stage.leaves[k, 1])
    return total


def _sparse_sums(stage: Stage, cascade: LbpCascade, table: np.ndarray, ys: np.ndarray,
                 xs: np.ndarray) -> np.ndarray:
    """Stage sums at the given windows only (later stages, few windows left): one gather of
    the 4x4 block corners of every feature."""
    stride = table.shape[1]
    rx, ry, bw, bh = (cascade.rects[stage.features, i][:, None, None] for i in range(4))
    steps = np.arange(4)
    offs = ((ry + steps[None, :, None] * bh) * stride + rx + steps[None, None, :] * bw)
    corner = table.ravel()[(ys * stride + xs)[:, None, None, None] + offs[None]]  # (N, K, 4, 4)
    sums = corner[..., 1:, 1:] - corner[..., :-1, 1:] - corner[..., 1:, :-1] + corner[..., :-1, :-1]
    code = _codes([[sums[..., i, j] for j in range(3)] for i in range(3)])  # (N, K)
    left = stage.subsets[np.arange(len(stage.features))[None, :], code]
    return np.where(left, stage.leaves[:, 0], stage.leaves[:, 1]).sum(axis=1)


# Below this share of windows alive, gathering the survivors beats slicing the whole grid.
_SPARSE_BELOW = 0.05


def _level_hits(cascade: LbpCascade, small: np.ndarray, step: int) -> tuple[np.ndarray, np.ndarray]:
    import cv2

    table = cv2.integral(small)
    grid = ((small.shape[0] - cascade.height) // step + 1, (small.shape[1] - cascade.width) // step + 1)
    alive = np.ones(grid, dtype=bool)
    stages = iter(cascade.stages)
    for stage in stages:
        alive &= _dense_sums(stage, cascade, table, grid, step) >= stage.threshold
        if alive.mean() < _SPARSE_BELOW:
            break
    gy, gx = np.nonzero(alive)
    ys, xs = gy * step, gx * step
    for stage in stages:
        if not len(ys):
            break
        keep = _sparse_sums(stage, cascade, table, ys, xs) >= stage.threshold
        ys, xs = ys[keep], xs[keep]
    return xs, ys


def detect(cascade: LbpCascade, grey: np.ndarray, *, scale_factor: float = 1.1, min_neighbors: int = 3,
           min_size: int = 0) -> list[tuple[Box, int]]:
    """Objects in a uint8 greyscale image: (box, neighbours) pairs, as detectMultiScale finds them."""
    import cv2

    height, width = grey.shape
    hits: list[Box] = []
    factor = 1.0
    while True:
        size = (round(width / factor), round(height / factor))
        win = (round(cascade.width * factor), round(cascade.height * factor))
        if size[0] < cascade.width or size[1] < cascade.height:
            break
        if min(win) >= min_size:
            small = cv2.resize(grey, size, interpolation=cv2.INTER_LINEAR)
            xs, ys = _level_hits(cascade, small, 1 if factor > 2 else 2)
            hits += [(round(x * factor), round(y * factor), *win) for x, y in zip(xs, ys, strict=True)]
        factor *= scale_factor
    return group_rectangles(hits, min_neighbors)


def _similar(a: Box, b: Box, eps: float) -> bool:
    delta = eps * (min(a[2], b[2]) + min(a[3], b[3])) * 0.5
    return (abs(a[0] - b[0]) <= delta and abs(a[1] - b[1]) <= delta
            and abs(a[0] + a[2] - b[0] - b[2]) <= delta and abs(a[1] + a[3] - b[1] - b[3]) <= delta)


def group_rectangles(rects: list[Box], threshold: int, eps: float = 0.2) -> list[tuple[Box, int]]:
    """OpenCV's groupRectangles: average each cluster of similar boxes, keep clusters with more
    than `threshold` members, drop a box that lies inside a better-supported one."""
    parent = list(range(len(rects)))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for i in range(len(rects)):
        for j in range(i):
            if _similar(rects[i], rects[j], eps):
                parent[root(i)] = root(j)
    clusters: dict[int, list[Box]] = {}
    for i, rect in enumerate(rects):
        clusters.setdefault(root(i), []).append(rect)
    grouped = [(tuple(round(v) for v in np.mean(members, axis=0)), len(members))
               for members in clusters.values() if len(members) > threshold]
    out = []
    for i, (r1, n1) in enumerate(grouped):
        inside = any(
            i != j and (n2 > max(3, n1) or n1 < 3)
            and r1[0] >= r2[0] - round(r2[2] * eps) and r1[1] >= r2[1] - round(r2[3] * eps)
            and r1[0] + r1[2] <= r2[0] + r2[2] + round(r2[2] * eps)
            and r1[1] + r1[3] <= r2[1] + r2[3] + round(r2[3] * eps)
            for j, (r2, n2) in enumerate(grouped))
        if not inside:
            out.append((r1, n1))
    return out  # type: ignore[return-value]
