"""Options of `curate tag` (the `[tag]` table of curate.toml)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from curate.config import check_ranges, option
from curate.errors import CurateError

DEFAULT_MODEL = "SmilingWolf/wd-swinv2-tagger-v3"


@dataclass(frozen=True)
class TagConfig:
    """Options of `curate tag`: the WD14 tagger, its thresholds and how tags become captions."""

    model: str = option(DEFAULT_MODEL, help=(
        "A folder with model.onnx + selected_tags.csv, or a Hugging Face repo id (downloaded once)."))
    threshold: float = option(0.35, ge=0, le=1, help=(
        "General tags above this probability are kept (sd-scripts' default is also 0.35)."))
    # imgutils/waifuc use 0.85; sd-scripts applies 0.35 to characters too
    character_threshold: float = option(0.85, ge=0, le=1, help=(
        "Character tags need more: a weak character guess in a caption teaches the wrong person."))
    mcut: bool = option(False, help=(
        "Pick the threshold per image from the widest gap in its probabilities (MCut)."))
    rating: Literal["drop", "keep", "first"] = option("drop", help=(
        "Rating tags (general, sensitive, ...): dropped as sd-scripts does, kept last, or first."))
    character_first: bool = option(False, help="Character tags before general ones.")
    max_tags: int | None = option(None, ge=1, example=40, help=(
        "At most this many general tags per image, most confident first; unset: no limit."))
    undesired: tuple[str, ...] = option((), help="Tags never written.")
    replace: tuple[str, ...] = option((), help="Tag replacements, \"old=new\" (e.g. brown_hair=blonde_hair).")
    existing: Literal["skip", "append", "overwrite"] = option("skip", help=(
        "An image that already has a caption: keep it (skip), add new tags (append), or replace it "
        "(overwrite)."))
    # sd-scripts defaults to .caption, so dataset.toml always names it explicitly
    caption_ext: str = option(".txt", help="Plain folders: the caption file beside each image.")
    escape: bool = option(False, help=(
        "Write \\( \\) for prompt use; training captions are read literally, so off by default."))
    batch_size: int = option(8, ge=1, le=1024, help="Images per model run.")
    providers: tuple[str, ...] = option((), help=(
        "onnxruntime providers in order of preference, e.g. [\"CUDAExecutionProvider\"]; empty: CUDA "
        "when it works, else the CPU."))

    def replacements(self) -> tuple[tuple[str, str], ...]:
        pairs = []
        for item in self.replace:
            old, sep, new = item.partition("=")
            if not sep or not old.strip():
                raise CurateError(f"tag.replace {item!r}: expected old=new, e.g. 'brown_hair=blonde_hair'")
            pairs.append((old.strip(), new.strip()))
        return tuple(pairs)

    def check(self) -> None:
        check_ranges(self, "tag")
        if not self.caption_ext.startswith(".") or "/" in self.caption_ext:
            raise CurateError(f"tag.caption_ext = {self.caption_ext!r}: must look like .txt")
