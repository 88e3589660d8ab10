"""Options of `curate dedupe` (the `[dedupe]` table of curate.toml)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from curate.config import option
from curate.errors import CurateError
from curate.stages.dedupe.hashing import hash_bits

# Hamming distance (of 64 bits) within which two hashes count as one picture without a second
# look, chosen from bench/dedupe_accuracy.py (docs/benchmarks.md, "Dedupe accuracy"): a stereo
# pair is 4 phash bits apart, so with verification on only near-identical hashes skip it.
DEFAULT_THRESHOLD_64 = 2
# Without verification a hash is all there is; 10 of 64 is imagededup's default.
DEFAULT_THRESHOLD_64_UNVERIFIED = 10


@dataclass(frozen=True)
class DedupeConfig:
    """Options of `curate dedupe`: how near duplicates are found and which image of a group stays."""

    hash: Literal["phash", "dhash", "whash", "ahash", "colorhash"] = option(
        "phash", help="Perceptual hash (imagehash): phash is the most robust to resizing and "
        "recompression.")
    # beyond 64 hashing and search cost grows for no gain
    hash_size: int = option(8, ge=4, le=64, help="Side of the hash: 8 gives 64-bit hashes, 64 gives 4096.")
    threshold: int | None = option(None, ge=0, example=10, help=(
        "Largest Hamming distance accepted as a near duplicate without verification; unset: 2 of "
        "64 bits with verify, 10 without (scaled to the hash length), or what similarity says."))
    # the way czkawka and dupeGuru users say it
    similarity: float | None = option(None, gt=0, le=100, example=90, help=(
        "The threshold as a percentage: 90 = at most 10% of the bits differ. Ignored when "
        "threshold is set."))
    keep: Literal["largest", "first", "newest"] = option("largest", help=(
        "Which image of a group stays: largest (most pixels, then bytes, then PNG over JPEG), first "
        "(first path / first imported) or newest (newest file / last imported)."))
    flip_invariant: bool = option(False, help="Also match left-right mirrored copies.")
    decode: Literal["draft", "full"] = option("draft", help=(
        "\"draft\" decodes JPEGs at reduced size (fast); \"full\" decodes them whole, as imagehash "
        "alone would."))
    # see stages/dedupe/verify.py
    verify: bool = option(True, help=(
        "Confirm looser hash matches by feature matching, to catch crops and overlays that move the "
        "hash too far."))
    # each pair costs ~1.5 ms plus ~3.5 ms per image decoded, and unrelated photos fall within the
    # candidate distance at a rate of ~3e-4 per pair, so large sets need a bound
    verify_max_pairs: int = option(2_000, ge=0, help=(
        "At most this many candidate pairs are verified, closest first; what is left is reported."))
    workers: int = option(0, ge=0, le=512, help="Processes hashing images (0 = one per core).")

    def check(self) -> None:
        if self.hash == "whash" and self.hash_size & (self.hash_size - 1):
            raise CurateError(f"dedupe.hash_size = {self.hash_size}: whash needs a power of two "
                              "(4, 8, 16, 32 or 64)")
        self.effective_threshold()

    def bits(self) -> int:
        return hash_bits(self.hash, self.hash_size)

    def effective_threshold(self) -> int:
        bits = self.bits()
        if self.threshold is not None:
            if not 0 <= self.threshold <= bits:
                raise CurateError(f"dedupe.threshold = {self.threshold}: must be 0..{bits} for "
                                  f"{self.hash} at hash_size {self.hash_size}")
            return self.threshold
        if self.similarity is not None:
            if not 0 < self.similarity <= 100:
                raise CurateError(f"dedupe.similarity = {self.similarity}: must be a percentage "
                                  "in (0, 100], e.g. 90")
            return int(bits * (100 - self.similarity) / 100 + 1e-9)
        base = DEFAULT_THRESHOLD_64 if self.verify else DEFAULT_THRESHOLD_64_UNVERIFIED
        return round(base * bits / 64)
