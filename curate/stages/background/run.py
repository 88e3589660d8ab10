"""`curate bg`: one entry point for a plain folder (report, or with `out` the cut-outs written
there as `<stem>.png` with their captions) or a workspace.

In a workspace each cut-out is the 'cutout' of its image's derived chain (manifest/derived.py):
made from the original, stored as an RGBA PNG (the mask in its alpha) through `Workspace.run`,
and the leaf later stages see until `curate crop` crops it. A re-run cuts from the originals
again; a cut-out that changed drops the crop made from the old one (crop runs again on it).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image

from curate.atomic import atomic_write_bytes
from curate.errors import CurateError
from curate.executor import LOCAL, Executor
from curate.folder import resolve_target, walk_images
from curate.record import Record
from curate.stage_run import StageRun, shown
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
    resumed: int = 0  # images a stopped run of the same options had cut already (not in items)

    @property
    def done(self) -> list[Item]:
        return [it for it in self.items if it.data is not None]

    def counts(self) -> dict[str, int]:
        counts = {"images": len(self.items), "cut": len(self.done), "skipped": len(self.skipped),
                  "no subject": sum(1 for it in self.items if (it.error or "").startswith("no subject"))}
        return {**counts, "resumed": self.resumed} if self.resumed else counts

    def as_dict(self) -> dict[str, Any]:
        return {"target": self.target, "mode": self.mode, "out": self.out, "device": self.device,
                "config": asdict(self.config), "counts": self.counts(),
                "images": [it.as_dict() for it in self.done],
                **{k: [{"file": f, "reason": r} for f, r in getattr(self, k)]
                   for k in ("skipped", "ignored")}}


def remove_backgrounds(target: Path, config: BgConfig, *, out: Path | None = None,
                       on_progress: ProgressFn | None = None, executor: Executor = LOCAL) -> BgResult:
    """Cut the background out of every image of a folder or workspace (see module doc); the
    model runs on `executor` (loaded once here, or once per Ray actor)."""
    config.check()
    target, mode = resolve_target(target)
    result = BgResult(str(target), mode, config)
    if result.mode == "workspace":
        if out is not None or config.mask_only:
            raise CurateError("--out and --mask-only are for plain folders: in a workspace the cut-outs "
                              "(mask in their alpha) are stored beside the images for later stages")
        with (Workspace.open(target) as ws, ws.lock(),
              ws.run(STAGE, config, derives="cutout", stream=True) as run):
            # the originals (bg cuts from them), but those a stopped run of these options cut
            records = {r.sha256: r for r in run.records() if r.sha256 not in run.resumed}
            result.resumed = len(run.resumed)
            result.items = [Item(shown(r), r.path, r.sha256) for r in records.values()]
            _run(result, executor, on_progress, lambda it: _store(run, result, records[str(it.sha256)], it))
            run.summary = result.counts()
        return result
    out = check_out(target, out) if out is not None else None
    found = walk_images(target)
    result.skipped, result.ignored = found.skipped, found.ignored
    result.items = [Item(rel, target / rel) for rel in found.relpaths]
    _run(result, executor, on_progress)
    if out is not None:
        result.out = str(out)
        for it in result.done:
            it.written = _write_folder(target, out, it, config.mask_only)
    return result


MIN_SUBJECT = 0.01  # a mask keeping less than this share of the image found no subject


@dataclass(frozen=True)
class Cutout:
    """What the per-image step gives: the encoded cut-out with its size and subject share, or
    why there is none; and where it ran (the segmenter's one-line device)."""

    device: str
    data: bytes | None = None
    size: tuple[int, int] = (0, 0)
    subject: float = 0.0
    error: str | None = None


@dataclass(frozen=True)
class BgModel:
    """The stage's model for an executor: `load` makes the segmenter once (per process or Ray
    actor); what it returns cuts each image path given, in order."""

    config: BgConfig

    def load(self) -> Callable[[Sequence[str]], Iterator[Cutout]]:
        segmenter, fill = Segmenter(self.config), parse_fill(self.config.fill)

        def run(paths: Sequence[str]) -> Iterator[Cutout]:
            for path in paths:
                yield cut_one(segmenter, fill, self.config.mask_only, Path(path))
        return run


def cut_one(segmenter: Segmenter, fill: tuple[int, int, int] | None, mask_only: bool, path: Path) -> Cutout:
    """The per-image step: read, cut, and encode one image (never raises for a bad image)."""
    cut = attempt(lambda p: _cut_file(segmenter, p), path, "cannot read or cut it",
                  "replace the file, try the other --method, or leave it out")
    if isinstance(cut, Failed):
        return Cutout(segmenter.device, error=cut.reason)
    share = coverage(cut.mask)
    if share < MIN_SUBJECT:
        # an all-transparent "cut-out" would train as an empty picture (or, with alpha_mask,
        # not at all): the original stays in the dataset, and the user is told
        return Cutout(segmenter.device, error=(
            f"no subject found (the mask keeps {share:.1%} of the image): the original is kept; try "
            "the other --method, another model, or crop it by hand"))
    data, shown = encode(cut, fill, mask_only)
    return Cutout(segmenter.device, data, shown.size, share)


def _run(result: BgResult, executor: Executor, on_progress: ProgressFn | None,
         store: Callable[[Item], None] | None = None) -> None:
    """Each item cut on `executor`; `store` gets each as it comes back (the workspace commits it)."""
    cutouts = executor.map_model(BgModel(result.config), [str(it.path) for it in result.items])
    for done, (it, cutout) in enumerate(zip(result.items, cutouts, strict=True), 1):
        result.device = cutout.device
        if cutout.error:
            it.error = cutout.error
            result.skipped.append((it.shown, cutout.error))
        else:
            it.data, it.size, it.subject = cutout.data, cutout.size, cutout.subject
        if store is not None:
            store(it)
        if on_progress:  # after it was stored: done means done
            on_progress(done, len(result.items))
    if not result.items and result.config.method == "grabcut":
        result.device = Segmenter(result.config).device  # no model: says where it would have run


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


def _store(run: StageRun, result: BgResult, record: Record, it: Item) -> None:
    """An image's cut-out as the 'cutout' of its chain (made from the original) and its
    decision, committed as the run goes (Workspace.run with stream)."""
    if it.data is not None:
        run.derive(record, "cutout", it.data, method=result.config.method, fill=result.config.fill,
                   subject_share=round(it.subject, 4), settings=asdict(result.config))
        run.decide(record, CUT, f"{result.device}; subject {it.subject:.0%} of {it.size[0]}x{it.size[1]}")
    elif it.error:
        run.decide(record, FAILED, it.error)
    run.checkpoint()
