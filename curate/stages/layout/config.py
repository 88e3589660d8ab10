"""Options of `curate layout` (the `[layout]` table of curate.toml)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

from curate.errors import CurateError

NAME = re.compile(r"^[^/\\\x00]+$")


@dataclass(frozen=True)
class LayoutConfig:
    # The concept folder name after "N_": by default the trigger word recorded by
    # `curate captions trigger` (then class token), else "concept".
    name: str | None = None
    class_tokens: str | None = None
    # Fixed repeats for every concept; or computed from target_steps (see plan.py).
    repeats: int | None = None
    target_steps: int | None = None
    epochs: int = 10
    batch_size: int = 2
    # A concepts.toml: [concept.NAME] tags = [...] (an image goes to the first concept whose
    # tags it has) or folders = [...] (source path contains the folder name).
    concepts: str | None = None
    # Regularisation images (a folder), written to reg/1_CLASS (sd-scripts repeats them).
    reg: str | None = None
    link: Literal["copy", "hardlink", "symlink"] = "copy"
    caption_ext: str = ".txt"
    # dataset.toml settings (sd-scripts names).
    resolution: int = 512
    enable_bucket: bool = True
    min_bucket_reso: int = 256
    max_bucket_reso: int = 1024
    bucket_reso_steps: int = 64
    bucket_no_upscale: bool = False
    shuffle_caption: bool = True
    flip_aug: bool = False

    def check(self) -> None:
        for field in ("repeats", "target_steps"):
            value = getattr(self, field)
            if value is not None and value < 1:
                raise CurateError(f"layout.{field} = {value}: must be at least 1")
        if self.epochs < 1 or self.batch_size < 1:
            raise CurateError("layout.epochs and layout.batch_size must be at least 1")
        if self.name is not None and not NAME.match(self.name):
            raise CurateError(f"layout.name = {self.name!r}: must be a plain folder name")
        if not self.caption_ext.startswith("."):
            raise CurateError(f"layout.caption_ext = {self.caption_ext!r}: must look like .txt")
        if self.bucket_reso_steps % 64 and self.resolution <= 768:
            # sd-scripts' SD1/SD2 scripts refuse steps that are not a multiple of 64
            raise CurateError(f"layout.bucket_reso_steps = {self.bucket_reso_steps}: SD 1.x/2.x training "
                              "needs a multiple of 64 (32 is for SDXL at resolution 1024)")
