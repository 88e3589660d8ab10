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

from curate.atomic import atomic_write_text, sweep_temp_files
from curate.config import CONFIG_NAME, template
from curate.errors import CurateError, WorkspaceBusy
from curate.manifest import CURRENT_DECISION, USER_CAPTION, Manifest
from curate.record import Decision, Origin, Record, Tag, Text

STATE_DIR = ".curate"
MANIFEST_NAME = "manifest.sqlite"
IMAGES_DIR = "images"

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
            sweep_temp_files(self.images_dir)
            yield

    def stored_file(self, sha256: str, ext: str) -> Path:
        return self.images_dir / sha256[:2] / f"{sha256}{ext}"

    def records(self) -> list[Record]:
        """Every image in the manifest as a Record, in import order."""
        m = self.manifest
        origins: dict[str, list[Origin]] = {}
        for r in m.rows("SELECT * FROM origins WHERE image_sha256 IS NOT NULL ORDER BY id"):
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
        current = f"SELECT * FROM decisions WHERE image_sha256 IS NOT NULL AND {CURRENT_DECISION}"
        for r in m.rows(current + " ORDER BY id"):
            decisions.setdefault(r["image_sha256"], []).append(
                Decision(r["stage"], r["verdict"], r["reason"], r["subject"])
            )
        # A crop from `curate crop` stands in for its image (file, size, mode, format), so later
        # stages train on it; the original and the box stay in extra["crop"].
        crops = {r["image_sha256"]: r for r in m.rows("SELECT * FROM crops WHERE kind = 'main'")}
        closeups: dict[str, list[Path]] = {}
        for r in m.rows("SELECT image_sha256, stored_path FROM crops WHERE kind != 'main' ORDER BY kind"):
            closeups.setdefault(r["image_sha256"], []).append(self.root / r["stored_path"])

        def extra(r) -> dict[str, object]:  # type: ignore[no-untyped-def]
            out: dict[str, object] = {"changes": json.loads(r["changes"])}
            if (c := crops.get(r["sha256"])) is not None:
                out["crop"] = {"sha256": c["sha256"], "box": json.loads(c["box"]), "subject": c["subject"],
                               "original": self.root / r["stored_path"],
                               "original_size": (r["width"], r["height"])}
            if r["sha256"] in closeups:
                out["closeups"] = tuple(closeups[r["sha256"]])
            return out

        return [
            Record(
                sha256=r["sha256"], path=self.root / s["stored_path"], width=s["width"],
                height=s["height"], mode=s["mode"], format=s["format"],
                origins=tuple(origins.get(r["sha256"], ())),
                tags=tuple(tags.get(r["sha256"], ())),
                texts=tuple(texts.get(r["sha256"], ())),
                trigger=settings.get("trigger") or None,
                class_tokens=settings.get("class_token") or None,
                user_caption=user_captions.get(r["sha256"]),
                decisions=tuple(decisions.get(r["sha256"], ())),
                extra=MappingProxyType(extra(r)),
            )
            for r in m.rows("SELECT * FROM images ORDER BY rowid")
            for s in [crops.get(r["sha256"], r)]
        ]


    def active_records(self) -> list[Record]:
        """The images later stages work on: those no stage has excluded (e.g. duplicates)."""
        return [r for r in self.records() if not r.excluded]


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
