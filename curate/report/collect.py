"""Everything the report shows, gathered from a workspace into plain data (`ReportData`).

Rendering never touches the manifest: collect once, then render (or print counts, or compare
with the manifest in a test). Counts follow the manifest's *current* decisions (the latest
finished run of a replacing stage such as dedupe), so they agree with `curate status`.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from curate.record import DUPLICATE, KEPT, REJECTED, SKIPPED, Record
from curate.report.training import BucketView, PlanView, bucket_view, plan_view
from curate.tagging.captions import caption_of, parse_caption
from curate.tagging.tags import tag_key
from curate.workspace import Workspace

TAG_REMOVED = "tag-removed"
TRIGGER = "trigger"  # pseudo-category of the trigger word and class token in captions
TOP_TAGS = 30


@dataclass(frozen=True)
class TagView:
    name: str
    category: str
    rule: str = ""  # set for a tag a `curate tags filter` rule removed
    detail: str = ""


@dataclass(frozen=True)
class CropView:
    original_key: str  # thumbnail key (content sha) of the original image
    original: Path
    original_size: tuple[int, int]
    box: tuple[int, int, int, int]  # x, y, w, h in the original's pixels
    subject: str


@dataclass(frozen=True)
class ImageView:
    key: str  # content sha of the file shown (the crop when there is one): names the thumbnail
    sha256: str  # the image's manifest key
    shown: str  # the path the user knows
    label: str  # the same, shortened to start at the imported source folder
    path: Path
    width: int
    height: int
    status: str  # kept, duplicate or rejected
    caption: str | None
    tags: tuple[TagView, ...]  # caption tags in order, then removed ones
    reasons: tuple[str, ...]  # why it is excluded (dedupe / quality reasons)
    crop: CropView | None = None


@dataclass(frozen=True)
class Cluster:
    kept: str  # sha256 of the image that stays
    why: str
    duplicates: tuple[tuple[str, str], ...]  # (sha256, reason)


@dataclass
class ReportData:
    workspace: str
    counts: dict[str, int]
    images: list[ImageView]  # every image, in import order
    clusters: list[Cluster]
    skipped: list[tuple[str, str]]  # files that never became images: (file, reason)
    tag_frequency: list[tuple[str, str, int]]  # (tag, category, kept images), most frequent first
    buckets: BucketView
    plan: PlanView
    settings: dict[str, Any] = field(default_factory=dict)

    @property
    def by_sha(self) -> dict[str, ImageView]:
        return {i.sha256: i for i in self.images}

    def as_dict(self) -> dict[str, Any]:
        return {"workspace": self.workspace, "counts": dict(self.counts),
                "clusters": len(self.clusters), "plan": self.plan.as_dict(),
                "buckets": [{"resolution": list(r), "images": n} for r, n in self.buckets.rows]}


def collect(root: Path) -> ReportData:
    """Read a workspace into a `ReportData` (raises CurateError when root is not a workspace)."""
    with Workspace.open(root) as ws:
        records = ws.records()
        settings = ws.manifest.settings()
        skipped = [(r["subject"], r["reason"]) for r in ws.manifest.decisions(verdict=SKIPPED)
                   if r["image_sha256"] is None]
        counts = _counts(ws, records)
        root = ws.root
    trigger_words = {tag_key(str(w)) for w in (settings.get("trigger"), settings.get("class_token")) if w}
    images = [_image(r, trigger_words) for r in records]
    kept = [i for i in images if i.status == KEPT]
    active = [r for r in records if not r.excluded]
    return ReportData(
        workspace=str(root), counts=counts, images=images, clusters=_clusters(records),
        skipped=skipped, tag_frequency=_frequency(kept), buckets=bucket_view(root, active),
        plan=plan_view(root), settings=settings)


def _counts(ws: Workspace, records: list[Record]) -> dict[str, int]:
    m = ws.manifest

    def images_with(verdict: str) -> int:
        return len({r["image_sha256"] for r in m.decisions(verdict=verdict) if r["image_sha256"]})

    active = [r for r in records if not r.excluded]
    removed = m.count_verdict(TAG_REMOVED)
    return {
        "images": m.count("images"),
        "kept": len(active),
        "duplicates": images_with(DUPLICATE),
        "rejected": images_with(REJECTED),
        "skipped": sum(1 for r in m.decisions(verdict=SKIPPED) if r["image_sha256"] is None),
        "tagged": sum(1 for r in active if r.tags),
        "captioned": sum(1 for r in active if caption_of(r)),
        "tags_removed": int(removed),
        "cropped": sum(1 for r in active if "crop" in r.extra),
    }


def _shown(record: Record) -> str:
    return record.origins[0].source_path if record.origins else str(record.path)


def _label(record: Record) -> str:
    if not record.origins:
        return record.path.name
    origin = record.origins[0]
    parent = str(Path(origin.source_root).parent)
    return origin.source_path.removeprefix(parent).lstrip("/\\") or origin.source_path


def _status(record: Record) -> str:
    verdicts = {d.verdict for d in record.decisions}
    return DUPLICATE if DUPLICATE in verdicts else REJECTED if REJECTED in verdicts else KEPT


def _image(record: Record, trigger_words: set[str]) -> ImageView:
    crop = record.extra.get("crop")
    crop_view = None
    if crop is not None:
        box = tuple(int(v) for v in crop["box"])
        w, h = crop["original_size"]
        # the box is in the pixels of the file cropped: the cut-out when bg ran, else the original
        crop_view = CropView(str(crop.get("parent", record.sha256)), Path(crop["original"]), (int(w), int(h)),
                             (box[0], box[1], box[2], box[3]), str(crop["subject"]))
    reasons = tuple(d.reason for d in record.decisions if d.verdict in (DUPLICATE, REJECTED))
    return ImageView(
        key=str(record.extra.get("leaf", record.sha256)), sha256=record.sha256,
        shown=_shown(record), label=_label(record), path=record.path,
        width=record.width, height=record.height,
        status=_status(record), caption=caption_of(record), tags=_tags(record, trigger_words),
        reasons=reasons, crop=crop_view)


def _tags(record: Record, trigger_words: set[str]) -> tuple[TagView, ...]:
    """The caption's tags coloured by category, then the tags filter rules removed from it."""
    categories = {tag_key(t.name): t.category for t in record.tags}

    def category(name: str) -> str:
        key = tag_key(name)
        return TRIGGER if key in trigger_words else categories.get(key, "general")

    caption = caption_of(record)
    names = parse_caption(caption) if caption else [t.name for t in record.tags]
    out = [TagView(n, category(n)) for n in names]
    present = {tag_key(n) for n in names}
    prefix = _shown(record) + ": "
    for d in record.decisions:
        if d.verdict != TAG_REMOVED or not d.subject.startswith(prefix):
            continue
        name = d.subject[len(prefix):]
        if tag_key(name) in present:  # a later edit put it back
            continue
        present.add(tag_key(name))
        rule, _, detail = d.reason.partition(": ")
        out.append(TagView(name, category(name), rule, detail))
    return tuple(out)


def _clusters(records: list[Record]) -> list[Cluster]:
    """Dedupe groups: each duplicate's reason names its kept image by a 16-digit sha prefix."""
    kept: dict[str, tuple[str, str]] = {}
    for r in records:
        for d in r.decisions:
            if d.stage == "dedupe" and d.verdict == KEPT:
                kept[r.sha256[:16]] = (r.sha256, d.reason)
    members: dict[str, list[tuple[str, str]]] = {}
    for r in records:
        for d in r.decisions:
            if d.stage == "dedupe" and d.verdict == DUPLICATE and d.reason.startswith("duplicate-of "):
                prefix = d.reason.split()[1]
                if prefix in kept:
                    members.setdefault(prefix, []).append((r.sha256, d.reason))
    return [Cluster(kept[p][0], kept[p][1], tuple(dups)) for p, dups in members.items()]


def _frequency(kept: list[ImageView]) -> list[tuple[str, str, int]]:
    """Tags of the captions that will train (removed ones excluded), most frequent first."""
    counter: Counter[str] = Counter()
    shown: dict[str, tuple[str, str]] = {}
    for image in kept:
        for t in image.tags:
            if not t.rule:
                counter[tag_key(t.name)] += 1
                shown.setdefault(tag_key(t.name), (t.name, t.category))
    ranked = sorted(counter.items(), key=lambda kv: (-kv[1], kv[0]))[:TOP_TAGS]
    return [(shown[k][0], shown[k][1], n) for k, n in ranked]
