"""Second half of an import: read, decode and store each planned file, then record it.

Each file is read and normalised by `load.load` (a pure function: on this machine's threads,
or on Ray workers with `--executor ray`); threads of this process read its sidecars and write
the stored copy (atomically, named by content hash); the main thread records results in the
manifest in discovery order, a batch per transaction. This process is the only writer. A file
is always on disk before the row that names it is committed, so a run killed at any point
leaves a state that a re-run completes to exactly what an uninterrupted run gives.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image

from curate.atomic import atomic_write_bytes
from curate.executor import LOCAL, Executor, thread_map
from curate.record import IMPORTED, MERGED, REPAIRED, SKIPPED, WARNING
from curate.stages.ingest.config import ImportConfig
from curate.stages.ingest.decode import Normalised
from curate.stages.ingest.identity import migrate_origins
from curate.stages.ingest.load import Loaded, LoadJob, container, load, register, unlimited_pil
from curate.stages.ingest.plan import Plan, Work, make_plan, open_trees
from curate.stages.ingest.sidecars import Sidecars, read_sidecars
from curate.workspace import Workspace, is_workspace

STAGE = "import"
BATCH_SECONDS = 0.5
ProgressFn = Callable[[int, int], None]


@dataclass
class Outcome:
    work: Work
    image: Normalised | None = None
    reason: str | None = None
    sidecars: Sidecars | None = None


@dataclass
class ImportResult:
    workspace: str
    dry_run: bool
    counts: dict[str, int] = field(default_factory=dict)
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (file, reason)
    warnings: list[tuple[str, str]] = field(default_factory=list)
    ignored: list[tuple[str, str]] = field(default_factory=list)
    repaired: list[tuple[str, str]] = field(default_factory=list)

    @property
    def nothing_new(self) -> bool:
        return self.counts.get("unchanged", 0) > 0 and sum(
            v for k, v in self.counts.items() if k not in ("unchanged", "ignored")) == 0

    def as_dict(self) -> dict[str, Any]:
        return {
            "workspace": self.workspace, "dry_run": self.dry_run, "counts": self.counts,
            "nothing_new": self.nothing_new,
            **{k: [{"file": f, "reason": r} for f, r in getattr(self, k)]
               for k in ("skipped", "warnings", "ignored", "repaired")},
        }


def import_sources(
    root: Path,
    sources: Iterable[Path | str],
    config: ImportConfig,
    *,
    dry_run: bool = False,
    on_progress: ProgressFn | None = None,
    executor: Executor = LOCAL,
) -> ImportResult:
    """Import images (with sidecar tags and captions) from folders, zips, tars, files or fsspec
    URLs into `root`; files are read and decoded on `executor` (this machine's threads, or a
    Ray cluster whose workers read the same paths or URLs)."""
    root = Path(root).absolute()
    trees = open_trees(sources, root)
    result = ImportResult(str(root), dry_run)
    if dry_run:
        known, firsts = _known(root)
        _run(None, make_plan(trees, known), firsts, config, result, on_progress, executor)
        return result
    with Workspace.open(root, create=True) as ws, ws.lock():
        run_id = ws.manifest.start_run(STAGE, {"sources": [t.label for t in trees],
                                               "config": config.__dict__})
        migrate_origins(ws, Path.cwd())  # older imports recorded sources as typed
        plan = make_plan(trees, ws.manifest.origin_fingerprints())
        firsts = ws.manifest.first_origins()
        _run(ws, plan, firsts, config, result, on_progress, executor, run_id)
        ws.manifest.finish_run(run_id, result.counts)
    return result


def _known(root: Path) -> tuple[dict[str, str], dict[str, str]]:
    if not is_workspace(root):
        return {}, {}
    with Workspace.open(root) as ws:
        return ws.manifest.origin_fingerprints(), ws.manifest.first_origins()


def _run(ws: Workspace | None, plan: Plan, firsts: dict[str, str], config: ImportConfig,
         result: ImportResult, on_progress: ProgressFn | None, executor: Executor,
         run_id: int | None = None) -> None:
    """`firsts` maps each known image hash to the first file it came from (grows as we go)."""
    counts = dict.fromkeys((IMPORTED, REPAIRED, MERGED, SKIPPED, "unchanged", "ignored"), 0)
    counts["unchanged"], counts["ignored"] = plan.unchanged, len(plan.ignored)
    result.counts = counts
    result.ignored = [(p.subject, p.reason) for p in plan.ignored]
    recorder = _Recorder(ws, run_id) if ws is not None else None
    for problem, fingerprint, tree in plan.skipped:
        counts[SKIPPED] += 1
        result.skipped.append((problem.subject, problem.reason))
        if recorder:
            recorder.skip(problem.subject, fingerprint, tree.label, tree.kind, problem.reason)
    total = len(plan.work)
    pil_limit, Image.MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS, None  # we check it ourselves
    try:
        for done, outcome in enumerate(_outcomes(ws, plan.work, config, executor), 1):
            verdict, reason = _verdict(outcome, result, firsts)
            counts[verdict] += 1
            if recorder:
                recorder.record(outcome, verdict, reason)
            if on_progress:
                on_progress(done, total)
    finally:
        Image.MAX_IMAGE_PIXELS = pil_limit
        if recorder:
            recorder.flush()


def _verdict(outcome: Outcome, result: ImportResult, firsts: dict[str, str]) -> tuple[str, str]:
    shown, image, sc = outcome.work.entry.shown, outcome.image, outcome.sidecars
    if sc:
        result.warnings.extend(sc.warnings)
    if image is None or sc is None:
        result.skipped.append((shown, outcome.reason or "unknown"))
        return SKIPPED, outcome.reason or "unknown"
    first = firsts.setdefault(image.sha256, shown)
    if first != shown:
        return MERGED, f"same bytes as {first}: stored once"
    if image.changes:
        result.repaired.append((shown, "; ".join(image.changes)))
        return REPAIRED, "; ".join(image.changes)
    return IMPORTED, _describe(sc)


def _job(work: Work, config: ImportConfig) -> LoadJob:
    tree = work.entry.tree
    return LoadJob(tree.kind, container(tree), work.entry.relpath, config.max_file_mb,
                   config.max_pixels, config.animated)


def _outcomes(ws: Workspace | None, works: list[Work], config: ImportConfig,
              executor: Executor) -> Iterator[Outcome]:
    """Each file loaded (`load.load`), then finished here, in discovery order. Locally one thread
    does both for a file; remotely the workers load and this process's threads finish."""
    workers = config.workers or os.cpu_count() or 1
    for tree in {id(w.entry.tree): w.entry.tree for w in works}.values():
        register(tree)  # `load` in this process reads through the trees the plan opened
    if not executor.remote:
        return thread_map(lambda w: _finish(ws, config, w, load(_job(w, config))), works, workers)
    loaded = executor.map(load, [_job(w, config) for w in works], pool="thread", workers=workers,
                          setup=unlimited_pil)
    return thread_map(lambda pair: _finish(ws, config, *pair), zip(works, loaded, strict=True), workers)


def _finish(ws: Workspace | None, config: ImportConfig, work: Work, loaded: Loaded) -> Outcome:
    """The file's sidecars read, and its normalised copy stored (before the row naming it)."""
    image = loaded.image
    if image is None:
        return Outcome(work, reason=loaded.reason)
    entry = work.entry
    sidecars = read_sidecars(entry.tree, entry.relpath, list(work.sidecars), config.max_sidecar_kb * 1024)
    if ws is not None:
        target = ws.stored_file(image.sha256, image.ext)
        if not target.exists():
            atomic_write_bytes(target, image.data)
    image.data = b""  # stored; do not keep every image in memory until it is recorded
    return Outcome(work, image, None, sidecars)


class _Recorder:
    """Writes outcomes to the manifest, batching rows into short transactions."""

    def __init__(self, ws: Workspace, run_id: int | None) -> None:
        self.ws, self.m, self.run_id = ws, ws.manifest, run_id
        self.pending: list[tuple[Outcome, str, str]] = []
        self.last_flush = time.monotonic()

    def skip(self, subject: str, fingerprint: str, source_root: str, kind: str, reason: str) -> None:
        with self.m.transaction() as db:
            self._origin(db, subject, source_root, kind, fingerprint, None, SKIPPED, [], {})
            self._decision(db, None, subject, SKIPPED, reason)

    def record(self, outcome: Outcome, verdict: str, reason: str) -> None:
        self.pending.append((outcome, verdict, reason))
        if time.monotonic() - self.last_flush > BATCH_SECONDS:
            self.flush()

    def flush(self) -> None:
        if not self.pending:
            return
        with self.m.transaction() as db:
            for outcome, verdict, reason in self.pending:
                self._write(db, outcome, verdict, reason)
        self.pending.clear()
        self.last_flush = time.monotonic()

    def _write(self, db: Any, outcome: Outcome, verdict: str, reason: str) -> None:
        work, image, sc = outcome.work, outcome.image, outcome.sidecars
        shown = work.entry.shown
        if image is None or sc is None:
            self._origin(db, shown, work.source_root, work.entry.tree.kind, work.fingerprint,
                         None, SKIPPED, [], {})
            self._decision(db, None, shown, SKIPPED, reason)
            return
        self._image(db, image)
        sidecar_paths = [work.entry.tree.shown(p) for p in sc.paths]
        self._origin(db, shown, work.source_root, sc.kind, work.fingerprint, image.sha256,
                     verdict, sidecar_paths, sc.metadata)
        # tags and a sentence caption are both kept: which one a caption uses is the layout's choice
        self.m.add_imported(image.sha256, sc.annotations, sc.texts)
        self._decision(db, image.sha256, shown, verdict, reason)
        for subject, warning in sc.warnings:
            self._decision(db, image.sha256, subject, WARNING, warning)

    def _image(self, db: Any, im: Normalised) -> None:
        stored = self.ws.stored_file(im.sha256, im.ext).relative_to(self.ws.root)
        self.m.put_image(im.sha256, stored.as_posix(), (im.width, im.height), im.mode, im.format,
                         im.source_format, (self.ws.root / stored).stat().st_size, im.changes)

    def _origin(self, db: Any, shown: str, root: str, kind: str, fingerprint: str,
                sha: str | None, status: str, sidecars: list[str], meta: dict[str, Any]) -> None:
        self.m.put_origin(shown, root, kind, fingerprint, sha, status, sidecars, meta)

    def _decision(self, db: Any, sha: str | None, subject: str, verdict: str, reason: str) -> None:
        self.m.add_decisions([(sha, subject, STAGE, verdict, reason)], self.run_id)


def _describe(sc: Sidecars) -> str:
    parts = [f"{sc.kind}"]
    if sc.tags:
        parts.append(f"{len(sc.tags)} tags")
    if sc.caption:
        parts.append("caption")
    return ", ".join(parts)
