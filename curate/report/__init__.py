"""`curate report WS`: a static HTML review of a workspace, one page plus a thumbnails folder.

collect.py reads the workspace into plain data (`ReportData`), training.py adds the bucket
histogram and the layout plan by calling the code that really buckets and lays out, and
render.py turns the data into HTML. This module writes the files: `OUT/thumbs/<sha>.jpg`
(`.png` for images with transparency), keyed by the content hash of the file shown, so a
second run makes only the thumbnails of new images; then `OUT/index.html`, atomically.
Thumbnails are files rather than data URIs (as in the dedupe report) so that a workspace of
thousands of images still gives a page a browser opens quickly.
"""

from __future__ import annotations

import base64
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from curate.atomic import atomic_write_bytes, atomic_write_text
from curate.errors import CurateError
from curate.report.collect import ReportData, collect
from curate.report.render import render
from curate.stages.dedupe.report import thumbnail

REPORT_DIR = "report"
THUMBS = "thumbs"
KINDS = {"jpeg": ".jpg", "png": ".png"}

__all__ = ["ReportData", "ReportResult", "collect", "render", "write_report"]


@dataclass
class ReportResult:
    index: Path
    data: ReportData
    thumbs_made: int = 0
    thumbs_reused: int = 0
    unreadable: list[str] = field(default_factory=list)  # images no thumbnail could be made of

    def as_dict(self) -> dict[str, Any]:
        return {"index": str(self.index), **self.data.as_dict(), "thumbs_made": self.thumbs_made,
                "thumbs_reused": self.thumbs_reused, "unreadable": list(self.unreadable)}


def _usable(path: Path) -> bool:
    # an empty file is what a power cut can leave of an unsynced write: make it again
    return path.is_file() and path.stat().st_size > 0


def _thumbnails(data: ReportData, folder: Path, result: ReportResult) -> dict[str, str]:
    """Key -> relative URL of its thumbnail; existing files are reused (keys are content hashes)."""
    wanted: dict[str, Path] = {}
    for image in data.images:
        wanted.setdefault(image.key, image.path)
        if image.crop is not None:
            wanted.setdefault(image.crop.original_key, image.crop.original)
    urls: dict[str, str] = {}
    for key, path in wanted.items():
        existing = next((p for ext in KINDS.values() if _usable(p := folder / f"{key}{ext}")), None)
        if existing is not None:
            result.thumbs_reused += 1
            urls[key] = f"{THUMBS}/{existing.name}"
            continue
        uri = thumbnail(path)  # the dedupe report's helper: a data URI, "" when unreadable
        if not uri:
            result.unreadable.append(str(path))
            continue
        header, _, payload = uri.partition(";base64,")
        name = f"{key}{KINDS[header.removeprefix('data:image/')]}"
        atomic_write_bytes(folder / name, base64.b64decode(payload), durable=False)
        result.thumbs_made += 1
        urls[key] = f"{THUMBS}/{name}"
    return urls


def write_report(workspace: Path, out: Path | None = None) -> ReportResult:
    """Write OUT/index.html and OUT/thumbs/ for a workspace (OUT defaults to WS/report)."""
    data = collect(Path(workspace))
    out = Path(out).absolute() if out is not None else Path(data.workspace) / REPORT_DIR
    if out.exists() and not out.is_dir():
        raise CurateError(f"{out} exists and is not a folder: choose another --out")
    try:
        (out / THUMBS).mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise CurateError(f"cannot create {out / THUMBS}: {exc.strerror}; choose another --out") from exc
    result = ReportResult(out / "index.html", data)
    urls = _thumbnails(data, out / THUMBS, result)
    generated = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    atomic_write_text(result.index, render(data, urls, generated))
    return result
