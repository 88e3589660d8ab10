"""Options of `curate layout` (the `[layout]` table of curate.toml)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from curate.buckets.assign import BucketConfig, derived_bucket_reso
from curate.config import check_ranges, option
from curate.errors import CurateError
from curate.paths import check_name


@dataclass(frozen=True)
class LayoutConfig:
    """Options of `curate layout`: the Kohya dataset's folders, repeats and dataset.toml settings."""

    name: str | None = option(None, example="sks", help=(
        "The concept folder name after \"N_\"; unset: the trigger word recorded by `curate captions "
        "trigger` (then its class token), else \"concept\"."))
    class_tokens: str | None = option(None, example="sks woman", help=(
        "class_tokens for dataset.toml; unset: the trigger word and class token."))
    # see plan.py
    repeats: int | None = option(None, ge=1, le=10_000, example=10, help=(
        "Fixed repeats for every concept; unset: computed from target_steps, else 1."))
    target_steps: int | None = option(None, ge=1, example=1500, help=(
        "Compute repeats (balanced per concept) so that training takes about this many steps: "
        "images x repeats x epochs / batch size."))
    epochs: int = option(10, ge=1, le=10_000, help="Epochs, for target_steps.")
    batch_size: int = option(2, ge=1, le=1024, help="Batch size, for target_steps.")
    concepts: str | None = option(None, example="concepts.toml", help=(
        "A concepts.toml: [concept.NAME] tags = [...] (an image goes to the first concept whose tags "
        "it has) or folders = [...] (its source path contains the folder name)."))
    reg: str | None = option(None, example="reg_images", help=(
        "A folder of regularisation images, written to reg/1_CLASS (sd-scripts repeats them)."))
    link: Literal["copy", "hardlink", "symlink"] = option("copy", help="How images get into the dataset.")
    caption_ext: str = option(".txt", help="Caption file extension (always stated in dataset.toml).")
    resolution: int = option(512, ge=64, le=8192, help="dataset.toml: the training resolution.")
    enable_bucket: bool = option(True, help="dataset.toml: aspect-ratio bucketing.")
    min_bucket_reso: int | None = option(None, ge=8, le=8192, example=256, help=(
        "dataset.toml; unset: half the resolution (at most 256), rounded to the bucket step "
        "(sd-scripts' 256 at 512 px)."))
    max_bucket_reso: int | None = option(None, ge=8, le=16_384, example=1024, help=(
        "dataset.toml; unset: twice the resolution, rounded to the bucket step (sd-scripts' 1024 "
        "at 512 px)."))
    bucket_reso_steps: int = option(64, ge=8, le=1024, help="dataset.toml: the bucket size step.")
    bucket_no_upscale: bool = option(False, help="dataset.toml: never upscale an image to fit a bucket.")
    shuffle_caption: bool = option(True, help="dataset.toml: shuffle the tags after keep_tokens each step.")
    flip_aug: bool = option(False, help="dataset.toml: random horizontal flips.")

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
