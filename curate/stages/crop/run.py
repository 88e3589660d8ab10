"""`curate crop`: the one entry point, for a plain folder or a workspace.

In a workspace every active image gets a crop of its chain's file below the crop (the cut-out
when `curate bg` ran, else the original; manifest/derived.py), stored through `Workspace.run`
as the 'crop' (and 'closeup-N') of that chain; the crop is then the leaf later stages (layout)
use. Each run crops again and replaces the previous run's crops and decisions in one
transaction. A plain
folder gets a report, and with `out` the crops written there at the same relative paths with
their caption sidecars; the folder itself is never written.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from curate.errors import CurateError
from curate.executor import LOCAL, Executor
from curate.folder import resolve_target, walk_images
from curate.record import Record
from curate.stage_run import StageRun, shown
from curate.stages.crop.config import CropConfig
from curate.stages.crop.render import Outcome, crop_file
from curate.stages.crop.user_boxes import CROPS_FILE, Box, listed, match, read_crops
from curate.stages.guard import FAILED, Failed, per_image_map
from curate.stages.quality.copy import check_out, copy_image
from curate.workspace import Workspace

STAGE = "crop"
CROPPED, SMALL = "cropped", "small"  # verdicts; neither leaves the image out
ProgressFn = Callable[[int, int], None]


@dataclass
class Item:
    shown: str
    path: Path  # the original
    names: tuple[str, ...]  # what a crops.csv line may call it
    sha256: str | None = None
    outcome: Outcome | None = None
    written: list[str] = field(default_factory=list)

    def reason(self, max_upscale: float) -> str:
        assert self.outcome is not None and self.outcome.subject is not None
        main = self.outcome.pieces[0].window
        x, y, w, h = main.box
        text = (f"{main.out[0]}x{main.out[1]} from {w}x{h} at ({x},{y}) of "
                f"{self.outcome.size[0]}x{self.outcome.size[1]}, subject from {self.outcome.subject.source}")
        if main.small:
            text += (f"; too small for {main.target[0]}x{main.target[1]}: it would need "
                     f"{main.target[0] / w:.2f}x enlarging (max_upscale {max_upscale:g})")
        return text


@dataclass
class CropResult:
    target: str
    mode: str
    dry_run: bool
    config: CropConfig
    items: list[Item] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)
    ignored: list[tuple[str, str]] = field(default_factory=list)
    warnings: list[tuple[str, str]] = field(default_factory=list)
    out: str | None = None
    resumed: int = 0  # images a stopped run of the same options had cropped (not in items)

    @property
    def done(self) -> list[Item]:
        return [it for it in self.items if it.outcome is not None and it.outcome.error is None]

    def counts(self) -> dict[str, int]:
        done = [it.outcome for it in self.done if it.outcome]
        sources = [o.subject.source for o in done if o.subject]
        resumed = {"resumed": self.resumed} if self.resumed else {}
        return {"images": len(self.items), **resumed, "cropped": len(done),
                "small": sum(o.pieces[0].window.small for o in done),
                "closeups": sum(len(o.pieces) - 1 for o in done), "skipped": len(self.skipped),
                **{f"subject {s}": sources.count(s) for s in ("user", "alpha", "face", "saliency", "centre")}}

    def as_dict(self) -> dict[str, Any]:
        return {"target": self.target, "mode": self.mode, "dry_run": self.dry_run, "out": self.out,
                "config": {**asdict(self.config), "sources": list(self.config.sources)},
                "counts": self.counts(), "crops": [_item_dict(it) for it in self.done],
                **{k: [{"file": f, "reason": r} for f, r in getattr(self, k)]
                   for k in ("skipped", "ignored", "warnings")}}


def _item_dict(it: Item) -> dict[str, Any]:
    o = it.outcome
    assert o is not None and o.subject is not None
    return {"file": it.shown, "sha256": it.sha256, "size": list(o.size), "subject": o.subject.source,
            "subject_box": [round(v) for v in o.subject.box], "notes": o.notes, "written": it.written,
            "pieces": [{"kind": p.kind, "box": list(p.window.box), "out": list(p.window.out),
                        "scale": round(p.window.scale, 4), "small": p.window.small} for p in o.pieces]}


def crop_images(target: Path, config: CropConfig, *, out: Path | None = None, crops_file: Path | None = None,
                dry_run: bool = False, on_progress: ProgressFn | None = None,
                executor: Executor = LOCAL) -> CropResult:
    """Crop every image of a folder or workspace to its subject (see module doc); each image is
    cropped on `executor` (this machine's cores, or a Ray cluster)."""
    config.check()
    target, mode = resolve_target(target)
    result = CropResult(str(target), mode, dry_run, config)
    crops_file = crops_file or (target / CROPS_FILE if (target / CROPS_FILE).is_file() else None)
    boxes = read_crops(crops_file) if crops_file else {}
    if result.mode == "workspace":
        if out is not None:
            raise CurateError("--out is for plain folders: in a workspace crops are stored beside the "
                              "images and used by later stages (then `curate layout`)")
        with (Workspace.open(target) as ws, ws.lock(),
              ws.run(STAGE, _params(config), derives="crop", dry_run=dry_run, stream=True) as run):
            records = {r.sha256: r for r in run.records()}  # each the cut-out when bg ran
            items = [_ws_item(r) for r in records.values()]
            # those a stopped run of these options cropped are left out (their crops.csv lines
            # still count as used)
            result.items = [it for it in items if it.sha256 not in run.resumed]
            result.resumed = len(items) - len(result.items)

            def store(it: Item) -> None:
                _store(run, result, records[str(it.sha256)], it)
            _run(result, boxes, crops_file, on_progress, executor, render=not dry_run,
                 store=None if dry_run else store, listed_too=items)
            run.summary = result.counts()
        return result
    out = check_out(target, out) if out is not None else None
    found = walk_images(target)
    result.skipped, result.ignored = found.skipped, found.ignored
    result.items = [Item(rel, target / rel, (rel, Path(rel).name, str(target / rel)))
                    for rel in found.relpaths]
    # with --out the crops are encoded even on a dry run: their names depend on the format
    _run(result, boxes, crops_file, on_progress, executor, render=out is not None)
    if out is not None:
        result.out = str(out)
        for it in result.done:
            it.written = _folder_names(it) if dry_run else _write_folder(target, out, it)
    return result


def _params(config: CropConfig) -> dict[str, Any]:
    return {**asdict(config), "sources": list(config.sources)}


def _ws_item(record: Record) -> Item:
    # the stored copies too (whole, from the workspace root, by file name), as the report names them
    names = [record.sha256, *_stored_names(record.path)]
    for link in record.extra.get("chain", ()):
        names += _stored_names(Path(link["path"]))
    for origin in record.origins:
        rel = origin.source_path.removeprefix(origin.source_root).lstrip("/\\")
        names += [origin.source_path, rel, Path(origin.source_path.split("!/")[-1]).name]
    return Item(shown(record), record.path, tuple(names), record.sha256)


def _stored_names(path: Path) -> list[str]:
    names = [str(path), path.name]
    if path.parent.parent.name == "images":  # WS/images/ab/SHA.ext
        names.append(path.relative_to(path.parent.parent.parent).as_posix())
    return names


def _run(result: CropResult, boxes: dict[str, Box], crops_file: Path | None,
         on_progress: ProgressFn | None, executor: Executor, render: bool,
         store: Callable[[Item], None] | None = None, listed_too: Sequence[Item] = ()) -> None:
    """Each item cropped on `executor`; `store` gets each as it comes back (the workspace
    commits it). crops.csv lines naming none of the items nor `listed_too` are warned about."""
    used, jobs = set(), []
    for it in listed_too:
        used.update(listed(boxes, it.names))
    for it in result.items:
        hit = match(boxes, it.names)
        used.update(listed(boxes, it.names))  # two lines for one image: neither is unknown
        jobs.append((str(it.path), hit[1] if hit else None, result.config, render))
    outcomes = per_image_map(crop_file, jobs, result.config.workers or None, "cannot crop it",
                             "give its box in crops.csv, replace the file, or leave it out", executor)
    for done, (it, outcome) in enumerate(zip(result.items, outcomes, strict=True), 1):
        it.outcome = Outcome(error=outcome.reason) if isinstance(outcome, Failed) else outcome
        if outcome.error:
            result.skipped.append((it.shown, outcome.error))
        if store is not None:
            store(it)
        if on_progress:  # after it was stored: done means done
            on_progress(done, len(jobs))
    result.warnings += [(str(crops_file), f"line for {name!r} names no image here")
                        for name in boxes if name not in used]


def _store(run: StageRun, result: CropResult, record: Record, it: Item) -> None:
    """An image's pieces as files of its chain, made from the file cropped (the cut-out when bg
    ran, else the original), then its decision, committed as the run goes; the run's end
    replaces the previous run's crops (Workspace.run with stream)."""
    outcome = it.outcome
    if outcome is not None and outcome.error:
        run.decide(record, FAILED, outcome.error)
    elif outcome is not None:  # done (CropResult.done)
        subject = outcome.subject.source if outcome.subject else ""
        for piece in outcome.pieces:
            assert piece.data is not None
            kind = "crop" if piece.kind == "main" else piece.kind
            run.derive(record, kind, piece.data, box=list(piece.window.box), subject=subject,
                       settings={**asdict(result.config), "sources": list(result.config.sources)})
        main = outcome.pieces[0].window
        reason = "; ".join([it.reason(result.config.max_upscale), *outcome.notes])
        run.decide(record, SMALL if main.small else CROPPED, reason)
    run.checkpoint()


def _folder_names(it: Item) -> list[str]:
    """The files a folder run writes for an item (main crop, then close-ups)."""
    assert it.outcome is not None
    rel = Path(it.shown)
    names = []
    for piece in it.outcome.pieces:
        ext = piece.ext if piece.data is not None else rel.suffix  # not encoded: no --out
        stem = rel.stem if piece.kind == "main" else f"{rel.stem}_{piece.kind.replace('closeup-', 'face')}"
        names.append(rel.with_name(stem + ext).as_posix())
    return names


def _write_folder(root: Path, out: Path, it: Item) -> list[str]:
    assert it.outcome is not None
    written = []
    for piece, name in zip(it.outcome.pieces, _folder_names(it), strict=True):
        written += copy_image(root, it.shown, out, piece.data, Path(name).name)
    return written
