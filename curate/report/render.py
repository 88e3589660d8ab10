"""`ReportData` as one static HTML page: plain HTML and CSS, no script, no network.

Charts are CSS bars and the crop boxes inline SVG (the thumbnail drawn in the original's pixel
coordinates, so the box needs no scaling arithmetic). Every string that came from the user
(file names, tags, captions, reasons) goes through `esc`, quotes included, because it may sit
in an attribute. Counts carry `id="count-NAME"` and `data-count`, for scripts and tests.
"""

from __future__ import annotations

import html
from collections.abc import Mapping

from curate.record import KEPT
from curate.report.collect import Cluster, ImageView, ReportData, TagView
from curate.report.training import BucketView, PlanView

COUNT_LABELS = (
    ("images", "images"), ("kept", "kept (will train)"), ("duplicates", "duplicates"),
    ("rejected", "rejected by filter"), ("skipped", "files skipped at import"),
    ("tagged", "kept images tagged"), ("captioned", "kept images captioned"),
    ("tags_removed", "tags removed by rules"), ("cropped", "kept images cropped"),
)
COLOURS = {"general": "#2f6fb0", "character": "#1f8a4c", "copyright": "#8a3fb0", "artist": "#c06a00",
           "meta": "#666", "rating": "#b03030", "trigger": "#a07800"}

STYLE = """
body{font:14px system-ui,sans-serif;margin:0;background:#f4f4f6;color:#222}
header{background:#263040;color:#fff;padding:1em 1.5em} header h1{margin:0;font-size:1.4em}
nav a{color:#cde;margin-right:1em} main{padding:0 1.5em 2em}
section{background:#fff;border:1px solid #ddd;border-radius:6px;margin:1em 0;padding:.8em 1em}
h2{font-size:1.15em;margin:.2em 0 .6em} .muted{color:#666}
.counts{display:flex;flex-wrap:wrap;gap:.6em} .count{border:1px solid #ccd;border-radius:6px;
padding:.4em .8em;min-width:7em} .count span{display:block;font-size:1.6em;font-weight:bold}
.grid,.cards{display:flex;flex-wrap:wrap;gap:.8em}
.card{width:210px;border:3px solid #ccc;border-radius:4px;padding:4px;word-break:break-word}
.card.kept{border-color:#2a7} .card.duplicate{border-color:#c33} .card.rejected{border-color:#d80}
.card img,.card svg{display:block;max-width:200px;max-height:200px;margin:auto;
background:repeating-conic-gradient(#ddd 0 25%,#fff 0 50%) 0 0/16px 16px}
.file{font-size:12px;color:#444} .caption{font-size:12px;margin:.3em 0}
.tag{display:inline-block;border-radius:3px;padding:0 4px;margin:1px;font-size:12px;color:#fff}
.tag.removed{text-decoration:line-through;opacity:.55}
.badge{font-weight:bold} .kept .badge{color:#2a7} .duplicate .badge{color:#c33}
.cluster{border-top:1px solid #eee;padding:.6em 0} .reason{font-size:12px;color:#933}
.bar{display:flex;align-items:center;gap:.5em;margin:2px 0} .bar .label{width:14em;text-align:right;
font-size:12px;overflow:hidden;text-overflow:ellipsis;white-space:nowrap}
.bar .fill{height:14px;background:#2f6fb0;border-radius:2px} .bar .n{font-size:12px}
table{border-collapse:collapse} td,th{border:1px solid #ddd;padding:3px 8px;text-align:right}
td:first-child,th:first-child,#skipped-files td,#skipped-files th{text-align:left}
.legend .tag{margin-right:.4em}
"""


def esc(text: object) -> str:
    return html.escape(str(text), quote=True)


def _thumb(key: str, thumbs: Mapping[str, str], alt: str) -> str:
    src = thumbs.get(key)
    return f'<img src="{esc(src)}" alt="{esc(alt)}" loading="lazy">' if src else "<p>(cannot show)</p>"


def _tag(tag: TagView) -> str:
    colour = COLOURS.get(tag.category, "#555")
    if tag.rule:
        title = f"removed by rule {tag.rule}: {tag.detail}" if tag.detail else f"removed by rule {tag.rule}"
        return (f'<s class="tag removed" style="background:{colour}" data-rule="{esc(tag.rule)}" '
                f'title="{esc(title)}">{esc(tag.name)}</s>')
    return f'<span class="tag" style="background:{colour}" title="{esc(tag.category)}">{esc(tag.name)}</span>'


def _card(image: ImageView, thumbs: Mapping[str, str], badge: str = "", detail: str = "") -> str:
    tags = "".join(_tag(t) for t in image.tags)
    extra = f'<div class="reason">{esc(detail)}</div>' if detail else ""
    return (f'<div class="card {esc(image.status)}" data-sha="{esc(image.sha256)}">'
            f'{_thumb(image.key, thumbs, image.shown)}'
            f'{f"<div class=badge>{esc(badge)}</div>" if badge else ""}'
            f'<div class="file" title="{esc(image.shown)}">{esc(image.label)}</div>'
            f'<div class="muted">{image.width}x{image.height}</div>'
            f'<div class="caption" title="{esc(image.caption or "")}">{tags}</div>{extra}</div>')


def _summary(data: ReportData) -> str:
    cells = "".join(f'<div class="count"><span id="count-{name}" data-count="{data.counts.get(name, 0)}">'
                    f"{data.counts.get(name, 0)}</span>{esc(label)}</div>" for name, label in COUNT_LABELS)
    return f'<section id="summary"><h2>Summary</h2><div class="counts">{cells}</div></section>'


def _grid(data: ReportData, thumbs: Mapping[str, str]) -> str:
    kept = [i for i in data.images if i.status == KEPT]
    legend = "".join(f'<span class="tag" style="background:{c}">{esc(k)}</span>' for k, c in COLOURS.items())
    cards = "".join(_card(i, thumbs) for i in kept) or "<p>No kept images.</p>"
    return (f'<section id="images" data-count="{len(kept)}"><h2>Kept images ({len(kept)})</h2>'
            f'<p class="legend muted">Tag colours: {legend} <s class="tag removed" style="background:#555">'
            f'removed by a rule</s> (hover for the rule)</p><div class="grid">{cards}</div></section>')


def _cluster(cluster: Cluster, by_sha: Mapping[str, ImageView], thumbs: Mapping[str, str]) -> str:
    kept = by_sha.get(cluster.kept)
    cards = [_card(kept, thumbs, "KEPT", cluster.why)] if kept else []
    cards += [_card(by_sha[sha], thumbs, "DUPLICATE", reason) for sha, reason in cluster.duplicates
              if sha in by_sha]
    return (f'<div class="cluster" data-size="{1 + len(cluster.duplicates)}">'
            f'<b>{1 + len(cluster.duplicates)} images</b><div class="cards">{"".join(cards)}</div></div>')


def _clusters(data: ReportData, thumbs: Mapping[str, str]) -> str:
    by_sha = data.by_sha
    body = "".join(_cluster(c, by_sha, thumbs) for c in data.clusters) or \
        "<p>No duplicate clusters (run <code>curate dedupe</code> to look for some).</p>"
    return (f'<section id="duplicates" data-count="{len(data.clusters)}">'
            f"<h2>Duplicate clusters ({len(data.clusters)})</h2>{body}</section>")


def _excluded(data: ReportData, thumbs: Mapping[str, str]) -> str:
    rejected = [i for i in data.images if i.status == "rejected"]
    cards = "".join(_card(i, thumbs, "REJECTED", "; ".join(i.reasons)) for i in rejected)
    rows = "".join(f"<tr><td>{esc(f)}</td><td>{esc(r)}</td></tr>" for f, r in data.skipped)
    skipped = (f'<h3>Files skipped at import ({len(data.skipped)})</h3><table id="skipped-files">'
               f"<tr><th>file</th><th>reason</th></tr>{rows}</table>") if data.skipped else ""
    body = f'<div class="cards">{cards}</div>' if cards else "<p>No image was rejected.</p>"
    return (f'<section id="rejected" data-count="{len(rejected)}"><h2>Rejected images ({len(rejected)})</h2>'
            f"{body}{skipped}</section>")


def _crop_figure(image: ImageView, thumbs: Mapping[str, str]) -> str:
    crop = image.crop
    assert crop is not None
    w, h = crop.original_size
    x, y, bw, bh = crop.box
    src = thumbs.get(crop.original_key, "")
    picture = f'<image href="{esc(src)}" x="0" y="0" width="{w}" height="{h}"/>' if src else ""
    stroke = max(2, round(max(w, h) / 100))
    svg = (f'<svg viewBox="0 0 {w} {h}" width="200" height="{round(200 * h / w) if w else 200}" '
           f'role="img" aria-label="{esc(image.shown)}">{picture}<rect class="crop-box" x="{x}" y="{y}" '
           f'width="{bw}" height="{bh}" fill="none" stroke="#ff2d55" stroke-width="{stroke}"/></svg>')
    return (f'<div class="card kept">{svg}'
            f'<div class="file" title="{esc(image.shown)}">{esc(image.label)}</div>'
            f'<div class="muted">box {x},{y} {bw}x{bh} of {w}x{h}; subject: {esc(crop.subject)}</div></div>')


def _crops(data: ReportData, thumbs: Mapping[str, str]) -> str:
    cropped = [i for i in data.images if i.crop is not None and i.status == KEPT]
    body = "".join(_crop_figure(i, thumbs) for i in cropped)
    body = f'<div class="cards">{body}</div>' if body else "<p>No crops (see <code>curate crop</code>).</p>"
    return f'<section id="crops" data-count="{len(cropped)}"><h2>Crops ({len(cropped)})</h2>{body}</section>'


def _bars(rows: list[tuple[str, int, str]]) -> str:
    top = max((n for _l, n, _c in rows), default=1) or 1
    return "".join(f'<div class="bar"><span class="label" title="{esc(label)}">{esc(label)}</span>'
                   f'<span class="fill" style="width:{max(2, round(400 * n / top))}px;background:{colour}">'
                   f'</span><span class="n">{n}</span></div>' for label, n, colour in rows)


def _buckets(view: BucketView) -> str:
    rows = [(f"{w} x {h}", n, "#2f6fb0") for (w, h), n in view.rows]
    warnings = "".join(f"<li>{esc(w)}</li>" for w in view.warnings)
    warnings += "".join(f"<li>{esc(f)}: {esc(r)}</li>" for f, r in view.unbucketable)
    return (f'<section id="buckets" data-count="{len(view.rows)}"><h2>Buckets ({len(view.rows)})</h2>'
            f'<p class="muted">{esc(view.note)}</p>{_bars(rows)}'
            f'{f"<ul>{warnings}</ul>" if warnings else ""}</section>')


def _tag_chart(data: ReportData) -> str:
    rows = [(name, n, COLOURS.get(cat, "#555")) for name, cat, n in data.tag_frequency]
    body = _bars(rows) if rows else "<p>No captions yet (see <code>curate tag</code>).</p>"
    return (f'<section id="tags" data-count="{len(rows)}"><h2>Tag frequency (top {len(rows)}, kept images)'
            f"</h2>{body}</section>")


def _plan(plan: PlanView) -> str:
    note = f'<p class="muted" id="plan-note">{esc(plan.note)}</p>' if plan.note else ""
    if not plan.rows:
        return f'<section id="plan" data-steps="0"><h2>Training plan</h2>{note}</section>'
    rows = "".join(f'<tr><td>{esc(r["folder"])}</td><td>{r["images"]}</td><td>{r["repeats"]}</td>'
                   f'<td>{r["images_x_repeats"]}</td></tr>' for r in plan.rows)
    warnings = "".join(f"<li>{esc(f)}: {esc(r)}</li>" for f, r in plan.warnings)
    return (f'<section id="plan" data-steps="{plan.total_steps}"><h2>Training plan</h2>{note}'
            f"<table><tr><th>folder</th><th>images</th><th>repeats</th><th>images x repeats</th></tr>"
            f"{rows}</table><p>{plan.epochs} epochs, batch size {plan.batch_size}: "
            f'<b id="steps-per-epoch">{plan.steps_per_epoch}</b> steps per epoch, '
            f'<b id="total-steps">{plan.total_steps}</b> steps in all.</p>'
            f'{f"<ul>{warnings}</ul>" if warnings else ""}</section>')


def render(data: ReportData, thumbs: Mapping[str, str], generated: str = "") -> str:
    """The whole page. `thumbs` maps a thumbnail key (content sha) to its relative URL."""
    nav = "".join(f'<a href="#{s}">{t}</a>' for s, t in (
        ("summary", "summary"), ("images", "images"), ("duplicates", "duplicates"),
        ("rejected", "rejected"), ("crops", "crops"), ("buckets", "buckets"), ("tags", "tags"),
        ("plan", "plan")))
    when = f" &middot; {esc(generated)}" if generated else ""
    return (
        f'<!doctype html><html lang="en"><head><meta charset="utf-8"><title>curate report: '
        f'{esc(data.workspace)}</title><meta name="viewport" content="width=device-width">'
        f"<style>{STYLE}</style></head><body><header><h1>curate report</h1>"
        f'<div class="muted" style="color:#bcd">{esc(data.workspace)}{when}</div><nav>{nav}</nav></header>'
        f"<main>{_summary(data)}{_grid(data, thumbs)}{_clusters(data, thumbs)}{_excluded(data, thumbs)}"
        f"{_crops(data, thumbs)}{_buckets(data.buckets)}{_tag_chart(data)}{_plan(data.plan)}</main>"
        "</body></html>\n")
