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
from curate.config import CONFIG_NAME
from curate.errors import CurateError, WorkspaceBusy
from curate.manifest import CURRENT_DECISION, USER_CAPTION, Manifest
from curate.record import Decision, Origin, Record, Tag, Text

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
        atomic_write_text(config, DEFAULT_CONFIG)
