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
from curate.config import CONFIG_NAME
from curate.errors import CurateError, WorkspaceBusy
from curate.manifest import CURRENT_DECISION, Manifest
from curate.manifest.derived import Derived, chain, side_files
from curate.record import Decision, Origin, Record, Tag

if TYPE_CHECKING:
    from curate.stage_run import StageRun

STATE_DIR = ".curate"
MANIFEST_NAME = "manifest.sqlite"
IMAGES_DIR = "images"

DEFAULT_CONFIG = """\
# curate.toml: options for every stage of this workspace.
# Each key can also be set for one run with `--set section.key=value`, and the common ones
# have flags (see `curate COMMAND --help`). Flags win over --set, --set wins over this file.

[run]
# What `curate run` does, in this order (leave out what you do not want):
# import, dedupe, filter, bg, crop, tag, tags-filter, captions, layout, check, train
# stages = ["import", "dedupe", "filter", "tag", "tags-filter", "captions", "layout", "check"]
# Scrape folders or .zip files to import (relative to this workspace).
# sources = ["../raw"]
# The trigger word put first in every caption, and the class word after it.
# trigger = "sks"
# class_token = "woman"
# Where the Kohya dataset goes; for train also the base model and the output folder.
# dataset = "dataset"
# model = "../models/sd15"
# train_out = "lora"

[import]
# What to do with animated GIF/WebP: "first" keeps the first frame (with a warning), "skip".
# animated = "first"
# Images above this many pixels are refused as possible decompression bombs.
# max_pixels = 178956970
# Files larger than this (MiB) are refused.
# max_file_mb = 256
# Tag/caption sidecars larger than this (KiB) are not read; the image comes in without them.
# max_sidecar_kb = 1024
# Threads that read, hash and decode files (0 = one per CPU core).
# workers = 0
# Exit with status 1 if any file was skipped.
# strict = false

[dedupe]
# Perceptual hash: phash, dhash, whash, ahash or colorhash; hash_size 8 gives 64 bits.
# hash = "phash"
# hash_size = 8
# Largest Hamming distance that counts as a near duplicate (default 10 of 64 bits), or the
# same as a percentage with similarity (90 = at most 10% of the bits differ).
# threshold = 10
# similarity = 90
# Which image of a group stays: "largest", "first" (imported) or "newest" (imported).
# keep = "largest"
# Also match left-right mirrored copies.
# flip_invariant = false
# "draft" decodes JPEGs at reduced size (fast); "full" decodes them whole.
# decode = "draft"
# Confirm looser matches by feature matching (catches crops and watermarks).
# verify = true
# Hashing processes (0 = one per core).
# workers = 0

[tag]
# A folder with model.onnx + selected_tags.csv, or a Hugging Face repo id.
# model = "SmilingWolf/wd-swinv2-tagger-v3"
# threshold = 0.35             # general tags
# character_threshold = 0.85   # character tags: a weak guess teaches the wrong person
# mcut = false                 # per-image thresholds by MCut
# rating = "drop"              # drop | keep | first
# character_first = false
# max_tags = 40
# undesired = ["watermark", "signature"]
# replace = ["brown_hair=blonde_hair"]
# existing = "skip"            # images with a caption: skip | append | overwrite
# batch_size = 8
# providers = ["CUDAExecutionProvider", "CPUExecutionProvider"]

[filter]
# A tag of an exclusive group (hair colour...) in fewer than this share of the images with
# the group's majority tag is removed.
# min_share = 0.15
# prune_intrinsic = false      # drop hair/eye colour etc. that the trigger word carries
# trigger = "sks"
# blacklist = []
# min_confidence = ["general=0.4"]
# single_character = true
# rules = ["my_rules.toml"]

[quality]
# `curate filter`: images smaller than this (shorter side, pixels) are rejected.
# min_side = 256
# skip = ["text"]              # checks not to run

[layout]
# Repeats from a target number of steps (the guides' images x repeats x epochs / batch).
# target_steps = 1500
# epochs = 10
# batch_size = 2
# link = "copy"                # copy | hardlink | symlink

[train]
# `curate train` / the train stage: any option of `curate train --help`, sd-scripts' names.
# network = "lora"
# network_dim = 16
# max_train_steps = 1600
"""


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

    def run(self, stage: str, params: Any, *, derives: str | None = None, dry_run: bool = False) -> StageRun:
        """A stage's run: `with ws.run(stage, config) as run:` (see curate/stage_run.py). Hold
        `lock()` around it: the run reads records, then commits what it made."""
        from curate.stage_run import StageRun

        return StageRun(self, stage, params, derives=derives, dry_run=dry_run)

    def stored_file(self, sha256: str, ext: str) -> Path:
        return self.images_dir / sha256[:2] / f"{sha256}{ext}"

    def records(self, below: int | None = None) -> list[Record]:
        """Every image in the manifest as a Record, in import order. A record stands for the leaf
        of its image's derived chain (file, size, mode, format; the original's sha256 stays its
        key); `below` (a chain rank, manifest.derived.rank) stops the chain before that place,
        for the stage that makes it."""
        m = self.manifest
        origins: dict[str, list[Origin]] = {}
        for r in m.rows("SELECT * FROM origins WHERE image_sha256 IS NOT NULL ORDER BY id"):
            origins.setdefault(r["image_sha256"], []).append(
                Origin(r["source_path"], r["source_kind"], r["source_root"],
                       MappingProxyType(json.loads(r["metadata"])))
            )
        tags: dict[str, list[Tag]] = {}
        for r in m.rows("SELECT * FROM tags ORDER BY image_sha256, source, tag"):
            tags.setdefault(r["image_sha256"], []).append(
                Tag(r["tag"], r["category"], r["confidence"], r["source"])
            )
        captions = {r["image_sha256"]: r["text"] for r in m.rows(
            # the working caption ('curate', written by tag/filter/captions) wins over imported ones
            "SELECT image_sha256, text FROM captions ORDER BY source = 'curate', source DESC")}
        decisions: dict[str, list[Decision]] = {}
        current = f"SELECT * FROM decisions WHERE image_sha256 IS NOT NULL AND {CURRENT_DECISION}"
        for r in m.rows(current + " ORDER BY id"):
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
                caption=captions.get(r["sha256"]),
                decisions=tuple(decisions.get(r["sha256"], ())),
                extra=MappingProxyType(extra),
            )
            for r in m.rows("SELECT * FROM images ORDER BY rowid")
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
        atomic_write_text(config, DEFAULT_CONFIG)
