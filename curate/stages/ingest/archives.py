"""Archives as source trees: `open_source` gives the tree of one SRC argument, `open_archive`
the tree of a .zip or .tar found while walking (sources.ZipTree, TarTree here)."""

from __future__ import annotations

import os
import tarfile
import threading
from collections.abc import Iterator
from pathlib import Path, PurePosixPath

from curate.errors import CurateError
from curate.paths import display
from curate.stages.ingest.remote import RemoteFile
from curate.stages.ingest.sources import (
    ARCHIVE_EXTS,
    IMAGE_EXTS,
    Archive,
    Entry,
    FolderTree,
    Problem,
    Refused,
    SourceTree,
    TooLarge,
    ZipTree,
    classify_file,
    location,
)


class TarTree(SourceTree):
    """A tar archive read in place, as img2dataset's `webdataset` writer leaves it
    (img2dataset/writer.py WebDatasetSampleWriter: `{shard}.tar` of `key.jpg`/`key.txt`/`key.json`
    through webdataset's TarWriter). Members obey the zip rules: no names out of the archive, no
    links, no devices, the same size caps; `{shard}.parquet` beside it is its shard table."""

    kind = "tar"

    def __init__(self, path: Path | RemoteFile) -> None:
        super().__init__(location(path))
        self.path = path
        try:
            if isinstance(path, RemoteFile):  # a tar in a bucket: read by ranges, not downloaded
                self.tf = tarfile.open(fileobj=path.open(), mode="r:*")  # noqa: SIM115
            else:
                self.tf = tarfile.open(path, "r:*")  # noqa: SIM115 - kept open while the import reads it
            members = self.tf.getmembers()
        except (tarfile.TarError, OSError, EOFError) as exc:
            raise CurateError(f"{location(path)}: not a readable tar archive ({exc}); "
                              "re-download or re-create it") from exc
        self.members = {m.name.removeprefix("./"): m for m in members}
        for name in self.members:
            folder, _, base = name.rpartition("/")
            self.names.setdefault(folder, set()).add(base)
        self.lock = threading.Lock()  # one file object: reads must not interleave their seeks
        self.table = path.with_suffix(".parquet")

    def shown(self, relpath: str) -> str:
        return location(self.table) if relpath == self.table.name else f"{self.label}!/{relpath}"

    def entries(self) -> Iterator[Entry | Problem | Archive]:
        for name in sorted(self.members):
            member = self.members[name]
            if member.isdir() or name.startswith("__MACOSX/"):
                continue
            problem = _unsafe_tar_member(name, member)
            if problem:
                yield Problem(self.shown(name), problem)
                continue
            found = classify_file(self, name.rpartition("/")[2], name, self.shown(name), None)
            if found is not None:
                yield found

    def has(self, relpath: str) -> bool:
        return (relpath == self.table.name and self.table.is_file()) or super().has(relpath)

    def read(self, relpath: str, limit: int) -> bytes:
        if relpath == self.table.name:
            if isinstance(self.table, RemoteFile):
                return self.table.read(limit)
            return FolderTree(self.table.parent).read(relpath, limit)
        member = self.members[relpath]
        problem = _unsafe_tar_member(relpath, member)
        if problem:
            raise Refused(problem)
        if member.size > limit:
            raise TooLarge
        with self.lock:
            fh = self.tf.extractfile(member)
            data = fh.read(limit + 1) if fh is not None else b""
        if len(data) > limit:
            raise TooLarge
        return data

    def stamp(self, relpath: str) -> str:
        if relpath == self.table.name:
            if isinstance(self.table, RemoteFile):
                return self.table.stamp()
            st = os.stat(self.table)
            return f"{st.st_size}:{st.st_mtime_ns}"
        member = self.members[relpath]
        return f"{member.size}:{member.mtime}:{member.chksum}"

    def shard_table(self, relpath: str) -> str | None:
        return self.table.name if self.has(self.table.name) else None


def _unsafe_tar_member(name: str, member: tarfile.TarInfo) -> str | None:
    parts = PurePosixPath(name.replace("\\", "/")).parts
    if name.startswith(("/", "\\")) or ".." in parts or (parts and ":" in parts[0]):
        return f"unsafe path '{name}' in archive refused (it points outside the archive folder)"
    if member.issym() or member.islnk():
        return "link entry in archive refused: links inside archives are never followed"
    if not member.isreg():
        return "special entry (device, FIFO) in archive refused: only regular files are read"
    return None


def open_archive(path: Path | RemoteFile) -> SourceTree:
    """The tree of a .zip or .tar archive, on disk or at a URL (CurateError when it cannot be read)."""
    return TarTree(path) if path.suffix.lower() == ".tar" else ZipTree(path)


def open_source(src: Path, exclude: frozenset[str]) -> SourceTree:
    """The tree for one SRC argument: a folder, a .zip or .tar, or a single image file."""
    if not os.path.lexists(src):
        raise CurateError(f"{display(src)}: no such file or folder")
    if src.is_dir():
        return FolderTree(src, exclude)
    if src.is_file() and src.suffix.lower() in ARCHIVE_EXTS:
        return open_archive(src)
    if src.is_file() and src.suffix.lower() in IMAGE_EXTS:
        return FolderTree(src.parent, exclude, only=src.name)
    raise CurateError(f"{display(src)}: not a folder, an image, a .zip or a .tar archive")
