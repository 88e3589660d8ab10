"""A workspace is a folder: `.curate/manifest.sqlite` (the state), `images/` (normalised copies
keyed by content hash) and `curate.toml` (the options). Sources stay where they are, untouched.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

from curate.atomic import atomic_write_text, sweep_temp_files
from curate.config import CONFIG_NAME, template
from curate.errors import CurateError, WorkspaceBusy
from curate.manifest import USER_CAPTION, Manifest
from curate.manifest.derived import Derived, chain, side_files
from curate.record import Decision, Origin, Record, Tag, Text

if TYPE_CHECKING:
    from curate.stage_run import StageRun

STATE_DIR = ".curate"
MANIFEST_NAME = "manifest.sqlite"
IMAGES_DIR = "images"
WRITING = "writing"  # in STATE_DIR while a process holds the workspace (see Workspace.lock)

CONFIG_HEADER = """\
# curate.toml: options for every stage of this workspace, one table per command (`[filter]` is
# `curate filter`, `[tags-filter]` is `curate tags filter`). Every option is listed with its help
# and its default; uncomment a line to change it. Each can also be set for one run with
# `--set section.key=value`, and the common ones have flags (`curate COMMAND --help`).
# Flags win over --set, --set wins over this file.
"""


def default_config() -> str:
    """The commented curate.toml `curate init` writes: made from the stages' option dataclasses
    (`curate.config.template`), so it lists every option with its help and default."""
    return CONFIG_HEADER + "\n" + template()


def is_workspace(path: Path) -> bool:
    return (path / STATE_DIR / MANIFEST_NAME).is_file()


@dataclass
class Workspace:
    root: Path
    manifest: Manifest

    @property
    def images_dir(self) -> Path:
        return self.root / IMAGES_DIR

    @property
    def config_path(self) -> Path:
        return self.root / CONFIG_NAME

    @property
    def state_dir(self) -> Path:
        return self.root / STATE_DIR

    @classmethod
    def open(cls, root: Path, *, create: bool = False) -> Workspace:
        root = Path(root).absolute()
        if not is_workspace(root):
            if not create:
                hint = f"create it with `curate init {root}`" if not root.exists() else (
                    f"run `curate init {root}` or `curate import SRC --into {root}`"
                )
                raise CurateError(f"{root} is not a curate workspace: {hint}")
            init_folder(root)
        return cls(root, Manifest(root / STATE_DIR / MANIFEST_NAME))

    def close(self) -> None:
        self.manifest.close()

    def __enter__(self) -> Workspace:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextmanager
    def lock(self) -> Iterator[None]:
        """Hold the workspace for one writer; sweep what a killed writer left behind."""
        lock_path = self.state_dir / "lock"
        with lock_path.open("a+") as fh:
            try:
                import fcntl

                fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            except ImportError:  # Windows: no advisory locks; single-user use assumed
                pass
            except BlockingIOError as exc:
                raise WorkspaceBusy(
                    f"{self.root} is in use by another curate process; wait for it to finish"
                ) from exc
            # A holder marks the workspace busy (WRITING beside the manifest) until it lets go,
            # even on an error (atomic writes remove their own temp file then); a mark found here
            # means a killed writer, whose temp files in images/ and beside the manifest are swept
            # now. Sweeping on every run listed every stored image: 1.7 s a run at 1M images.
            busy = self.state_dir / WRITING
            if busy.exists():
                for folder in (self.images_dir, self.state_dir):
                    sweep_temp_files(folder)
            busy.touch()
            try:
                yield
            finally:
                busy.unlink(missing_ok=True)

    def run(self, stage: str, params: Any, *, derives: str | None = None, dry_run: bool = False,
            stream: bool = False) -> StageRun:
        """A stage's run: `with ws.run(stage, config) as run:` (see curate/stage_run.py; `stream`:
        committed as it goes, and continued after a stop). Hold `lock()` around it: the run reads
        records, then commits what it made."""
        from curate.stage_run import StageRun

        return StageRun(self, stage, params, derives=derives, dry_run=dry_run, stream=stream)

    def stored_file(self, sha256: str, ext: str) -> Path:
        return self.images_dir / sha256[:2] / f"{sha256}{ext}"

    def records(self, below: int | None = None) -> list[Record]:
        """Every image in the manifest as a Record, in import order. A record stands for the leaf
        of its image's derived chain (file, size, mode, format; the original's sha256 stays its
        key); `below` (a chain rank, manifest.derived.rank) stops the chain before that place,
        for the stage that makes it."""
        m = self.manifest
        origins: dict[str, list[Origin]] = {}
        for r in m.origin_rows():
            origins.setdefault(r["image_sha256"], []).append(
                Origin(r["source_path"], r["source_kind"], r["source_root"],
                       MappingProxyType(json.loads(r["metadata"])))
            )
        tags: dict[str, list[Tag]] = {}
        for r in m.tag_rows():
            tags.setdefault(r["image_sha256"], []).append(
                Tag(r["tag"], r["category"], r["confidence"], r["source"], r["removed"], r["rank"]))
        texts: dict[str, list[Text]] = {}
        user_captions: dict[str, str] = {}
        for r in m.text_rows():
            if r["source"] == USER_CAPTION:
                user_captions[r["image_sha256"]] = r["text"]
            else:
                texts.setdefault(r["image_sha256"], []).append(Text(r["text"], r["source"]))
        settings = m.settings()
        decisions: dict[str, list[Decision]] = {}
        for r in m.current_decision_rows():
            decisions.setdefault(r["image_sha256"], []).append(
                Decision(r["stage"], r["verdict"], r["reason"], r["subject"])
            )
        derived = m.derived_rows()
        return [
            Record(
                sha256=r["sha256"], path=self.root / leaf["stored_path"], width=leaf["width"],
                height=leaf["height"], mode=leaf["mode"], format=leaf["format"],
                origins=tuple(origins.get(r["sha256"], ())),
                tags=tuple(tags.get(r["sha256"], ())),
                texts=tuple(texts.get(r["sha256"], ())),
                trigger=settings.get("trigger") or None,
                class_tokens=settings.get("class_token") or None,
                user_caption=user_captions.get(r["sha256"]),
                decisions=tuple(decisions.get(r["sha256"], ())),
                extra=MappingProxyType(extra),
            )
            for r in m.image_records()
            for leaf, extra in [self._chain(r, derived.get(r["sha256"], []), below)]
        ]

    def _chain(self, image: Any, rows: list[Derived], below: int | None
               ) -> tuple[dict[str, Any], dict[str, object]]:
        """The leaf's facts, and extra: "changes", "chain" (main line, original first), "leaf"
        (its sha256), "crop" (the crop on it: box in its parent's pixels) and "closeups"."""
        line = chain(image["sha256"], rows, below)
        files = {image["sha256"]: (self.root / image["stored_path"], (image["width"], image["height"]))}
        files |= {d.sha256: (self.root / d.stored_path, (d.width, d.height)) for d in line}
        extra: dict[str, object] = {"changes": json.loads(image["changes"]),
                                    "leaf": line[-1].sha256 if line else image["sha256"],
                                    "chain": tuple(MappingProxyType(
                                        {"kind": d.kind, "sha256": d.sha256, "parent": d.parent,
                                         "path": self.root / d.stored_path, "info": d.info}) for d in line)}
        if crop := next((d for d in line if d.kind == "crop"), None):
            parent_path, parent_size = files[crop.parent]
            extra["crop"] = {"sha256": crop.sha256, "box": list(crop.info.get("box", ())),
                             "subject": crop.info.get("subject", ""), "parent": crop.parent,
                             "original": parent_path, "original_size": parent_size}
        if closeups := side_files(image["sha256"], rows, line):
            extra["closeups"] = tuple(self.root / d.stored_path for d in closeups)
        leaf = dict(image) if not line else {
            "stored_path": line[-1].stored_path, "width": line[-1].width, "height": line[-1].height,
            "mode": line[-1].mode, "format": line[-1].format}
        return leaf, extra

    def active_records(self, below: int | None = None) -> list[Record]:
        """The images later stages work on: those no stage has excluded (e.g. duplicates)."""
        return [r for r in self.records(below) if not r.excluded]


def init_folder(root: Path) -> None:
    """Create the workspace folders and a commented curate.toml (an existing one is kept)."""
    if root.exists() and not root.is_dir():
        raise CurateError(f"{root} exists and is not a folder: choose another workspace path")
    try:
        (root / STATE_DIR).mkdir(parents=True, exist_ok=True)
        (root / IMAGES_DIR).mkdir(exist_ok=True)
    except OSError as exc:
        raise CurateError(f"cannot create workspace {root}: {exc.strerror}") from exc
    config = root / CONFIG_NAME
    if not config.exists():
        atomic_write_text(config, default_config())
