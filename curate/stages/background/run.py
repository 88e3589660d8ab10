"""`curate bg`: one entry point for a plain folder (report, or with `out` the cut-outs written
there as `<stem>.png` with their captions) or a workspace.

In a workspace each cut-out is stored like a crop (`images/<sha[:2]>/<sha>.png`, content-
addressed, written before the manifest names it) as the image's 'main' row of the `crops`
table, so `Workspace.records()` hands it to later stages; its box and subject are those of the
crop it was cut from, if any. The `backgrounds` table remembers which file each cut-out came
from, so a re-run cuts from that file again (not from its own output); a `curate crop` run
replaces the crops and with them the cut-outs (run `curate bg` again after it).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image

from curate.atomic import atomic_write_bytes
from curate.errors import CurateError
from curate.folder import resolve_target, walk_images
from curate.manifest import now
from curate.stages.background.config import BgConfig, parse_fill
from curate.stages.background.masks import Cut, Segmenter
from curate.stages.background.render import coverage, encode
from curate.stages.guard import FAILED, Failed, attempt
from curate.stages.quality.copy import check_out, copy_image
from curate.workspace import Workspace

STAGE = "bg"
CUT = "cut"  # verdict; does not leave the image out
ProgressFn = Callable[[int, int], None]



@dataclass
class Item:
    shown: str
    path: Path  # the file cut
    sha256: str | None = None
    data: bytes | None = None
    size: tuple[int, int] = (0, 0)
    subject: float = 0.0  # share of the image kept
    error: str | None = None  # why it could not be cut
    written: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {"file": self.shown, "sha256": self.sha256, "size": list(self.size),
                "subject_share": round(self.subject, 4), "written": self.written}


@dataclass
class BgResult:
    target: str
    mode: str
    config: BgConfig
    device: str = ""
    items: list[Item] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)
    ignored: list[tuple[str, str]] = field(default_factory=list)
    out: str | None = None

    @property
    def done(self) -> list[Item]:
        return [it for it in self.items if it.data is not None]

    def counts(self) -> dict[str, int]:
        return {"images": len(self.items), "cut": len(self.done), "skipped": len(self.skipped),
                "empty masks": sum(it.subject == 0.0 for it in self.done)}

    def as_dict(self) -> dict[str, Any]:
        return {"target": self.target, "mode": self.mode, "out": self.out, "device": self.device,
                "config": asdict(self.config), "counts": self.counts(),
                "images": [it.as_dict() for it in self.done],
                **{k: [{"file": f, "reason": r} for f, r in getattr(self, k)]
                   for k in ("skipped", "ignored")}}


def remove_backgrounds(target: Path, config: BgConfig, *, out: Path | None = None,
                       on_progress: ProgressFn | None = None) -> BgResult:
    """Cut the background out of every image of a folder or workspace (see module doc)."""
    config.check()
    target, mode = resolve_target(target)
    result = BgResult(str(target), mode, config)
    if result.mode == "workspace":
        if out is not None or config.mask_only:
            raise CurateError("--out and --mask-only are for plain folders: in a workspace the cut-outs "
                              "(mask in their alpha) are stored beside the images for later stages")
        with Workspace.open(target) as ws, ws.lock():
            sources = _ws_items(ws, result)
            _run(result, Segmenter(config), on_progress)
            _store(ws, result, sources)
        return result
    out = check_out(target, out) if out is not None else None
    found = walk_images(target)
    result.skipped, result.ignored = found.skipped, found.ignored
    result.items = [Item(rel, target / rel) for rel in found.relpaths]
    _run(result, Segmenter(config), on_progress)
    if out is not None:
        result.out = str(out)
        for it in result.done:
            it.written = _write_folder(target, out, it, config.mask_only)
    return result


def _run(result: BgResult, segmenter: Segmenter, on_progress: ProgressFn | None) -> None:
    result.device = segmenter.device
    fill = parse_fill(result.config.fill)
    for done, it in enumerate(result.items, 1):
        cut = attempt(lambda path: _cut_file(segmenter, path), it.path, "cannot read or cut it",
                      "replace the file, try the other --method, or leave it out")
        if isinstance(cut, Failed):
            it.error = cut.reason
            result.skipped.append((it.shown, cut.reason))
        else:
            it.data, shown = encode(cut, fill, result.config.mask_only)
            it.size, it.subject = shown.size, coverage(cut.mask)
        if on_progress:
            on_progress(done, len(result.items))


def _cut_file(segmenter: Segmenter, path: Path) -> Cut:
    with Image.open(path) as image:
        image.load()
        return segmenter.cut(image)


def _write_folder(root: Path, out: Path, it: Item, mask_only: bool) -> list[str]:
    """`<stem>.png` at the image's relative path: the mask alone, or the cut-out with captions."""
    assert it.data is not None
    name = Path(it.shown).with_suffix(".png")
    if mask_only:
        atomic_write_bytes(out / name, it.data)
        return [name.as_posix()]
    return copy_image(root, it.shown, out, it.data, name.name)


def _ws_items(ws: Workspace, result: BgResult) -> dict[str, tuple[str, dict[str, Any] | None]]:
    """Items for the active images, each cut from the file before any earlier cut-out; returns
    image sha -> (that file, relative; the crops row it came from, or None)."""
    mains = {r["image_sha256"]: dict(r) for r in ws.manifest.rows("SELECT * FROM crops WHERE kind = 'main'")}
    cuts = {r["image_sha256"]: r for r in ws.manifest.rows("SELECT * FROM backgrounds")}
    sources: dict[str, tuple[str, dict[str, Any] | None]] = {}
    for record in ws.active_records():
        main, cut = mains.get(record.sha256), cuts.get(record.sha256)
        if main is not None and cut is not None and main["sha256"] == cut["sha256"]:
            row = json.loads(cut["source_row"]) if cut["source_row"] else None
            sources[record.sha256] = (cut["source_path"], row)
        else:
            sources[record.sha256] = (record.path.relative_to(ws.root).as_posix(), main)
        shown = record.origins[0].source_path if record.origins else str(record.path)
        result.items.append(Item(shown, ws.root / sources[record.sha256][0], record.sha256))
    return sources


def _store(ws: Workspace, result: BgResult, sources: dict[str, tuple[str, dict[str, Any] | None]]) -> None:
    """Cut-out files first (content-addressed, atomic), then every row in one transaction."""
    run_id = ws.manifest.start_run(STAGE, asdict(result.config))
    crops, cuts, decisions = [], [], []
    for it in result.done:
        assert it.data is not None and it.sha256 is not None
        sha = hashlib.sha256(it.data).hexdigest()
        path = ws.stored_file(sha, ".png")
        if not path.exists():
            atomic_write_bytes(path, it.data)
        source_path, row = sources[it.sha256]
        box = row["box"] if row else json.dumps([0, 0, *it.size])
        crops.append((it.sha256, "main", sha, path.relative_to(ws.root).as_posix(), *it.size, "RGBA", "PNG",
                      box, row["subject"] if row else "background", run_id))
        cuts.append((it.sha256, sha, source_path, json.dumps(row) if row else None, result.config.method,
                     run_id))
        reason = f"{result.device}; subject {it.subject:.0%} of {it.size[0]}x{it.size[1]}"
        decisions.append((it.sha256, it.shown, STAGE, CUT, reason, run_id, now()))
    decisions += [(it.sha256, it.shown, STAGE, FAILED, it.error, run_id, now())
                  for it in result.items if it.error]
    with ws.manifest.transaction() as db:
        db.executemany("DELETE FROM crops WHERE image_sha256 = ? AND kind = 'main'", [(c[0],) for c in crops])
        db.executemany("INSERT INTO crops (image_sha256, kind, sha256, stored_path, width, height, mode, "
                       "format, box, subject, run_id) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", crops)
        db.executemany("INSERT OR REPLACE INTO backgrounds (image_sha256, sha256, source_path, source_row, "
                       "method, run_id) VALUES (?, ?, ?, ?, ?, ?)", cuts)
        db.executemany("INSERT INTO decisions (image_sha256, subject, stage, verdict, reason, run_id, "
                       "created_at) VALUES (?, ?, ?, ?, ?, ?, ?)", decisions)
        db.execute("UPDATE runs SET summary = ?, finished_at = ? WHERE id = ?",
                   (json.dumps(result.counts(), sort_keys=True), now(), run_id))
