"""Whether a dataset's captions read as booru tags, for the backends of sentence-trained models.

FLUX.1, SD3, Qwen-Image, ... were trained on sentences; a LoRA trained on `1girl, solo, ...`
still learns, but the plan says so (the ai-toolkit and kohya backends). The heuristic: the first
`sample` caption files of each subset split on commas into parts of under 3 words on average,
with at least 6 parts in all.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from curate import kohya


def tag_captions_from(folders: Iterable[tuple[Path, str]], sample: int = 20) -> bool:
    """The heuristic over (image folder, caption extension) pairs."""
    parts = []
    for folder, ext in folders:
        for caption in sorted(folder.glob("*" + ext))[:sample]:
            try:
                parts += [p.strip() for p in caption.read_text(encoding="utf-8").split(",")]
            except (OSError, UnicodeDecodeError):
                continue
    words = [len(re.findall(r"\w+", p)) for p in parts if p]
    return len(words) >= 6 and sum(words) / len(words) < 3


def tag_captions(data: kohya.DatasetConfig, sample: int = 20) -> bool:
    """The heuristic over a dataset curate.kohya read (dataset.toml or N_name folders)."""
    return tag_captions_from(((s.image_dir, s.read_extension(".txt")) for s in data.subsets), sample)


def tag_captions_in(data: dict[str, Any], source: Path, sample: int = 20) -> bool:
    """The heuristic over an sd-scripts dataset TOML's tables; relative image_dir paths are taken
    from `source` (the dataset.toml, or the folder of N_name folders)."""
    root = source.parent if source.suffix == ".toml" else source
    general = data.get("general", {})
    folders = []
    for table in data.get("datasets", []):
        for subset in table.get("subsets", []):
            if not isinstance(subset.get("image_dir"), str):
                continue
            ext = next((t["caption_extension"] for t in (subset, table, general) if "caption_extension" in t),
                       ".caption")  # sd-scripts' own default
            folders.append((root / subset["image_dir"], str(ext)))
    return tag_captions_from(folders, sample)
