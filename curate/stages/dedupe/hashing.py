"""Perceptual hashes of image files, computed fast: reduced-size decoding on every core.

A hash is an int: the number imagehash's hex string spells (first hash bit most significant),
so `f"{value:0{bits // 4}x}"` round-trips with imagehash and imagededup. `search.pack_hashes`
turns a list of them into the uint64 words the search takes.

Decode modes, which change hashes slightly, so a `hash_key` names the mode and hashes with
different keys must never be compared:

* "draft": JPEGs are decoded at 1/2, 1/4 or 1/8 scale in the DCT domain (`Image.draft`),
  other formats are box-reduced by the same power of two right after decoding, keeping at
  least hash_size * 8 pixels a side. A 512 px JPEG then takes ~0.9 ms instead of ~2.2 ms
  (decode and phash), mostly because phash resizes 64 px instead of 512 px. Keeping 8x
  rather than the 4x phash needs costs nothing measurable (entropy decoding dominates) and
  halves the worst drift we saw between a photo and its resized or recompressed copies.
  For the grey-level hashes (all but colorhash) a colour JPEG is decoded straight to its luma
  channel (libjpeg skips chroma upsampling and colour conversion): ~20% less time per file,
  and the grey image is libjpeg's Y rather than Pillow's RGB -> L of it, so a few hashes differ
  in a bit; the key says "-luma" so such hashes never meet older ones.
* "full": the image at full size, as imagehash alone would hash it.

Every image is first turned upright (EXIF orientation) and any transparency is composited
onto white, so a cut-out PNG matches the same picture saved on a white background instead
of whatever colour its transparent pixels happen to hold.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Sequence
from functools import partial
from pathlib import Path
from typing import NamedTuple, TypeVar

import imagehash
import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from curate import executor
from curate.paths import first_line

DECODE_MODES = ("draft", "full")
# The smallest side draft decoding keeps, per unit of hash_size (phash itself resizes to 4x).
DRAFT_FACTOR = 8
A = TypeVar("A")
R = TypeVar("R")


def _phash(image: Image.Image, size: int) -> imagehash.ImageHash:
    return imagehash.phash(image, hash_size=size)


def _dhash(image: Image.Image, size: int) -> imagehash.ImageHash:
    return imagehash.dhash(image, hash_size=size)


def _whash(image: Image.Image, size: int) -> imagehash.ImageHash:
    return imagehash.whash(image, hash_size=size)


def _ahash(image: Image.Image, size: int) -> imagehash.ImageHash:
    return imagehash.average_hash(image, hash_size=size)


def _colorhash(image: Image.Image, size: int) -> imagehash.ImageHash:
    return imagehash.colorhash(image, binbits=size)  # 14 * binbits bits


METHODS: dict[str, Callable[[Image.Image, int], imagehash.ImageHash]] = {
    "phash": _phash,
    "dhash": _dhash,
    "whash": _whash,
    "ahash": _ahash,
    "colorhash": _colorhash,
}


class FileHash(NamedTuple):
    """The hash of one file, or None and a one-line reason when it could not be decoded."""

    value: int | None
    mirrored: int | None = None  # hash of the left-right mirrored image, when asked for
    error: str | None = None


def hash_bits(method: str = "phash", hash_size: int = 8) -> int:
    """Length in bits of the hashes `method` gives at `hash_size` (binbits for colorhash)."""
    _check(method, hash_size, "draft")
    return 14 * hash_size if method == "colorhash" else hash_size * hash_size


def hash_key(method: str = "phash", hash_size: int = 8, decode: str = "draft") -> str:
    """Name of the hash space, e.g. "phash-8-draft-luma": only hashes with equal keys compare."""
    _check(method, hash_size, decode)
    return f"{method}-{hash_size}-{decode}" + ("-luma" if _luma(method, decode) else "")


def _luma(method: str, decode: str) -> bool:
    """Whether JPEGs are decoded straight to grey for this hash (see the module doc)."""
    return decode == "draft" and method != "colorhash"


def _check(method: str, hash_size: int, decode: str) -> None:
    if method not in METHODS:
        raise ValueError(f"unknown hash method {method!r}; valid: {', '.join(METHODS)}")
    if decode not in DECODE_MODES:
        raise ValueError(f"unknown decode mode {decode!r}; valid: {', '.join(DECODE_MODES)}")
    if hash_size < 2:
        raise ValueError(f"hash_size must be at least 2, got {hash_size}")
    if method == "whash" and hash_size & (hash_size - 1):
        raise ValueError(f"whash needs a power-of-two hash_size, got {hash_size}")


def hash_image(
    image: Image.Image, method: str = "phash", hash_size: int = 8, flip_invariant: bool = False
) -> tuple[int, int | None]:
    """Hash of an already flattened image, and of its mirror image when flip_invariant."""
    fn = METHODS[method]
    value = _to_int(fn(image, hash_size))
    if not flip_invariant:
        return value, None
    return value, _to_int(fn(image.transpose(Image.Transpose.FLIP_LEFT_RIGHT), hash_size))


def hash_file(
    path: str | os.PathLike[str],
    method: str = "phash",
    hash_size: int = 8,
    decode: str = "draft",
    flip_invariant: bool = False,
) -> FileHash:
    """Hash one image file; never raises for a bad file, it returns the reason instead."""
    _check(method, hash_size, decode)
    try:
        with Image.open(path) as image:
            return hash_opened(image, method, hash_size, decode, flip_invariant)
    except Exception as exc:  # any decoder failure is a property of the file, not a bug here
        return FileHash(None, None, f"cannot decode {Path(path).name}: {decode_error(exc)}")


def hash_opened(
    image: Image.Image, method: str, hash_size: int, decode: str, flip_invariant: bool
) -> FileHash:
    """Hash an image that was just opened (nothing decoded yet); decoder errors propagate."""
    flat = prepare(image, decode, hash_size * DRAFT_FACTOR, luma=_luma(method, decode))
    value, mirrored = hash_image(flat, method, hash_size, flip_invariant)
    return FileHash(value, mirrored)


def decode_error(exc: BaseException) -> str:
    """First line of a decoder's complaint, for a one-line reason."""
    if isinstance(exc, UnidentifiedImageError):  # its text names a BytesIO object, not the file
        return "unknown or damaged image format"
    return first_line(exc)


def prepare(image: Image.Image, decode: str = "draft", min_side: int = 8 * DRAFT_FACTOR,
            luma: bool = False) -> Image.Image:
    """A just-opened image upright, flattened onto white, and for "draft" reduced to >= min_side
    (a colour JPEG decoded to its luma channel when `luma`).

    Pass it before anything decodes its pixels: draft decoding must be requested first.
    """
    is_jpeg = image.format == "JPEG"
    if decode == "draft" and is_jpeg:
        image.draft("L" if luma else None, (min_side, min_side))
    image.load()
    ImageOps.exif_transpose(image, in_place=True)
    flat = _flatten(image)
    if decode == "draft" and not is_jpeg:
        factor = _reduce_factor(flat.size, min_side)
        if factor > 1:
            flat = flat.reduce(factor)
    return flat


def _reduce_factor(size: tuple[int, int], min_side: int) -> int:
    """The power of two up to 8 that JPEG draft decoding would pick for this size."""
    factor = 1
    while factor < 8 and min(size) // (factor * 2) >= min_side:
        factor *= 2
    return factor


def _flatten(image: Image.Image) -> Image.Image:
    """RGB or L, with any transparency composited onto white."""
    if image.mode.startswith("I;16"):
        image = Image.fromarray((np.asarray(image, dtype=np.uint16) >> 8).astype(np.uint8))
    if image.mode in ("PA", "LA", "La", "RGBa") or "transparency" in image.info:
        image = image.convert("RGBA")
    if image.mode == "RGBA":
        white = Image.new("RGBA", image.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, image).convert("RGB")
    if image.mode not in ("RGB", "L"):
        return image.convert("RGB")
    return image


def _to_int(h: imagehash.ImageHash) -> int:
    bits = np.asarray(h.hash, dtype=bool).ravel()
    pad = -len(bits) % 8
    return int.from_bytes(np.packbits(bits).tobytes(), "big") >> pad


def iter_hashes(
    paths: Sequence[str | os.PathLike[str]],
    method: str = "phash",
    hash_size: int = 8,
    decode: str = "draft",
    flip_invariant: bool = False,
    workers: int | None = None,
) -> Iterator[FileHash]:
    """Hashes of paths, in order, as they complete (for progress bars); all cores by default."""
    _check(method, hash_size, decode)
    one = partial(
        hash_file, method=method, hash_size=hash_size, decode=decode, flip_invariant=flip_invariant
    )
    yield from pool_map(one, paths, workers, method)


def pool_map(fn: Callable[[A], R], items: Sequence[A], workers: int | None = None,
             method: str = "phash") -> Iterator[R]:
    """fn over items, results in order, on a process pool over all cores (inline when few)."""
    yield from executor.pool_map(fn, items, workers, preload=preload_modules(method))


# What imagehash imports on a method's first call: a pool's workers get it from the parent (or
# the fork server) instead of importing it each (hashing 1,000 new images: 0.46 s -> 0.40 s).
_LAZY_IMPORTS = {"phash": ["scipy.fftpack"], "whash": ["pywt"]}


def preload_modules(method: str) -> list[str]:
    """The modules a hashing worker needs before its first image (executor.pool_map's preload)."""
    return [__name__, *_LAZY_IMPORTS.get(method, [])]


def hash_files(
    paths: Sequence[str | os.PathLike[str]],
    method: str = "phash",
    hash_size: int = 8,
    decode: str = "draft",
    flip_invariant: bool = False,
    workers: int | None = None,
) -> list[FileHash]:
    """`hash_file` for every path, in order, using a process pool over all cores."""
    return list(iter_hashes(paths, method, hash_size, decode, flip_invariant, workers))
