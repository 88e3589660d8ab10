"""Walking what the user points `curate import` at: folders (recursive), zip archives and tar
archives (img2dataset's `webdataset` shards: `00000.tar` holding `key.jpg`, `key.txt`, `key.json`).

Nothing is ever written, moved or extracted: files are read in place, archive members are read
into memory. Unsafe things (zip-slip names, symlinks that leave SRC, loops, links and devices
inside archives) are refused with a reason instead of followed.
"""

from __future__ import annotations

import os
import stat
import threading
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from curate.errors import CurateError
from curate.paths import display, special_file_reason  # display: stages import it from here
from curate.paths import read_regular as read_capped  # the name import and dedupe use

IMAGE_EXTS = frozenset(
    {".png", ".jpg", ".jpeg", ".jpe", ".jfif", ".webp", ".bmp", ".gif", ".tif", ".tiff", ".avif"}
)
SIDECAR_EXTS = frozenset({".json", ".txt", ".caption", ".parquet", ".toml", ".npz"})
ARCHIVE_EXTS = frozenset({".zip", ".tar"})
TEXT_SIDECAR_EXTS = (".txt", ".json")  # the ones a Hydrus exporter may give a suffix
METADATA_DIR = "metadata"  # gallery-dl's metadata post-processor with `"directory": "metadata"`
# Folders that hold tool state rather than images.
SKIP_DIRS = frozenset({".curate", ".git", ".hg", ".svn", "__MACOSX", "__pycache__"})


@dataclass(frozen=True)
class Entry:
    """A candidate image file inside a source tree."""

    tree: SourceTree
    relpath: str  # posix, relative to the tree root

    @property
    def shown(self) -> str:
        return self.tree.shown(self.relpath)


@dataclass(frozen=True)
class Problem:
    """A file that was not imported: `skipped` ones are counted as failures, `ignored` not."""

    subject: str
    reason: str
    severity: str = "skipped"


@dataclass(frozen=True)
class Archive:
    """A zip or tar archive found while walking a folder; the importer opens it as its own tree."""

    path: Path | Any  # a remote.RemoteFile when the folder is at a URL


class SourceTree:
    """A root the importer walks. Subclasses fill `names` (folder -> file names) while walking
    so that sidecar lookups need no extra system calls."""

    kind = "folder"

    def __init__(self, label: str) -> None:
        self.label = label
        self.names: dict[str, set[str]] = {}
        self._suffixed: dict[str, dict[str, list[str]]] = {}
        self._reported: set[str] = set()
        self._report_lock = threading.Lock()
        self.cache: dict[str, object] = {}  # per-tree parsed tables (img2dataset parquet)
        self.cache_lock = threading.Lock()

    def report_once(self, kind: str) -> bool:
        """True the first time `kind` of problem is reported for this tree: a problem every
        file of a scrape shares is said once, with what to do, not once per image."""
        with self._report_lock:
            if kind in self._reported:
                return False
            self._reported.add(kind)
            return True

    def suffixed(self, folder: str) -> dict[str, list[str]]:
        """Sidecars with an extra suffix, as Hydrus' exporters name them
        (`<file>.<suffix>.txt`, `<stem>.<suffix>.json`), keyed by what precedes the suffix.
        Built once per folder: a scan per image would be quadratic in a 40k-image folder."""
        index = self._suffixed.get(folder)
        if index is None:
            names = self.names.get(folder, set())
            stems = {n.rsplit(".", 1)[0] for n in names if os.path.splitext(n)[1].lower() in IMAGE_EXTS}
            index = {}
            for name in sorted(names):
                base, ext = os.path.splitext(name)
                prefix, dot, suffix = base.rpartition(".")
                if (ext.lower() in TEXT_SIDECAR_EXTS and dot and prefix and suffix
                        and f".{suffix.lower()}" not in IMAGE_EXTS and base not in stems):
                    index.setdefault(prefix, []).append(name)
            self._suffixed[folder] = index
        return index

    def shard_table(self, relpath: str) -> str | None:
        """The img2dataset parquet of the shard the image at `relpath` is in, if any."""
        return None

    @property
    def root_name(self) -> str:
        """The name of the folder the user pointed at (a Kohya `N_name` folder says repeats)."""
        return ""

    def shown(self, relpath: str) -> str:
        raise NotImplementedError

    def entries(self) -> Iterator[Entry | Problem | Archive]:
        raise NotImplementedError

    def read(self, relpath: str, limit: int) -> bytes:
        raise NotImplementedError

    def stamp(self, relpath: str) -> str:
        """Changes whenever the file's content may have changed (size, mtime or CRC)."""
        raise NotImplementedError

    def has(self, relpath: str) -> bool:
        folder, _, name = relpath.rpartition("/")
        return name in self.names.get(folder, ())


class TooLarge(Exception):
    pass


class Refused(Exception):
    """A sidecar the walk found but must not open (a symlink out of SRC, a FIFO): the reason."""


@dataclass(eq=False)
class FolderTree(SourceTree):
    root: Path
    exclude: frozenset[str] = field(default_factory=frozenset)  # real paths never walked
    only: str | None = None  # walk just this file name (SRC was one image)

    def __post_init__(self) -> None:
        super().__init__(display(self.root))
        self.real_root = os.path.realpath(self.root)
        # sidecar names (relpath -> reason) that are never opened; the image reports them
        self.refused: dict[str, str] = {}

    @property
    def root_name(self) -> str:
        return self.root.name

    def shown(self, relpath: str) -> str:
        return display(self.root / relpath) if relpath else self.label

    def _inside(self, real: str) -> bool:
        return real == self.real_root or real.startswith(self.real_root.rstrip(os.sep) + os.sep)

    def entries(self) -> Iterator[Entry | Problem | Archive]:
        stack = [""]
        while stack:
            rel_dir = stack.pop()
            yield from self._walk_dir(rel_dir, stack)

    def _walk_dir(self, rel_dir: str, stack: list[str]) -> Iterator[Entry | Problem | Archive]:
        folder = self.root / rel_dir if rel_dir else self.root
        try:
            with os.scandir(folder) as it:
                items = sorted(it, key=lambda e: e.name)
        except OSError as exc:
            yield Problem(display(folder), f"cannot list folder ({exc.strerror}): fix its permissions")
            return
        self.names[rel_dir] = {e.name for e in items}
        subdirs, found = [], []
        for item in items:  # the whole folder first: an image's sidecars must be known refused
            rel = f"{rel_dir}/{item.name}" if rel_dir else item.name
            if self.only is not None and item.name != self.only and not _is_sidecar_name(item.name):
                continue  # SRC was one image: its sidecars are still looked at (and refused)
            kind = self._classify(item, rel)
            if kind == "dir":
                subdirs.append(rel)
            elif kind is not None:
                found.append(kind)
        # gallery-dl's `"directory": "metadata"` sidecars are known (and refused) before the
        # images beside the folder look for theirs
        meta = f"{rel_dir}/{METADATA_DIR}" if rel_dir else METADATA_DIR
        if meta in subdirs:
            subdirs.remove(meta)
            yield from self._walk_dir(meta, stack)
        yield from found
        stack.extend(reversed(subdirs))  # depth-first in name order

    def _classify(self, item: os.DirEntry[str], rel: str) -> Entry | Problem | Archive | str | None:
        """What one folder entry is. Only regular files (or links to them inside SRC) are ever
        opened: a FIFO blocks its reader until a writer appears, a device may never end."""
        shown = display(item.path)
        if item.is_symlink():
            try:
                mode = os.stat(item.path).st_mode
            except OSError:
                return self._refuse(rel, item.name, shown,
                                    "broken symlink or symlink loop: fix or remove the link")
            real = os.path.realpath(item.path)
            if not self._inside(real):
                return self._refuse(rel, item.name, shown, f"symlink to {display(real)}, outside "
                                    "the source folder: not followed; copy the file in to import it")
            if stat.S_ISDIR(mode):
                return Problem(shown, "symlink to a folder inside the source: not followed "
                               "(its files are imported from their real path)", "ignored")
        elif item.is_dir(follow_symlinks=False):
            if item.name in SKIP_DIRS or os.path.realpath(item.path) in self.exclude:
                return None
            return "dir"
        elif item.is_file(follow_symlinks=False):  # from the folder listing: no system call
            mode = stat.S_IFREG
        else:
            try:
                mode = item.stat(follow_symlinks=False).st_mode
            except OSError as exc:
                return Problem(shown, f"cannot read ({exc.strerror}): check the file")
        reason = special_file_reason(mode)
        if reason is not None:
            return self._refuse(rel, item.name, shown, reason)
        return classify_file(self, item.name, rel, shown, Path(item.path))

    def _refuse(self, rel: str, name: str, shown: str, reason: str) -> Problem | None:
        """A file that must not be opened: skipped with its reason, or, when it is a sidecar
        (or a hidden file), remembered so that the image beside it says why it came in
        without it (read() raises Refused) instead of the sidecar counting as a skipped file."""
        if _is_sidecar_name(name):
            self.refused[rel] = reason
            return None
        return Problem(shown, reason)

    def read(self, relpath: str, limit: int) -> bytes:
        if relpath in self.refused:
            raise Refused(self.refused[relpath])
        data = read_capped(self.root / relpath, limit)
        if len(data) > limit:
            raise TooLarge
        return data

    def stamp(self, relpath: str) -> str:
        if relpath in self.refused:  # changes when the link is fixed or the file replaced
            return f"refused:{self.refused[relpath]}"
        st = os.stat(self.root / relpath)
        return f"{st.st_size}:{st.st_mtime_ns}"

    def shard_table(self, relpath: str) -> str | None:
        return files_shard_table(self, relpath)


def files_shard_table(tree: SourceTree, relpath: str) -> str | None:
    """img2dataset's `files` output: `00000/key.jpg` with `00000.parquet` beside the folder."""
    folder = relpath.rpartition("/")[0]
    parent, _, shard = folder.rpartition("/")
    name = f"{shard}.parquet"
    if shard.isdigit() and tree.has(f"{parent}/{name}" if parent else name):
        return f"{parent}/{name}" if parent else name
    return None


def _is_sidecar_name(name: str) -> bool:
    """Names the walk passes over quietly: sidecars (read beside their image) and hidden files."""
    ext = os.path.splitext(name)[1].lower()
    if ext in IMAGE_EXTS or ext in ARCHIVE_EXTS or name.startswith("._"):
        return False
    return ext in SIDECAR_EXTS or name.startswith(".")


def classify_file(
    tree: SourceTree, name: str, rel: str, shown: str, path: Path | Any | None
) -> Entry | Problem | Archive | None:
    """What the file `rel` is; `path` is where an archive can be opened from (a Path, or a
    remote.RemoteFile), None inside an archive."""
    ext = os.path.splitext(name)[1].lower()
    if name.startswith("._"):
        return Problem(shown, "macOS resource-fork file, not an image", "ignored")
    if ext in IMAGE_EXTS:
        return Entry(tree, rel)
    if ext in ARCHIVE_EXTS:
        if path is None:
            return Problem(shown, "archive inside an archive: extract it and import the "
                           "folder", "ignored")
        return Archive(path)
    if _is_sidecar_name(name):
        return None
    what = f"'{ext}' files" if ext else "files without an extension"
    return Problem(shown, f"not an image ({what} are not imported)", "ignored")


def location(path: Path | Any) -> str:
    """How a file is named to the user: its path, or its URL (remote.RemoteFile)."""
    return str(path.url) if hasattr(path, "url") else display(path)


def binary(path: Path | Any) -> Any:
    """What zipfile and tarfile open: the path itself, or a seekable fsspec file for a URL."""
    return path.open() if hasattr(path, "url") else path


class ZipTree(SourceTree):
    kind = "zip"

    def __init__(self, path: Path | Any) -> None:
        super().__init__(location(path))
        self.path = path
        try:
            self.zf = zipfile.ZipFile(binary(path))
        except (zipfile.BadZipFile, OSError) as exc:
            raise CurateError(f"{location(path)}: not a readable zip archive ({exc}); "
                              "re-download or re-create it") from exc
        self.infos = {i.filename: i for i in self.zf.infolist()}
        for name in self.infos:
            folder, _, base = name.rpartition("/")
            self.names.setdefault(folder, set()).add(base)

    def shown(self, relpath: str) -> str:
        return f"{self.label}!/{relpath}"

    def entries(self) -> Iterator[Entry | Problem | Archive]:
        for name in sorted(self.infos):
            info = self.infos[name]
            if info.is_dir() or name.startswith("__MACOSX/"):
                continue
            problem = _unsafe_member(info)
            if problem:
                yield Problem(self.shown(name), problem)
                continue
            base = name.rpartition("/")[2]
            found = classify_file(self, base, name, self.shown(name), None)
            if found is not None:
                yield found

    def read(self, relpath: str, limit: int) -> bytes:
        info = self.infos[relpath]
        if info.file_size > limit:
            raise TooLarge
        with self.zf.open(info) as fh:
            data = fh.read(limit + 1)  # the header's size can lie (zip bombs)
        if len(data) > limit:
            raise TooLarge
        return data

    def stamp(self, relpath: str) -> str:
        info = self.infos[relpath]
        return f"{info.file_size}:{info.CRC:08x}"


def _unsafe_member(info: zipfile.ZipInfo) -> str | None:
    name = info.filename
    parts = PurePosixPath(name.replace("\\", "/")).parts
    if name.startswith(("/", "\\")) or ".." in parts or (parts and ":" in parts[0]):
        return f"unsafe path '{name}' in archive refused (it points outside the archive folder)"
    if stat.S_ISLNK(info.external_attr >> 16):
        return "symlink entry in archive refused: symlinks inside archives are never followed"
    if info.flag_bits & 0x1:
        return "encrypted entry: extract the archive with its password, then import the folder"
    return None
