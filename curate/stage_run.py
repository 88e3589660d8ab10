"""One way for a stage to talk to the workspace (image side):

    with ws.run("crop", config, derives="crop") as run:
        for record in run.records():          # active images; path = the leaf below this stage
            run.derive(record, "crop", data, box=[x, y, w, h], subject="face")
            run.decide(record, "cropped", reason)
        run.summary = counts

Derived files are written (content-addressed, atomic) when `derive` is called; the run's row,
its files, its decisions and its end are committed in one transaction when the `with` block
ends without an exception, so a killed or failed run leaves the previous state in force. A
stage in manifest.REPLACING_STAGES decides about every image afresh: only its latest finished
run's decisions count, and files its earlier runs made and this one did not are dropped.

A streaming run (`ws.run(..., stream=True)`: bg and crop, whose per-image results stream back
from an executor) commits its files and decisions as it goes instead: `checkpoint()` after each
image writes them in a short transaction every COMMIT_EVERY_S (and what is pending is written
when the block ends with an exception too), and the end marks the run finished (only then do
its decisions count and earlier runs' files go). A run stopped part-way is continued by the
next run of the stage with the same options (see Manifest.open_run): `resumed` holds the
images it already decided, which the stage leaves out.
"""

from __future__ import annotations

import hashlib
import io
import time
from dataclasses import asdict, is_dataclass
from pathlib import Path
from types import MappingProxyType, TracebackType
from typing import TYPE_CHECKING, Any

from PIL import Image

from curate.atomic import atomic_write_bytes
from curate.errors import CurateError
from curate.manifest import REPLACING_STAGES
from curate.manifest.derived import Derived, rank
from curate.manifest.images import NewDecision
from curate.paths import display
from curate.record import Record

if TYPE_CHECKING:
    from curate.workspace import Workspace

EXTS = {"PNG": ".png", "JPEG": ".jpg", "WEBP": ".webp"}
COMMIT_EVERY_S = 0.5  # a streaming run's commits: at most this often (a transaction per image is slow)


def shown(record: Record) -> str:
    """The image as the user knows it: its first source file."""
    return record.origins[0].source_path if record.origins else str(record.path)


class StageRun:
    """A stage's run over a workspace (see the module doc). `derives` names the kind of file the
    stage makes: its records then show the chain below that place (crop sees the cut-out)."""

    def __init__(self, ws: Workspace, stage: str, params: Any, *, derives: str | None = None,
                 dry_run: bool = False, stream: bool = False) -> None:
        self.ws, self.stage, self.dry_run, self.stream = ws, stage, dry_run, stream and not dry_run
        self.resumed: set[str] = set()  # images a stopped run of the same options already decided
        self._last = time.monotonic()
        dataclass_value = is_dataclass(params) and not isinstance(params, type)
        self.params = asdict(params) if dataclass_value else dict(params)
        self.below = rank(derives) if derives else None
        self.summary: dict[str, Any] = {}
        self.run_id: int | None = None
        self._files: list[Derived] = []
        self._decisions: list[NewDecision] = []

    def __enter__(self) -> StageRun:
        if self.stream:
            self.run_id, self.resumed = self.ws.manifest.open_run(self.stage, self.params)
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if self.dry_run:
            return
        replacing = self.stage in REPLACING_STAGES
        if self.stream and self.run_id is not None:
            if kind is not None:  # stopped: keep what was finished (the next run continues it)
                self.checkpoint(force=True)
                return
            if self.resumed:
                self.summary = {**self.summary, "resumed": len(self.resumed)}
            files, decisions = self._take()
            self.ws.manifest.end_run(self.run_id, self.stage, self.summary, files, decisions,
                                     replacing=replacing)
        elif kind is None:
            self.run_id = self.ws.manifest.commit_run(self.stage, self.params, self.summary, self._files,
                                                      self._decisions, replacing=replacing)

    def checkpoint(self, *, force: bool = False) -> None:
        """A streaming run: commit the files and decisions made so far, at most every
        COMMIT_EVERY_S unless forced (call it between images: an image's file before its decision)."""
        if not self.stream or self.run_id is None or not (self._files or self._decisions):
            return
        if force or time.monotonic() - self._last > COMMIT_EVERY_S:
            files, decisions = self._take()
            self.ws.manifest.commit_part(self.run_id, self.stage, files, decisions)
            self._last = time.monotonic()

    def _take(self) -> tuple[list[Derived], list[NewDecision]]:
        files, decisions = self._files, self._decisions
        self._files, self._decisions = [], []
        return files, decisions

    def records(self, *, active: bool = True) -> list[Record]:
        """The images (active ones: no stage excluded them), each standing for its leaf file."""
        return self.ws.active_records(self.below) if active else self.ws.records(self.below)

    def decide(self, record: Record | str | None, verdict: str, reason: str, *,
               subject: str | None = None) -> None:
        """A decision about an image (a Record or its sha256; None for a file that is no image)."""
        if isinstance(record, Record):
            sha, subject = record.sha256, subject or shown(record)
        else:
            sha = record
        if subject is None:
            raise ValueError("decide: a subject (the file as the user knows it) is needed without a record")
        self._decisions.append(NewDecision(sha, subject, verdict, reason))

    def derive(self, record: Record | str, kind: str, file: bytes | Path, *, parent: str | None = None,
               **info: Any) -> Derived:
        """Store a derived file of `record` (made from `parent`, by default the record's leaf) and
        record it with the facts that made it (`info`: box, settings, mask...)."""
        image = record.sha256 if isinstance(record, Record) else record
        if parent is None:
            if not isinstance(record, Record):
                raise ValueError("derive: parent is needed when an image sha256 is given")
            parent = str(record.extra.get("leaf", record.sha256))
        data = file if isinstance(file, bytes) else Path(file).read_bytes()
        try:
            with Image.open(io.BytesIO(data)) as probe:
                size, mode, fmt = probe.size, probe.mode, probe.format or ""
        except (OSError, ValueError) as exc:
            where = display(file) if isinstance(file, Path) else f"{kind} of {image[:12]}"
            raise CurateError(f"{where}: the {self.stage} stage made a file that is no image ({exc}); "
                              "re-run it, and report it if it happens again") from exc
        sha = hashlib.sha256(data).hexdigest()
        path = self.ws.stored_file(sha, EXTS.get(fmt, ".bin"))
        if not path.exists():  # on disk before the manifest names it
            atomic_write_bytes(path, data)
        derived = Derived(image, kind, parent, sha, path.relative_to(self.ws.root).as_posix(),
                          size[0], size[1], mode, fmt, MappingProxyType(dict(info)))
        self._files.append(derived)
        return derived
