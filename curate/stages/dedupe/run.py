"""`curate dedupe`: the one entry point, for a plain folder or a workspace.

On a plain folder the default is a report; `move_to` moves the duplicates aside (never
deletes). In a workspace every duplicate gets a `duplicate` decision naming the image kept
in its place, and later stages leave it out; each run replaces the previous run's decisions,
atomically with the run's end, so a killed run changes nothing. A workspace also keeps the
search index (`.curate/dedupe-index.npz`, see index.py), so a re-run after an import of new
images searches only their hashes against it; the groups are the same as without it.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from curate.errors import CurateError
from curate.executor import LOCAL, Executor
from curate.folder import resolve_target
from curate.record import DUPLICATE, KEPT
from curate.stages.dedupe.config import DedupeConfig
from curate.stages.dedupe.confirm import confirm_fn
from curate.stages.dedupe.group import Group, Member, find_groups
from curate.stages.dedupe.hashing import hash_key
from curate.stages.dedupe.index import INDEX_NAME
from curate.stages.dedupe.keep import KEEP_FILE, match_keep_list, read_keep_list
from curate.stages.dedupe.move import apply_moves, move_lock, plan_moves
from curate.stages.dedupe.relation import Digests
from curate.stages.dedupe.report import write_report
from curate.stages.dedupe.scan import Item, ProgressFn, Scan, prefetch, scan_folder, scan_workspace
from curate.workspace import Workspace

if TYPE_CHECKING:
    from curate.manifest import Manifest

STAGE = "dedupe"
RELATION_TEXT = {"same-file": "identical file", "same-pixels": "same pixels",
                 "near": "near duplicate"}


@dataclass
class DedupeResult:
    target: str
    mode: str  # "folder" or "workspace"
    dry_run: bool
    threshold: int
    hash_key: str
    items: Sequence[Item] = field(default_factory=list)
    groups: list[Group] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)
    ignored: list[tuple[str, str]] = field(default_factory=list)
    warnings: list[tuple[str, str]] = field(default_factory=list)
    moved: list[tuple[str, str]] = field(default_factory=list)
    hashed: int = 0
    report: str | None = None
    undo_record: str | None = None

    @property
    def duplicates(self) -> int:
        return sum(len(g.duplicates) for g in self.groups)

    def reason(self, m: Member, group: Group) -> str:
        kept = self.items[group.keeper]
        return (f"duplicate-of {kept.sha256[:16]} ({kept.shown}): {RELATION_TEXT[m.relation]}, "
                f"hash distance {m.distance}")

    @property
    def counts(self) -> dict[str, int]:
        return {"images": len(self.items), "groups": len(self.groups), "duplicates": self.duplicates,
                "skipped": len(self.skipped), "hashed": self.hashed, "moved": len(self.moved)}

    def as_dict(self) -> dict[str, Any]:
        return {
            "target": self.target, "mode": self.mode, "dry_run": self.dry_run,
            "hash": self.hash_key, "threshold": self.threshold, "counts": self.counts,
            "groups": [self._group_dict(g) for g in self.groups],
            "moved": [{"from": a, "to": b} for a, b in self.moved],
            "report": self.report, "undo_record": self.undo_record,
            **{k: [{"file": f, "reason": r} for f, r in getattr(self, k)]
               for k in ("skipped", "ignored", "warnings")},
        }

    def _group_dict(self, g: Group) -> dict[str, Any]:
        def info(i: int) -> dict[str, Any]:
            it = self.items[i]
            return {"file": it.shown, "sha256": it.sha256, "width": it.width, "height": it.height,
                    "bytes": it.file_bytes, "format": it.format}
        return {"kept": {**info(g.keeper), "why": g.why},
                "also_kept": [info(i) for i in g.also_kept],
                "duplicates": [{**info(m.index), "relation": m.relation, "distance": m.distance}
                               for m in g.duplicates]}


def dedupe(target: Path, config: DedupeConfig, *, keep_list: Path | None = None,
           move_to: Path | None = None, report: Path | None = None, dry_run: bool = False,
           on_progress: ProgressFn | None = None, executor: Executor = LOCAL) -> DedupeResult:
    """Find duplicate groups in a folder or workspace and act on them (see module doc); the
    hashing runs on `executor` (this machine's cores, or a Ray cluster)."""
    target, mode = resolve_target(target)
    result = DedupeResult(str(target), mode, dry_run,
                          config.effective_threshold(),
                          hash_key(config.hash, config.hash_size, config.decode))
    if result.mode == "workspace":
        if move_to is not None:
            raise CurateError("--move-to is for plain folders: in a workspace duplicates are "
                              "marked in the manifest and left out of later stages")
        with Workspace.open(target) as ws, ws.lock():
            scan = scan_workspace(ws, config, save=not dry_run, on_progress=on_progress,
                                  executor=executor)
            _group(result, scan, config, keep_list, target, ws.state_dir / INDEX_NAME, not dry_run,
                   ws.manifest)
            if not dry_run:
                _record(ws, result, config)
    else:
        if move_to is not None and Path(move_to).absolute() == target:
            raise CurateError("--move-to must be another folder than the one deduplicated")
        dest = Path(move_to).absolute() if move_to is not None and not dry_run else None
        with move_lock(dest) if dest is not None else nullcontext():
            scan = scan_folder(target, config, [move_to] if move_to else [], on_progress=on_progress,
                               executor=executor)
            _group(result, scan, config, keep_list, target)
            if move_to is not None:
                _move(result, target, Path(move_to).absolute(), dry_run)
    if report is not None:
        write_report(Path(report), result.items, result.groups, f"curate dedupe: {target}",
                     _summary_line(result))
        result.report = str(Path(report).absolute())
    return result


def _group(result: DedupeResult, scan: Scan, config: DedupeConfig, keep_list: Path | None,
           root: Path, index: Path | None = None, save_index: bool = False,
           store: Manifest | None = None) -> None:
    """Groups from the scan. A workspace passes its search index and its manifest, which keeps
    verification scores and pixel digests; all are written unless this is a dry run (`save_index`)."""
    result.items, result.hashed = scan.items, scan.hashed
    result.skipped, result.ignored = scan.skipped, scan.ignored
    if keep_list is None and (root / KEEP_FILE).is_file():
        keep_list = root / KEEP_FILE
    chosen: set[int] = set()
    if keep_list is not None:
        prefetch(scan.items, range(len(scan.items)))  # a keep list is matched against every image
        chosen, unmatched = match_keep_list(scan.items, read_keep_list(keep_list), root)
        result.warnings += [(str(keep_list), f"line {entry!r} names no image here") for entry in unmatched]
    confirm = confirm_fn(config, store, save_index) if config.verify else None
    unverified: list[int] = []
    digests = Digests(store)
    result.groups = find_groups(scan.items, scan.hashes, config, chosen, confirm, unverified, index,
                                save_index, digests)
    if save_index:
        digests.save()
    if unverified:
        left, reached = unverified
        more = f"{left} more up to that distance and any" if left else "any"
        result.warnings.append((str(root), f"verified the {config.verify_max_pairs} closest candidate "
                                f"pairs (hash distance <= {reached}), not {more} further apart: crops "
                                "among those may be missed; raise --set dedupe.verify_max_pairs=N to "
                                "look at more"))


def _record(ws: Workspace, result: DedupeResult, config: DedupeConfig) -> None:
    """This run's decisions and its end, in one transaction: all of them or none."""
    with ws.run(STAGE, {**config.__dict__, "threshold": result.threshold}) as run:
        for g in result.groups:
            keeper = result.items[g.keeper]
            run.decide(keeper.sha256, KEPT, f"kept for {len(g.duplicates)} duplicate(s): {g.why}",
                       subject=keeper.shown)
            for i in g.also_kept:
                also = result.items[i]
                run.decide(also.sha256, KEPT, "listed in the keep list", subject=also.shown)
            for m in g.duplicates:
                item = result.items[m.index]
                run.decide(item.sha256, DUPLICATE, result.reason(m, g), subject=item.shown)
        run.summary = result.counts


def _move(result: DedupeResult, root: Path, dest: Path, dry_run: bool) -> None:
    reasons = {m.index: result.reason(m, g) for g in result.groups for m in g.duplicates}
    moves = plan_moves(root, dest, result.items, result.groups, reasons)
    if dry_run:
        result.moved = [(m.source, m.target) for m in moves]
        return
    done, refused = apply_moves(dest, moves)
    result.moved = [(m.source, m.target) for m in done]
    result.skipped += refused
    if done:
        result.undo_record = str(dest / "dedupe.json")


def _summary_line(result: DedupeResult) -> str:
    return (f"{len(result.items)} images, {len(result.groups)} duplicate groups, "
            f"{result.duplicates} duplicates; hash {result.hash_key}, threshold {result.threshold}")
