"""The per-image work of an import, as a pure function: read one file, decode and normalise it.

`load(job)` takes a picklable `LoadJob` (where the file is, and the import's limits) and gives a
picklable `Loaded` (the normalised image with its bytes and sha256, or the one-line reason it
was refused). It reads nothing but that file and writes nothing, so any executor can run it:
this process's threads, or a Ray worker on another machine that sees the same path (the
archive's or the folder's). Recording the result (sidecars, the stored copy, the manifest rows)
is the driver's part (run.py).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from curate.paths import is_url
from curate.stages.ingest.archives import open_archive
from curate.stages.ingest.decode import Normalised, Rejected, normalise
from curate.stages.ingest.remote import RemoteFile, UrlTree, remote_file
from curate.stages.ingest.sources import FolderTree, SourceTree, TooLarge


@dataclass(frozen=True)
class LoadJob:
    kind: str  # the tree's kind: "folder", "url", "zip" or "tar"
    container: str  # the tree's root or archive: a path or URL every worker can read
    relpath: str  # the file inside it
    max_file_mb: int
    max_pixels: int
    animated: str


@dataclass
class Loaded:
    image: Normalised | None = None
    reason: str | None = None


_trees: dict[tuple[str, str], SourceTree] = {}  # the driver's open trees; a worker opens its own
_trees_lock = threading.Lock()


def register(tree: SourceTree) -> None:
    """Let `load` in this process read through a tree already open (no second archive index)."""
    with _trees_lock:
        _trees[(tree.kind, container(tree))] = tree


def container(tree: SourceTree) -> str:
    """Where a worker finds the tree: a folder or archive path, or its URL."""
    if isinstance(tree, UrlTree):
        return tree.url
    where = getattr(tree, "root", None) or tree.path
    return where.url if isinstance(where, RemoteFile) else str(Path(where).absolute())


def _open(kind: str, where: str) -> SourceTree:
    if kind == "url":
        return UrlTree(where)
    if kind == "folder":
        return FolderTree(Path(where))
    return open_archive(remote_file(where) if is_url(where) else Path(where))


def _tree(job: LoadJob) -> SourceTree:
    key = (job.kind, job.container)
    with _trees_lock:
        tree = _trees.get(key)
        if tree is None:  # a worker that has not opened it yet: once per process
            tree = _trees[key] = _open(job.kind, job.container)
    return tree


def unlimited_pil() -> None:
    """Pillow's own pixel limit off: `normalise` checks import.max_pixels itself (a worker's setup)."""
    Image.MAX_IMAGE_PIXELS = None


def load(job: LoadJob) -> Loaded:
    """The file's normalised image, or why it cannot become one (never raises for a bad file)."""
    try:
        data = _tree(job).read(job.relpath, job.max_file_mb * 1024 * 1024)
        return Loaded(normalise(data, max_pixels=job.max_pixels, animated=job.animated))
    except TooLarge:
        return Loaded(reason=f"file is over the {job.max_file_mb} MiB limit: raise import.max_file_mb "
                      "if it is really an image")
    except PermissionError:
        return Loaded(reason="cannot read (permission denied): fix the file's permissions, e.g. chmod u+r")
    except OSError as exc:
        return Loaded(reason=f"cannot read ({exc.strerror or exc}): check the file")
    except Rejected as exc:
        return Loaded(reason=str(exc))
