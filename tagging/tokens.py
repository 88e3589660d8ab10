"""How many CLIP tokens a caption is, without downloading anything.

CLIP's tokenizer lower-cases the text, splits it into pieces with one regular expression
(`'s|'t|'re|'ve|'m|'ll|'d|[\\p{L}]+|[\\p{N}]|[^\\s\\p{L}\\p{N}]+`: words, single digits, runs of
punctuation), and byte-pair-encodes each piece into one or more tokens. So without the
vocabulary two bounds are still exact facts:

* lower bound: the number of pieces (each piece is at least one token);
* upper bound: the number of UTF-8 bytes of the pieces (BPE starts from bytes and only merges).

`TokenCounter.over(text, limit)` answers from the bounds when they agree; only when the limit
lies between them does it need the real tokenizer: transformers' `CLIPTokenizer`, used when
transformers is installed and the vocabulary is on disk (a folder, or a Hub id already in the
local Hugging Face cache). It is never downloaded. Without it, a caption is reported only when
its lower bound is over the limit, so the rule never fires on a caption that fits; the message
then says the count is an estimate. (`&amp;`-style HTML entities, which CLIP unescapes first,
are unescaped here too, so they do not inflate the bound.)
"""

from __future__ import annotations

import html
import importlib.util
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# CLIP's pattern with Python's classes: [^\W\d_] = letters, \d = digits, the rest punctuation
# (underscore included: it is neither a letter nor a number to CLIP).
PIECES = re.compile(r"'s|'t|'re|'ve|'m|'ll|'d|[^\W\d_]+|\d|(?:[^\s\w]|_)+", re.IGNORECASE)
TOKENIZER_FILES = ("vocab.json", "merges.txt")


def pieces(text: str) -> list[str]:
    """The pre-tokenizer pieces of `text`, after CLIP's own clean-up (unescape, whitespace, case)."""
    cleaned = " ".join(html.unescape(html.unescape(text)).split()).lower()
    return PIECES.findall(cleaned)


def bounds(text: str) -> tuple[int, int]:
    """(fewest, most) CLIP tokens `text` can be, start and end tokens not counted."""
    found = pieces(text)
    return len(found), sum(len(p.encode("utf-8")) for p in found)


@dataclass(frozen=True)
class Count:
    tokens: int
    exact: bool  # False: a lower bound from the piece count


def hub_cache() -> Path:
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"])
    home = os.environ.get("HF_HOME") or os.path.join(os.path.expanduser("~"), ".cache", "huggingface")
    return Path(home) / "hub"


def find_tokenizer(name: str) -> Path | None:
    """A local folder holding CLIP's vocab.json and merges.txt for `name` (a folder, or a Hub
    repo id looked up in the local cache only, its root or tokenizer/ subfolder)."""
    folders = [Path(name).expanduser()]
    if "/" in name and not folders[0].is_dir():
        snapshots = hub_cache() / f"models--{name.replace('/', '--')}" / "snapshots"
        if snapshots.is_dir():
            for snap in sorted(snapshots.iterdir()):
                folders += [snap, snap / "tokenizer"]
    else:
        folders.append(folders[0] / "tokenizer")
    return next((f for f in folders if all((f / n).is_file() for n in TOKENIZER_FILES)), None)


class TokenCounter:
    """Counts CLIP tokens exactly when it can, else bounds them (see the module doc)."""

    def __init__(self, tokenizer: str) -> None:
        self.name = tokenizer
        self._tokenizer: Any = None
        self._tried = False

    @property
    def used_exact(self) -> bool:
        """Whether the real tokenizer was loaded (it is only when a caption needed it)."""
        return self._tokenizer is not None

    def _load(self) -> Any:
        if not self._tried:
            self._tried = True
            folder = find_tokenizer(self.name)
            # transformers takes seconds to import: only when it is there and has a vocabulary
            if folder is not None and importlib.util.find_spec("transformers") is not None:
                from transformers import CLIPTokenizer

                try:
                    self._tokenizer = CLIPTokenizer.from_pretrained(str(folder), local_files_only=True)
                except Exception:  # a damaged vocabulary: the bounds still hold, so use them
                    self._tokenizer = None
        return self._tokenizer

    def over(self, text: str, limit: int) -> Count | None:
        """The count when `text` is surely more than `limit` tokens, else None."""
        low, high = bounds(text)
        if high <= limit:
            return None
        tokenizer = self._load()
        if tokenizer is None:
            return Count(low, False) if low > limit else None
        exact = len(tokenizer.tokenize(text))
        return Count(exact, True) if exact > limit else None
