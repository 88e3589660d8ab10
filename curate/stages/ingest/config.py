"""Options of `curate import` (the `[import]` table of curate.toml)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from curate.config import option


@dataclass(frozen=True)
class ImportConfig:
    # "first": keep an animation's first frame (recorded as a repair); "skip": refuse it.
    animated: Literal["first", "skip"] = "first"
    # Pillow's own decompression-bomb limit; above it a file is refused, not decoded.
    max_pixels: int = option(178_956_970, ge=1)
    max_file_mb: int = option(256, ge=1, le=65_536)
    # A tag/caption/metadata sidecar larger than this is not read (the image still comes in,
    # with a warning naming it): real ones are a few KiB, a 10 MB one is a mistake or an attack.
    max_sidecar_kb: int = option(1024, ge=1, le=1_048_576)
    # Threads reading, hashing and decoding (0 = one per core). Pillow and hashlib release
    # the GIL while they work, so threads scale without pickling image bytes between processes.
    workers: int = option(0, ge=0, le=512)
    # Exit non-zero when any file was skipped (for scripts and CI).
    strict: bool = False
