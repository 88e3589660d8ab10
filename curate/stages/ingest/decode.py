"""Decoding and normalising one image file's bytes.

Every image is fully decoded once (so truncated files are caught here, not during training),
EXIF orientation is applied, and modes that training tools mishandle are converted: CMYK and
non-sRGB profiles to sRGB, 16-bit to 8-bit, palette and LA to RGB(A). Alpha is kept for later
stages to decide. When nothing had to change, the original JPEG/PNG/WebP bytes are stored as
they are; otherwise the result is stored as lossless PNG.
"""

from __future__ import annotations

import hashlib
import io
from dataclasses import dataclass, field

from PIL import Image, ImageCms, ImageOps, UnidentifiedImageError

KEEP_BYTES_FORMATS = {"JPEG": ".jpg", "PNG": ".png", "WEBP": ".webp"}
ORIENTATION_TAG = 0x0112


class Rejected(Exception):
    """The file cannot become a dataset image; the message is the one-line reason."""


@dataclass
class Normalised:
    sha256: str
    data: bytes
    ext: str
    width: int
    height: int
    mode: str
    format: str
    source_format: str
    changes: list[str] = field(default_factory=list)


def normalise(data: bytes, *, max_pixels: int, animated: str) -> Normalised:
    if not data:
        raise Rejected("empty file (0 bytes): re-download it or delete it")
    sha = hashlib.sha256(data).hexdigest()
    im = _open(data)
    source_format = im.format or "unknown"
    if im.width * im.height > max_pixels:
        raise Rejected(
            f"{im.width}x{im.height} is {im.width * im.height / 1e6:.0f} MP, over the "
            f"{max_pixels / 1e6:.0f} MP limit (decompression-bomb guard): raise "
            "import.max_pixels if you trust this file"
        )
    changes: list[str] = []
    frames = getattr(im, "n_frames", 1)
    if frames > 1:
        if animated == "skip":
            raise Rejected(f"animated image ({frames} frames) skipped: set import.animated = "
                           '"first" to keep its first frame')
        changes.append(f"animated ({frames} frames): kept the first frame")
    try:
        im.load()
    except Exception as exc:
        raise Rejected(f"truncated or corrupt image ({exc}): re-download it or delete it") from exc
    im = _orient(im, changes)
    im = _convert_mode(im, changes)
    im = _to_srgb(im, changes)
    if not changes and source_format in KEEP_BYTES_FORMATS:
        stored, ext, fmt = data, KEEP_BYTES_FORMATS[source_format], source_format
    else:
        buf = io.BytesIO()
        im.save(buf, "PNG")
        stored, ext, fmt = buf.getvalue(), ".png", "PNG"
    return Normalised(sha, stored, ext, im.width, im.height, im.mode, fmt, source_format, changes)


def _open(data: bytes) -> Image.Image:
    try:
        return Image.open(io.BytesIO(data))
    except UnidentifiedImageError as exc:
        if _looks_like_text(data):
            raise Rejected("a text file (an HTML error page from a failed download?), not an "
                           "image: re-download it or delete it") from exc
        raise Rejected("not an image Pillow can read (unknown or damaged format): "
                       "re-download it or delete it") from exc
    except Exception as exc:  # header parsers raise many kinds on damaged files
        raise Rejected(f"damaged image header ({exc}): re-download it or delete it") from exc


def _looks_like_text(data: bytes) -> bool:
    head = data[:1024]
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return all(c.isprintable() or c in "\r\n\t" for c in text)


def _orient(im: Image.Image, changes: list[str]) -> Image.Image:
    try:
        orientation = im.getexif().get(ORIENTATION_TAG, 1)
    except Exception:  # a broken EXIF block must not cost the image
        return im
    if orientation in range(2, 9):
        changes.append(f"EXIF orientation {orientation} applied")
        return ImageOps.exif_transpose(im)
    return im


def _convert_mode(im: Image.Image, changes: list[str]) -> Image.Image:
    mode = im.mode
    if mode in ("RGB", "RGBA", "L"):
        return im
    if mode in ("I;16", "I;16L", "I;16B", "I;16N", "I", "F"):
        changes.append(f"{mode} greyscale scaled to 8-bit")
        return _to_8bit(im)
    if mode == "P":
        target = "RGBA" if "transparency" in im.info else "RGB"
    elif mode in ("PA", "LA", "La", "RGBa"):
        target = "RGBA"
    elif mode == "1":
        target = "L"
    else:  # CMYK, YCbCr, LAB, HSV
        target = "RGB"
    if mode == "CMYK" and im.info.get("icc_profile"):
        converted = _profile_convert(im, changes, "RGB")
        if converted is not None:
            return converted
    changes.append(f"{mode} converted to {target}")
    out = im.convert(target)
    if mode in ("CMYK", "YCbCr", "LAB", "HSV"):
        out.info.pop("icc_profile", None)  # a CMYK/LAB profile does not describe RGB pixels
    return out


def _to_8bit(im: Image.Image) -> Image.Image:
    import numpy as np

    arr = np.asarray(im).astype(np.float64)
    top = 65535.0 if arr.max(initial=0) > 255 else 255.0
    if im.mode == "F":
        top = max(float(arr.max(initial=0)), 1e-12)
    out = np.clip(np.rint(arr * (255.0 / top)), 0, 255).astype(np.uint8)
    return Image.fromarray(out, "L")


def _to_srgb(im: Image.Image, changes: list[str]) -> Image.Image:
    icc = im.info.get("icc_profile")
    if not icc or im.mode not in ("RGB", "RGBA"):
        return im
    try:
        description = ImageCms.getProfileDescription(ImageCms.ImageCmsProfile(io.BytesIO(icc)))
    except Exception:
        return im  # unreadable profile: the pixels are taken as sRGB, as browsers do
    if "srgb" in description.lower():
        return im
    return _profile_convert(im, changes, im.mode) or im


def _profile_convert(im: Image.Image, changes: list[str], out_mode: str) -> Image.Image | None:
    try:
        src = ImageCms.ImageCmsProfile(io.BytesIO(im.info["icc_profile"]))
        name = ImageCms.getProfileDescription(src).strip() or "embedded"
        converted = ImageCms.profileToProfile(
            im, src, ImageCms.createProfile("sRGB"), outputMode=out_mode
        )
    except Exception:
        return None
    if converted is None:
        return None
    converted.info.pop("icc_profile", None)
    changes.append(f"{im.mode} with '{name}' profile converted to sRGB {out_mode}")
    return converted
