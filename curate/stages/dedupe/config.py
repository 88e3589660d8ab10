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
    # Perceptual hash (imagehash): phash is the most robust to resizing and recompression.
    hash: Literal["phash", "dhash", "whash", "ahash", "colorhash"] = "phash"
    # 4..64: a side of 64 is 4096 bits; beyond it hashing and search cost grows for no gain
    hash_size: int = option(8, ge=4, le=64)
    # Largest Hamming distance accepted without verification; None = the default for the hash
    # length (2 of 64 bits with verify, 10 without), or what `similarity` says.
    threshold: int | None = option(None, ge=0)
    # The same as a percentage, the way czkawka and dupeGuru users say it: 90 = at most 10% of
    # the bits differ. Ignored when threshold is set.
    similarity: float | None = option(None, gt=0, le=100)
    # Which image of a group stays: largest (most pixels, then bytes, then PNG over JPEG),
    # first (first path / first imported) or newest (newest file / last imported).
    keep: Literal["largest", "first", "newest"] = "largest"
    # Also match left-right mirrored copies.
    flip_invariant: bool = False
    # "draft" decodes JPEGs at reduced size (fast); "full" as imagehash alone would.
    decode: Literal["draft", "full"] = "draft"
    # Confirm looser hash matches by feature matching, to catch crops and overlays that move
    # the hash too far (see stages/dedupe/verify.py).
    verify: bool = True
    # At most this many candidate pairs are verified, closest first: each costs ~1.5 ms plus
    # ~3.5 ms per image decoded, and unrelated photos fall within the candidate distance at a
    # rate of ~3e-4 per pair, so large sets need a bound. What is left is reported.
    verify_max_pairs: int = option(2_000, ge=0)
    # Processes hashing images (0 = one per core).
    workers: int = option(0, ge=0, le=512)

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
