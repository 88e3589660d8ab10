"""A second look at candidate pairs: feature matching, a fitted transform and aligned pixels.

Why (figures from `bench/dedupe_accuracy.py` on `fixtures/dupes.py`: 13 photos with 11-12
edited copies each, 10 hard negatives; 966 duplicate pairs, 14,259 other pairs; see
docs/benchmarks.md (Dedupe accuracy)):

* No perceptual hash threshold reaches the target (recall >= 0.95 at precision >= 0.99).
  phash puts the two halves of a stereo pair 4 bits apart, as close as a recompressed copy,
  while an 8% crop or a transparent frame moves a copy up to 24 bits from its original.
  Precision drops below 0.99 from t = 4 on; at t = 2 recall is 0.56, at t = 10 0.87.
  dhash, whash and ahash do no better; colorhash puts unrelated photos at distance 0.
* So pairs beyond a small threshold and within a loose candidate one (`candidate_threshold`)
  are checked here. Both images are decoded small (`hashing.prepare`: upright, alpha onto
  white) and scaled to the same long side (384 px), so a copy's transform is close to the
  identity whatever its file size. ORB keypoints are matched (ratio test, one to one) and a
  similarity transform is fitted by RANSAC: >= 20 inliers (copies have 44 or more, unrelated
  photos at most 11), scale within 1.25x (a 60% crop needs 1.67x), rotation within 10 degrees.
* The transform must cover most of both images: >= 0.85 of each for every copy (crops of up
  to 8% per axis), 0.28 for two crops of one photo that overlap by 28%.
* The aligned images must agree everywhere, not only at keypoints: 16 px blocks of 128 px
  thumbnails (border and flat blocks left out) are compared by normalised correlation.
  Copies agree in >= 93% of blocks (a watermark costs a few); the stereo pair, whose
  foreground shifts ~4% against the background, in <= 63%, and two different photos that
  carry the same watermark find no transform at all.
* score = min(coverage, agreement): >= 0.85 for every duplicate pair in the fixture, <= 0.63
  for every other pair; `min_score` = 0.75 sits between. Identical images score 1.

Limits: a picture with almost no corners (a flat colour, a smooth gradient) gets no
keypoints and is never confirmed; its copies have to be close enough in hash distance.

Cost: ~3.5 ms of CPU per image (decode and ORB, once per image however many pairs it is in)
and ~1.5 ms per pair (mostly descriptor matching). Threads, not processes: Pillow and OpenCV
release the GIL, so decoding runs 2x faster on 2 threads, and matching already spreads over
OpenCV's own threads; no pool start-up, nothing pickled. 1,246 candidate pairs over 175
images take 1.4 s on 2 cores (2.0 s on one thread).
"""

from __future__ import annotations

import math
import os
from collections import Counter
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import NamedTuple

import cv2
import numpy as np
from PIL import Image

from curate.stages.dedupe.hashing import hash_bits, prepare

# Candidate threshold per 64 bits, by hash. phash: the smallest that links every copy in the
# fixture to its cluster (16 loses a transparent-framed copy, 20 doubles the unrelated
# candidates; docs/benchmarks.md (Dedupe accuracy)). The other hashes get the same share of their
# bits and still link fewer copies. colorhash is a colour histogram (unrelated photos share
# it exactly); its small value only bounds the work. Unrelated candidates grow steeply with
# the threshold: for uniform 64-bit hashes 3e-4 of all pairs are within 18, 4e-5 within 16.
CANDIDATE_64 = {"phash": 18, "dhash": 18, "whash": 18, "ahash": 18, "colorhash": 8}
BLOCK = 16  # px of the thumbnail per compared block
BORDER = 0.06  # fraction of each side left out of the comparison (frames, cropped edges)
TEXTURE_STD = 3.0  # grey levels: a block flatter than this in both images says nothing
MIN_BLOCKS = 4  # below this many textured blocks, fall back to one global correlation
# Pairs checked per batch; only their images' features are held (~40 KB each).
BATCH_PAIRS = 2048


@dataclass(frozen=True)
class VerifyConfig:
    side: int = 384  # long side (px) both images are scaled to for feature matching
    thumb: int = 128  # long side (px) of the thumbnails compared pixel by pixel
    features: int = 500  # ORB keypoints per image
    ratio: float = 0.8  # Lowe's ratio test for a match
    ransac_px: float = 3.0  # RANSAC inlier distance at `side`
    min_inliers: int = 20
    max_scale: float = 1.25  # after size normalisation a copy's scale is ~1 (crops: <= 1.09)
    max_rotation: float = 10.0  # degrees
    block_ncc: float = 0.7  # a block agrees when its correlation reaches this
    min_score: float = 0.75  # min(coverage, agreement) a duplicate needs
    mirrored: bool = False  # also try the second image mirrored (for flip-invariant hashes)


class Features(NamedTuple):
    """What the comparison needs of one image, at `side` scale."""

    width: int
    height: int
    points: np.ndarray  # (N, 2) float32 keypoint positions
    descriptors: np.ndarray | None  # (N, 32) uint8 ORB descriptors
    thumb: np.ndarray  # uint8 grey thumbnail, lightly blurred


def candidate_threshold(method: str, hash_size: int) -> int:
    """Loose Hamming threshold whose pairs go to `confirm_pairs`, scaled by the hash length."""
    bits = hash_bits(method, hash_size)
    return round(CANDIDATE_64[method] * bits / 64)


def load_grey(path: str | os.PathLike[str], side: int) -> np.ndarray | None:
    """The image upright, flattened onto white, grey, long side `side`; None if undecodable."""
    try:
        with Image.open(path) as image:
            w, h = image.size
            # the short side that gives a long side of `side`, so JPEG draft can decode small
            flat = prepare(image, "draft", max(1, math.ceil(side * min(w, h) / max(w, h))))
            grey = flat.convert("L")
        scale = side / max(grey.size)
        size = (max(1, round(grey.width * scale)), max(1, round(grey.height * scale)))
        method = Image.Resampling.BOX if scale < 1 else Image.Resampling.BILINEAR
        return np.asarray(grey.resize(size, method))
    except Exception:  # any decoder failure only means this pair cannot be confirmed
        return None


def features_of(grey: np.ndarray, config: VerifyConfig) -> Features:
    # Small edge and patch sizes: a 25% copy upscaled to `side` has soft edges, and keypoints
    # near the border are where crops differ anyway.
    orb = cv2.ORB_create(nfeatures=config.features, edgeThreshold=15, patchSize=15, fastThreshold=10)
    keypoints, descriptors = orb.detectAndCompute(grey, None)
    points = np.array([k.pt for k in keypoints], dtype=np.float32).reshape(-1, 2)
    h, w = grey.shape
    f = config.thumb / max(w, h)
    small = cv2.resize(grey, (max(1, round(w * f)), max(1, round(h * f))), interpolation=cv2.INTER_AREA)
    # the blur absorbs sub-pixel misalignment and JPEG ringing, not the shifts of a stereo pair
    thumb = cv2.GaussianBlur(small, (0, 0), 1.0)  # uint8: a quarter of the memory of floats
    return Features(w, h, points, descriptors, thumb)


def file_features(path: str | os.PathLike[str], config: VerifyConfig,
                  mirror: bool = False) -> Features | None:
    """Features of an image file (mirrored left-right if asked); None if it cannot be read."""
    grey = load_grey(path, config.side)
    if grey is None:
        return None
    try:
        return features_of(np.ascontiguousarray(grey[:, ::-1]) if mirror else grey, config)
    except cv2.error:  # e.g. a 1-pixel sliver: nothing to match, like an undecodable file
        return None


def fit_transform(a: Features, b: Features, config: VerifyConfig) -> np.ndarray | None:
    """The similarity transform (2x3) from a to b that the matched keypoints agree on, or None."""
    if a.descriptors is None or b.descriptors is None or min(len(a.points), len(b.points)) < 2:
        return None
    knn = cv2.BFMatcher(cv2.NORM_HAMMING).knnMatch(a.descriptors, b.descriptors, k=2)
    good = [m[0] for m in knn if len(m) == 2 and m[0].distance < config.ratio * m[1].distance]
    # One-to-one: a flat or dark area makes many keypoints match one point of the other
    # image, and those matches fit a degenerate transform that shrinks everything to it.
    uses = Counter(m.trainIdx for m in good)
    good = [m for m in good if uses[m.trainIdx] == 1]
    if len(good) < config.min_inliers:
        return None
    src = a.points[[m.queryIdx for m in good]]
    dst = b.points[[m.trainIdx for m in good]]
    matrix, inliers = cv2.estimateAffinePartial2D(
        src, dst, method=cv2.RANSAC, ransacReprojThreshold=config.ransac_px * config.side / 384,
        maxIters=2000, confidence=0.995)
    if matrix is None or int(inliers.sum()) < config.min_inliers:
        return None
    scale = math.hypot(matrix[0, 0], matrix[1, 0])
    angle = math.degrees(math.atan2(matrix[1, 0], matrix[0, 0]))
    if not 1 / config.max_scale <= scale <= config.max_scale or abs(angle) > config.max_rotation:
        return None
    return matrix


def coverage(a: Features, b: Features, matrix: np.ndarray) -> float:
    """The overlap of a (mapped into b) and b, as a fraction of the smaller of the two."""
    corners = np.array([[0, 0], [a.width, 0], [a.width, a.height], [0, a.height]], dtype=np.float32)
    mapped = (corners @ matrix[:, :2].T + matrix[:, 2]).astype(np.float32)
    frame = np.array([[0, 0], [b.width, 0], [b.width, b.height], [0, b.height]], dtype=np.float32)
    overlap, _ = cv2.intersectConvexConvex(mapped, frame)
    area_a = abs(cv2.contourArea(mapped))
    return float(min(overlap / area_a, overlap / (b.width * b.height))) if area_a > 0 else 0.0


def align(a: Features, b: Features, matrix: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """a's thumbnail warped onto b's, b's thumbnail, and where a covers it (all float32)."""
    th, tw = b.thumb.shape
    to_thumb = matrix.astype(np.float64)
    # a's thumbnail pixels -> a's `side` pixels -> b's `side` pixels -> b's thumbnail pixels
    to_thumb[:, :2] *= (tw / b.width) / (a.thumb.shape[1] / a.width)
    to_thumb[:, 2] *= tw / b.width
    source = a.thumb.astype(np.float32)
    warped = cv2.warpAffine(source, to_thumb, (tw, th), flags=cv2.INTER_LINEAR)
    inside = cv2.warpAffine(np.ones_like(source), to_thumb, (tw, th), flags=cv2.INTER_NEAREST)
    return warped, b.thumb.astype(np.float32), inside


def agreement(a: Features, b: Features, matrix: np.ndarray, config: VerifyConfig) -> float:
    """Fraction of the textured blocks of b's thumbnail that a, aligned onto it, correlates with.

    Blocks, not one global correlation: a watermark or a transparent frame spoils a few blocks
    of a copy, while parallax (a stereo pair, a burst shot) spoils every block off the plane
    the transform was fitted to.
    """
    warped, target, inside = align(a, b, matrix)
    th, tw = target.shape
    my, mx = round(BORDER * th), round(BORDER * tw)
    rows, cols = (th - 2 * my) // BLOCK, (tw - 2 * mx) // BLOCK
    if rows < 1 or cols < 1:  # a sliver: one correlation over the overlap
        return max(0.0, _ncc(warped[inside > 0], target[inside > 0]))
    window = (slice(my, my + rows * BLOCK), slice(mx, mx + cols * BLOCK))
    raw_x, raw_y, m = (_blocks(v[window], rows, cols) for v in (warped, target, inside))
    whole = m.min(axis=1) > 0  # only blocks that lie entirely inside the overlap
    x = raw_x - raw_x.mean(axis=1, keepdims=True)
    y = raw_y - raw_y.mean(axis=1, keepdims=True)
    sx, sy = x.std(axis=1), y.std(axis=1)
    textured = whole & ((sx >= TEXTURE_STD) | (sy >= TEXTURE_STD))
    if textured.sum() < MIN_BLOCKS:  # a near-blank picture: compare its shading as a whole
        return max(0.0, _ncc(raw_x[whole], raw_y[whole]))
    ncc = (x * y).mean(axis=1)[textured] / (sx[textured] * sy[textured] + 1e-6)
    return float((ncc >= config.block_ncc).mean())


def _blocks(image: np.ndarray, rows: int, cols: int) -> np.ndarray:
    """(rows * cols, BLOCK * BLOCK): the image cut into BLOCK x BLOCK tiles."""
    return image.reshape(rows, BLOCK, cols, BLOCK).transpose(0, 2, 1, 3).reshape(rows * cols, -1)


def _ncc(x: np.ndarray, y: np.ndarray) -> float:
    if x.size < 2:
        return 0.0
    x, y = x.ravel() - x.mean(), y.ravel() - y.mean()
    den = math.sqrt(float((x * x).sum()) * float((y * y).sum()))
    return float((x * y).sum() / den) if den > 0 else 0.0


def compare(a: Features | None, b: Features | None, config: VerifyConfig = VerifyConfig()) -> float:
    """Score in [0, 1] of a and b being one picture: min(coverage, agreement); 0 if unmatched."""
    if a is None or b is None:
        return 0.0
    try:
        matrix = fit_transform(a, b, config)
        if matrix is None:
            return 0.0
        cover = coverage(a, b, matrix)
        if cover < config.min_score:  # skip the pixel comparison: it cannot raise the score
            return cover
        return min(cover, agreement(a, b, matrix, config))
    except cv2.error:  # degenerate geometry (a collapsed transform, an empty overlap)
        return 0.0


def confirm_pairs(
    paths: Sequence[str | os.PathLike[str]],
    pairs: Iterable[tuple[int, int]],
    config: VerifyConfig = VerifyConfig(),
    workers: int | None = None,
) -> list[tuple[int, int, float]]:
    """The pairs (i, j) of indices into paths that are one picture, with their score in [0, 1].

    Pairs come back in the order given; a pair with an undecodable file is left out (never
    raises). Each image is decoded once per batch of pairs, on `workers` threads (all cores).
    """
    todo = [(int(i), int(j)) for i, j in pairs if int(i) != int(j)]
    scores = score_pairs(paths, todo, config, workers)
    return [(i, j, s) for (i, j), s in zip(todo, scores, strict=True)
            if s is not None and s >= config.min_score]


def score_pairs(
    paths: Sequence[str | os.PathLike[str]],
    pairs: Sequence[tuple[int, int]],
    config: VerifyConfig = VerifyConfig(),
    workers: int | None = None,
) -> list[float | None]:
    """Each pair's score in [0, 1] (rounded to 4 places), None where a file cannot be decoded."""
    out: list[float | None] = []
    cache: dict[int, Features | None] = {}
    with ThreadPoolExecutor(max(1, workers or os.cpu_count() or 1)) as pool:
        for start in range(0, len(pairs), BATCH_PAIRS):
            batch = list(pairs[start:start + BATCH_PAIRS])
            cache = _load(pool, paths, {k for pair in batch for k in pair}, cache, config)
            scores = _scores(pool, batch, cache, cache, config)
            if config.mirrored:
                scores = _with_mirrored(pool, paths, batch, scores, cache, config)
            out += [None if cache[i] is None or cache[j] is None else round(s, 4)
                    for (i, j), s in zip(batch, scores, strict=True)]
    return out


def _load(pool: ThreadPoolExecutor, paths: Sequence[str | os.PathLike[str]], needed: set[int],
          cache: dict[int, Features | None], config: VerifyConfig,
          mirror: bool = False) -> dict[int, Features | None]:
    """Features of the needed images: kept from cache where there, else decoded.

    Only the needed images stay, so memory is bounded (~40 KB an image) however many pairs.
    """
    missing = sorted(needed - cache.keys())
    decoded = pool.map(lambda k: file_features(paths[k], config, mirror), missing)
    return {**{k: cache[k] for k in needed & cache.keys()}, **dict(zip(missing, decoded, strict=True))}


def _scores(pool: ThreadPoolExecutor, batch: Sequence[tuple[int, int]], first: dict[int, Features | None],
            second: dict[int, Features | None], config: VerifyConfig) -> list[float]:
    return list(pool.map(lambda pair: compare(first[pair[0]], second[pair[1]], config), batch))


def _with_mirrored(pool: ThreadPoolExecutor, paths: Sequence[str | os.PathLike[str]],
                   batch: list[tuple[int, int]], scores: list[float], cache: dict[int, Features | None],
                   config: VerifyConfig) -> list[float]:
    """Scores, raised where the second image mirrored matches better (rejected pairs only)."""
    retry = [n for n, s in enumerate(scores) if s < config.min_score
             and cache[batch[n][0]] is not None and cache[batch[n][1]] is not None]
    flipped = _load(pool, paths, {batch[n][1] for n in retry}, {}, config, mirror=True)
    again = _scores(pool, [batch[n] for n in retry], cache, flipped, config)
    out = list(scores)
    for n, s in zip(retry, again, strict=True):
        out[n] = max(out[n], s)
    return out
