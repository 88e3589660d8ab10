"""Options of `curate import` (the `[import]` table of curate.toml)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from curate.config import option


@dataclass(frozen=True)
class ImportConfig:
    """Options of `curate import`: what is read from the sources, and what is refused."""

    animated: Literal["first", "skip"] = option(
        "first", help="Animated GIF/WebP: \"first\" keeps the first frame (recorded as a repair), "
        "\"skip\" refuses the file.")
    max_pixels: int = option(178_956_970, ge=1, help="Images with more pixels than this are refused, "
                             "not decoded (Pillow's own decompression-bomb limit).")
    max_file_mb: int = option(256, ge=1, le=65_536, help="Files larger than this (MiB) are refused.")
    # real sidecars are a few KiB: a 10 MB one is a mistake or an attack
    max_sidecar_kb: int = option(1024, ge=1, le=1_048_576, help=(
        "Tag/caption/metadata sidecars larger than this (KiB) are not read; the image still comes "
        "in, with a warning naming the sidecar."))
    # Pillow and hashlib release the GIL while they work, so threads scale without pickling
    # image bytes between processes
    workers: int = option(0, ge=0, le=512, help="Threads reading, hashing and decoding (0 = one per core).")
    strict: bool = option(False, help="Exit with status 1 when any file was skipped (for scripts and CI).")
