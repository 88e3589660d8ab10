"""`--report dedupe.html`: every duplicate group side by side, in one file that opens from disk.

Thumbnails are embedded as data URIs, so the page needs no server and no files beside it and
can be mailed or attached to an issue.
"""

from __future__ import annotations

import base64
import html
import io
from collections.abc import Sequence
from pathlib import Path

from PIL import Image, ImageOps

from curate.atomic import atomic_write_text
from curate.paths import printable
from curate.stages.dedupe.group import Group
from curate.stages.dedupe.scan import Item

THUMB = 192
MAX_GROUPS = 2000  # past this a page with embedded images gets too heavy for a browser

STYLE = """
body{font:14px system-ui,sans-serif;margin:1.5em;background:#f6f6f6;color:#222}
h1{font-size:1.3em} .group{background:#fff;border:1px solid #ddd;border-radius:6px;
margin:1em 0;padding:.8em} .cards{display:flex;flex-wrap:wrap;gap:.8em}
.card{width:210px;border:3px solid #ccc;border-radius:4px;padding:4px;word-break:break-all}
.card.kept{border-color:#2a7} .card img{display:block;max-width:200px;max-height:200px;
margin:auto;background:repeating-conic-gradient(#ddd 0 25%,#fff 0 50%) 0 0/16px 16px}
.badge{font-weight:bold} .kept .badge{color:#2a7} .dup .badge{color:#c33} small{color:#555}
"""


def thumbnail(path: str | Path) -> str:
    """A data URI of a small JPEG (PNG when the image has transparency)."""
    try:
        with Image.open(path) as image:
            image.draft("RGB", (THUMB * 2, THUMB * 2))
            small = ImageOps.exif_transpose(image)
            small.thumbnail((THUMB, THUMB))
            buf = io.BytesIO()
            if small.mode in ("RGBA", "LA", "PA", "P"):
                small.convert("RGBA").save(buf, "PNG")
                kind = "png"
            else:
                small.convert("RGB").save(buf, "JPEG", quality=80)
                kind = "jpeg"
    except Exception:  # the page still lists an image it cannot show
        return ""
    return f"data:image/{kind};base64,{base64.b64encode(buf.getvalue()).decode()}"


def _card(item: Item, label: str, detail: str, kept: bool) -> str:
    src = thumbnail(item.path)
    img = f'<img src="{src}" alt="">' if src else "<p>(cannot show)</p>"
    return (
        f'<div class="card {"kept" if kept else "dup"}">{img}'
        f'<div class="badge">{html.escape(label)}</div>'
        f"<div>{html.escape(item.shown)}</div>"
        f"<small>{item.width}x{item.height}, {item.file_bytes:,} bytes, {html.escape(item.format)}"
        f"<br>{html.escape(detail)}</small></div>"
    )


def render(items: Sequence[Item], groups: Sequence[Group], title: str, summary: str) -> str:
    parts = [f"<!doctype html><meta charset=utf-8><title>{html.escape(title)}</title>",
             f"<style>{STYLE}</style><h1>{html.escape(title)}</h1><p>{html.escape(summary)}</p>"]
    for number, group in enumerate(groups[:MAX_GROUPS], 1):
        cards = [_card(items[group.keeper], "KEPT", group.why, True)]
        cards += [_card(items[i], "KEPT", "listed in the keep list", True) for i in group.also_kept]
        cards += [_card(items[m.index], "DUPLICATE", f"{m.relation}, distance {m.distance}", False)
                  for m in group.duplicates]
        parts.append(f'<div class="group"><b>group {number}</b> ({len(group.members)} images)'
                     f'<div class="cards">{"".join(cards)}</div></div>')
    if len(groups) > MAX_GROUPS:
        parts.append(f"<p>{len(groups) - MAX_GROUPS} more groups not shown: use --json for all.</p>")
    if not groups:
        parts.append("<p>No duplicates found.</p>")
    return "\n".join(parts) + "\n"


def write_report(path: Path, items: Sequence[Item], groups: Sequence[Group], title: str,
                 summary: str) -> None:
    # names are bytes on Linux: undecodable ones (and control characters) shown escaped
    atomic_write_text(path, printable(render(items, groups, title, summary)))
