"""Which image of a duplicate group stays, and the user's `keep.txt` that always wins."""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from pathlib import Path

from curate.errors import CurateError
from curate.paths import LIST_BYTES, read_user_text
from curate.stages.dedupe.scan import Item

# "PNG over JPEG": a lossless copy is the better training image at equal size.
FORMAT_RANK = {"PNG": 2, "JPEG": 0}
KEEP_FILE = "keep.txt"
_SHA256 = re.compile(r"[0-9a-fA-F]{64}")


def read_keep_list(path: Path) -> list[str]:
    """One image per line (path relative to the folder, absolute path or sha256); # comments."""
    try:
        text = read_user_text(path, LIST_BYTES)
    except (OSError, UnicodeDecodeError) as exc:
        raise CurateError(f"{path}: cannot read the keep list ({exc}); fix it or leave it out") from exc
    return [s for line in text.splitlines() if (s := line.split("#", 1)[0].strip())]


def match_keep_list(
    items: Sequence[Item], entries: Iterable[str], root: Path | None
) -> tuple[set[int], list[str]]:
    """Indices of the items the entries name, and the entries that named nothing."""
    names: dict[str, int] = {}
    for index, item in enumerate(items):
        for name in (item.shown, str(item.path), item.sha256, *item.aliases):
            names.setdefault(_norm(name), index)
    chosen, unmatched = set(), []
    for entry in entries:
        candidates = [_norm(entry)]
        if root is not None and not Path(entry).is_absolute():
            candidates.append(_norm(str(root / entry)))
        hit = next((names[c] for c in candidates if c in names), None)
        if hit is None:
            unmatched.append(entry)
        else:
            chosen.add(hit)
    return chosen, unmatched


def _norm(name: str) -> str:
    name = name.strip().replace("\\", "/").removeprefix("./")
    return name.lower() if _SHA256.fullmatch(name) else name


def rank(item: Item, policy: str) -> tuple[float, ...]:
    """Higher ranks win; ties go to the earlier item."""
    if policy == "largest":
        return (item.pixels, item.file_bytes, FORMAT_RANK.get(item.format, 1), -item.order)
    if policy == "newest":
        return (item.mtime, -item.order)
    if policy == "first":
        return (-item.order,)
    raise CurateError(f"unknown keep policy {policy!r}: use largest, first or newest")


def choose(
    members: Sequence[int], items: Sequence[Item], policy: str, chosen: set[int]
) -> tuple[int, str]:
    """The member to keep and why."""
    listed = [m for m in members if m in chosen]
    if listed:
        best = min(listed, key=lambda m: items[m].order)
        return best, "listed in the keep list"
    best = max(members, key=lambda m: rank(items[m], policy))
    item = items[best]
    why = {
        "largest": f"largest ({item.width}x{item.height}, {item.file_bytes:,} bytes, {item.format})",
        "first": "first" + (" imported" if item.sha256 in item.aliases else " by path"),
        "newest": "newest" + (" imported" if item.sha256 in item.aliases else " file"),
    }[policy]
    return best, why
