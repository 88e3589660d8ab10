"""The folder rules: which files sd-scripts reads from a dataset, and which it silently skips
(misnamed folders, subfolders, images outside any subset, extensions it does not match, two
images sharing one caption file).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from curate.check.dataset import (
    OTHER_IMAGE_EXTS,
    PRUNE,
    SD_EXTS,
    Dataset,
    Subset,
    images_in,
)
from curate.check.rules import Finding, make, shown
from curate.kohya import PLUGIN_IMAGE_EXTS, plugin_note, readable_plugin_exts, sd_image
from curate.paths import special_file_reason


@dataclass
class Listing:
    """One image folder as sd-scripts globs it."""

    images: list[Path] = field(default_factory=list)  # read by sd-scripts, in name order
    names: set[str] = field(default_factory=set)  # every file name in the folder
    findings: list[Finding] = field(default_factory=list)


def folder_rules(dataset: Dataset) -> list[Finding]:
    """Misnamed image folders (folder mode) and images beside the subsets that none reads."""
    found = []
    for folder in dataset.bad_folders:
        images = list(images_in(folder, recursive=True))
        found.append(make("folder-name", folder, None, images, folder=folder.name, count=len(images),
                          name=folder.name.split("_", 1)[-1] or "name"))
    subset_dirs = [s.image_dir for s in dataset.subsets]
    if dataset.config_file is None:
        fix = "move {it} into an N_name folder (e.g. 10_name), or out of the dataset"
    else:
        fix = "add a [[datasets.subsets]] image_dir for {it} to dataset.toml, or move {it} out of the dataset"
    for parent in dataset.parents:
        for image in images_in(parent):
            found.append(make("image-unused", image, None, subject=f"image {image.name}", them="it",
                              fix=fix.format(it="it")))
        for child in _children(parent):
            if child in dataset.bad_folders or any(child == d or child in d.parents for d in subset_dirs):
                continue
            images = list(images_in(child, recursive=True))
            if images:
                found.append(make("image-unused", child, None, images, them="them", fix=fix.format(it="them"),
                                  subject=f"folder {child.name} ({len(images)} images)"))
    return found


def _children(folder: Path) -> list[Path]:
    try:
        with os.scandir(folder) as it:
            return sorted(Path(e.path) for e in it
                          if e.is_dir() and not e.name.startswith(".") and e.name not in PRUNE)
    except OSError:
        return []


def check_subset(subset: Subset, subset_dirs: set[Path]) -> Listing:
    """The images sd-scripts reads from `subset`, and findings about what it would skip."""
    listing = Listing()
    try:
        with os.scandir(subset.image_dir) as it:
            entries = sorted(it, key=lambda e: e.name)
    except OSError as exc:
        listing.findings.append(make("dataset-config", subset.image_dir, None, config=subset.image_dir.name,
                                     problem=f"cannot list the folder ({exc.strerror})",
                                     fix="fix its permissions"))
        return listing
    for entry in entries:
        if entry.name.startswith("."):  # sd-scripts' glob("*") skips hidden files too
            continue
        path = Path(entry.path)
        if entry.is_dir():
            if entry.name not in PRUNE and path not in subset_dirs:
                _nested(listing, path, subset, subset_dirs)
            continue
        _file(listing, entry, path)
    listing.findings += _shared_stems(listing.images)
    return listing


def _file(listing: Listing, entry: os.DirEntry[str], path: Path) -> None:
    """One file of an image folder: read as an image, or a finding about why sd-scripts will not."""
    try:
        special = special_file_reason(entry.stat().st_mode)  # symlinks followed, as sd-scripts does
    except OSError:
        special = None  # a broken link: sd-scripts globs it and fails to open it; so does the scan
    stem, ext = os.path.splitext(entry.name)
    low = ext.lower()
    image_like = low in SD_EXTS or low in OTHER_IMAGE_EXTS
    if special is not None and image_like:  # never opened: a FIFO would block the check forever
        listing.findings.append(make("image-unreadable", path, image=entry.name, reason=special))
        return
    listing.names.add(entry.name)  # a special caption file is reported by the caption that names it
    if special is not None:
        return
    if sd_image(entry.name):
        listing.images.append(path)
    elif low in SD_EXTS:
        listing.findings.append(make("extension-case", path, image=entry.name, ext=ext, fixed=stem + low))
    elif low in PLUGIN_IMAGE_EXTS and ext in (low, low.upper()):
        listing.findings.append(make("extension-plugin", path, image=entry.name, ext=ext,
                                     plugin=plugin_note(low)))
        if low in readable_plugin_exts():  # checked like the others when Pillow here reads it
            listing.images.append(path)
    elif low in OTHER_IMAGE_EXTS:
        listing.findings.append(make("extension-unsupported", path, image=entry.name, ext=ext))


def _nested(listing: Listing, folder: Path, subset: Subset, subset_dirs: set[Path]) -> None:
    # images of another subset whose image_dir lies inside this subfolder are read, by it
    inner = [d for d in subset_dirs if folder == d or folder in d.parents]
    images = [p for p in images_in(folder, recursive=True) if not any(d in p.parents for d in inner)]
    if images:
        listing.findings.append(make("nested-folder", folder, None, images, count=len(images),
                                     folder=folder.name, parent=shown(subset.image_dir)))


def _shared_stems(images: list[Path]) -> list[Finding]:
    """Images whose stems differ only by extension (or case: Windows and macOS users share
    datasets) read one caption file."""
    first: dict[str, Path] = {}
    found = []
    for image in images:
        stem = os.path.splitext(image.name)[0]
        key = stem.casefold()
        if key in first:
            found.append(make("stem-shared", image, None, (first[key],), image=image.name,
                              other=first[key].name, stem=stem))
        else:
            first[key] = image
    return found
