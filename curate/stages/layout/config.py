"""Options of `curate layout` (the `[layout]` table of curate.toml)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from buckets.assign import BucketConfig, derived_bucket_reso
from curate.config import check_ranges, option
from curate.errors import CurateError
from curate.paths import check_name


@dataclass(frozen=True)
class LayoutConfig:
    # The concept folder name after "N_": by default the trigger word recorded by
    # `curate captions trigger` (then class token), else "concept".
    name: str | None = None
    class_tokens: str | None = None
    # Fixed repeats for every concept; or computed from target_steps (see plan.py).
    repeats: int | None = option(None, ge=1, le=10_000)
    target_steps: int | None = option(None, ge=1)
    epochs: int = option(10, ge=1, le=10_000)
    batch_size: int = option(2, ge=1, le=1024)
    # A concepts.toml: [concept.NAME] tags = [...] (an image goes to the first concept whose
    # tags it has) or folders = [...] (source path contains the folder name).
    concepts: str | None = None
    # Regularisation images (a folder), written to reg/1_CLASS (sd-scripts repeats them).
    reg: str | None = None
    link: Literal["copy", "hardlink", "symlink"] = "copy"
    caption_ext: str = ".txt"
    # dataset.toml settings (sd-scripts names).
    resolution: int = option(512, ge=64, le=8192)
    enable_bucket: bool = True
    # unset: from the resolution, half of it (at most 256) and twice it, rounded to the step:
    # sd-scripts' 256 and 1024 at 512 px, 64 and 256 at 128 px
    min_bucket_reso: int | None = option(None, ge=8, le=8192)
    max_bucket_reso: int | None = option(None, ge=8, le=16_384)
    bucket_reso_steps: int = option(64, ge=8, le=1024)
    bucket_no_upscale: bool = False
    shuffle_caption: bool = True
    flip_aug: bool = False

    def check(self) -> None:
        check_ranges(self, "layout")
        if self.name is not None:
            check_name(self.name, "layout.name")
        if not self.caption_ext.startswith("."):
            raise CurateError(f"layout.caption_ext = {self.caption_ext!r}: must look like .txt")
        if self.bucket_reso_steps % 64 and self.resolution <= 768:
            # sd-scripts' SD1/SD2 scripts refuse steps that are not a multiple of 64
            raise CurateError(f"layout.bucket_reso_steps = {self.bucket_reso_steps}: SD 1.x/2.x training "
                              "needs a multiple of 64 (32 is for SDXL at resolution 1024)")
        low, high = self.bucket_bounds
        # sd-scripts' own checks of the bounds against the resolution, before anything is written
        BucketConfig(self.resolution, low, high, self.bucket_reso_steps, enable_bucket=self.enable_bucket)

    @property
    def bucket_bounds(self) -> tuple[int, int]:
        """(min_bucket_reso, max_bucket_reso): as set, else derived from the resolution."""
        low, high = derived_bucket_reso(self.resolution, self.bucket_reso_steps)
        return (self.min_bucket_reso or low, self.max_bucket_reso or high)
