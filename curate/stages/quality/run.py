"""`curate filter`: the one entry point, for a plain folder or a workspace.

Every image is measured once (`score.measure_file`, on all cores) and judged against the
thresholds (`judge.judge`). In a workspace, scores are kept in the manifest per file content,
so a re-run with other thresholds reads no image; each failing image gets a `rejected`
decision listing every reason, later stages leave it out, and each run replaces the previous
run's decisions atomically with its end. A plain folder gets a report, and with `out` a copy
of the images that pass (with their caption sidecars); the folder itself is never written.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from curate.errors import CurateError
from curate.executor import LOCAL, Executor
from curate.folder import resolve_target, walk_images
from curate.record import EXCLUDING, REJECTED, Record
from curate.stages.guard import FAILED, Failed, per_image_map
from curate.stages.quality.config import CHECKS, QualityConfig
from curate.stages.quality.copy import check_out, copy_image
from curate.stages.quality.faces import detector_key
from curate.stages.quality.judge import Failure, judge
from curate.stages.quality.score import Scores, measure_file, scores_key
from curate.workspace import Workspace, is_workspace

STAGE = "quality"
ProgressFn = Callable[[int, int], None]
SaveFn = Callable[[dict[str, Scores]], None]
COMMIT_EVERY_S = 0.5  # new scores are committed this often: a killed run keeps them


@dataclass
class Item:
    shown: str  # path relative to the folder, or the first source path of a workspace image
    path: Path
    key: str  # content sha256 of the measured file (workspace), else the relative path
    sha256: str | None = None  # workspace image
    scores: Scores | None = None
    failures: list[Failure] = field(default_factory=list)


@dataclass
class QualityResult:
    target: str
    mode: str  # "folder" or "workspace"
    dry_run: bool
    config: QualityConfig
    items: list[Item] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)
    ignored: list[tuple[str, str]] = field(default_factory=list)
    measured: int = 0  # images read in this run (the rest had stored scores)
    failed: list[tuple[Item, str]] = field(default_factory=list)  # could not be measured, why
    out: str | None = None
    copied: list[str] = field(default_factory=list)

    @property
    def rejected(self) -> list[Item]:
        return [it for it in self.items if it.failures]

    def counts(self) -> dict[str, int]:
        per_check = {c: sum(any(f[0] == c for f in it.failures) for it in self.items)
                     for c in self.config.active}
        return {"images": len(self.items), "rejected": len(self.rejected),
                "passed": len(self.items) - len(self.rejected), "skipped": len(self.skipped),
                "measured": self.measured, "copied": len(self.copied), **per_check}

    def as_dict(self) -> dict[str, Any]:
        return {
            "target": self.target, "mode": self.mode, "dry_run": self.dry_run,
            "config": {**asdict(self.config), "skip": list(self.config.skip)},
            "counts": self.counts(), "out": self.out,
            "rejected": [{"file": it.shown, "sha256": it.sha256, "checks": [c for c, _ in it.failures],
                          "reasons": [r for _, r in it.failures]} for it in self.rejected],
            "scores": {it.shown: it.scores for it in self.items},
            **{k: [{"file": f, "reason": r} for f, r in getattr(self, k)] for k in ("skipped", "ignored")},
        }


def quality_filter(target: Path, config: QualityConfig, *, out: Path | None = None, dry_run: bool = False,
                   on_progress: ProgressFn | None = None, executor: Executor = LOCAL) -> QualityResult:
    """Measure and judge every image of a folder or workspace (see module doc); images are
    measured on `executor` (this machine's cores, or a Ray cluster)."""
    config.check()
    target, mode = resolve_target(target)
    mode = "workspace" if is_workspace(target) else "folder"
    result = QualityResult(str(target), mode, dry_run, config)
    if mode == "workspace":
        if out is not None:
            raise CurateError("--out is for plain folders: in a workspace rejected images are marked "
                              "in the manifest and left out of later stages (then `curate layout`)")
        with Workspace.open(target) as ws, ws.lock():
            _workspace(ws, result, on_progress, executor)
        return result
    out = check_out(target, out) if out is not None else None
    found = walk_images(target)
    result.skipped, result.ignored = found.skipped, found.ignored
    result.items = [Item(rel, target / rel, rel) for rel in found.relpaths]
    _measure(result, config.detector, on_progress, executor)
    if out is not None:
        result.out = str(out)
        passing = [it for it in result.items if it.scores is not None and not it.failures]
        for it in passing:
            result.copied += [it.shown] if dry_run else copy_image(target, it.shown, out)[:1]
    return result


def _excluded_elsewhere(record: Record) -> bool:
    """Left out by another stage (a duplicate); this stage's own verdicts are re-decided."""
    return any(d.verdict in EXCLUDING and d.stage != STAGE for d in record.decisions)


def content_key(record: Record) -> str:
    """The sha256 of the file later stages use: the leaf of the image's derived chain."""
    return str(record.extra.get("leaf", record.sha256))


def _shown(record: Record) -> str:
    return record.origins[0].source_path if record.origins else str(record.path)


def _workspace(ws: Workspace, result: QualityResult, on_progress: ProgressFn | None,
               executor: Executor) -> None:
    records = [r for r in ws.records() if not _excluded_elsewhere(r)]
    result.items = [Item(_shown(r), r.path, content_key(r), r.sha256) for r in records]
    key = scores_key(detector_key(result.config.detector))
    stored = ws.manifest.quality_scores(key)
    for it in result.items:
        it.scores = stored.get(it.key)
    def save(scores: dict[str, Scores]) -> None:
        ws.manifest.save_quality_scores(key, scores)

    _measure(result, result.config.detector, on_progress, executor, None if result.dry_run else save)
    if not result.dry_run:
        _record(ws, result)


def _measure(result: QualityResult, detector: str, on_progress: ProgressFn | None, executor: Executor,
             save: SaveFn | None = None) -> list[Item]:
    """Scores for items without them (on `executor`), then every item judged; returns the
    items measured in this run. An image that cannot be read is skipped with the reason.
    `save` gets the new scores every COMMIT_EVERY_S and at the end (a killed run keeps them)."""
    todo = [it for it in result.items if it.scores is None]
    jobs = [(str(it.path), detector) for it in todo]
    measured = per_image_map(measure_file, jobs, result.config.workers or None, "cannot measure it",
                             "replace the file or leave it out", executor)
    fresh: dict[str, Scores] = {}
    last = time.monotonic()
    for done, (it, outcome) in enumerate(zip(todo, measured, strict=True), 1):
        scores, error = (None, outcome.reason) if isinstance(outcome, Failed) else outcome
        it.scores = scores
        if error:
            result.skipped.append((it.shown, error))
            result.failed.append((it, error))
        elif save is not None:
            fresh[it.key] = scores or {}
            if time.monotonic() - last > COMMIT_EVERY_S:
                save(fresh)
                fresh, last = {}, time.monotonic()
        if on_progress:
            on_progress(done, len(todo))
    if save is not None and fresh:
        save(fresh)
    result.measured = len(todo)
    result.items = [it for it in result.items if it.scores is not None]
    for it in result.items:
        it.failures = judge(it.scores or {}, result.config)
    return [it for it in todo if it.scores is not None]


def _record(ws: Workspace, result: QualityResult) -> None:
    """This run's decisions and its end, in one transaction: all of them or none."""
    with ws.run(STAGE, {**asdict(result.config), "skip": list(result.config.skip)}) as run:
        for it in result.rejected:
            run.decide(it.sha256, REJECTED, "; ".join(r for _, r in it.failures), subject=it.shown)
        for it, reason in result.failed:
            run.decide(it.sha256, FAILED, reason, subject=it.shown)
        run.summary = result.counts()


def failed_checks(result: QualityResult) -> Sequence[tuple[str, int]]:
    """(check, images failing it) in CHECKS order, for reports."""
    counts = result.counts()
    return [(c, counts[c]) for c in CHECKS if c in counts]
