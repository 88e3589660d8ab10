"""Sources named by an fsspec URL: `s3://bucket/scrape`, `gs://...`, `https://host/shards/00000.tar`,
`file:///mnt/nfs/raw`, or any protocol an installed fsspec backend provides.

A URL source is walked and read like a folder (`UrlTree`), and a .zip or .tar at a URL (or found
under one) is read in place through a seekable fsspec file, so img2dataset's shards in a bucket
import without a download step. Only the sources may be URLs: the workspace holds SQLite and
the stored copies, so it stays on a local or shared file system.

Why fsspec: it is the one interface every storage backend of the Python data stack implements
(s3fs, gcsfs, adlfs, HTTP, SFTP...), huggingface_hub already depends on it, and Ray Data reads
through the same backends, so a URL that works here works on every Ray worker that has the
backend installed and its credentials (the backends read them from the environment, as the
cloud CLIs do). Nothing is pickled or cached on disk: a worker opens the URL itself.
"""

from __future__ import annotations

import errno
import os
import posixpath
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import IO, Any
from urllib.parse import quote, unquote

from curate.errors import CurateError
from curate.stages.ingest.sources import (
    ARCHIVE_EXTS,
    IMAGE_EXTS,
    SKIP_DIRS,
    Archive,
    Entry,
    Problem,
    SourceTree,
    TooLarge,
    classify_file,
    files_shard_table,
)

# Largest archive copied to a temporary file when its server ignores Range requests.
SPOOL_MAX = 8 << 30
# The fields backends use for "this object changed" (s3fs, gcsfs, adlfs, local, HTTP).
_VERSION_FIELDS = ("ETag", "etag", "md5Hash", "content_md5", "mtime", "LastModified", "updated",
                   "last_modified", "Last-Modified", "generation")


def filesystem(url: str) -> tuple[Any, str]:
    """(fsspec file system, path inside it) for `url`, or a CurateError saying what to install."""
    try:
        import fsspec
    except ImportError as exc:  # huggingface_hub requires it, but curate's core does not
        raise CurateError(f"{url}: reading URLs needs fsspec: pip install fsspec") from exc
    try:
        return fsspec.core.url_to_fs(url)
    except ImportError as exc:  # fsspec's message names the package ("Install s3fs to access S3")
        raise CurateError(f"{url}: {_first_line(exc)}; install it on every machine that reads "
                          "the source (Ray workers too)") from exc
    except (ValueError, OSError) as exc:
        raise CurateError(f"{url}: not a URL fsspec can open ({_first_line(exc)})") from exc


def _read_upto(fh: IO[bytes], n: int) -> bytes:
    """Up to n bytes: a stream's read gives what has arrived, not all that was asked for."""
    parts, left = [], n
    while left > 0:
        part = fh.read(min(left, 1 << 20))
        if not part:
            break
        parts.append(part)
        left -= len(part)
    return b"".join(parts)


@contextmanager
def backend_errors() -> Iterator[None]:
    """A backend's own exceptions (aiohttp's HTTP statuses, botocore's auth errors) as OSError,
    which the import turns into a one-line reason for that file: the run goes on."""
    try:
        yield
    except (OSError, TooLarge):
        raise
    except Exception as exc:
        raise OSError(f"{type(exc).__name__}: {_first_line(exc)}") from exc


def _protocols(fs: Any) -> tuple[str, ...]:
    return fs.protocol if isinstance(fs.protocol, tuple) else (fs.protocol,)


def is_http(fs: Any) -> bool:
    """fsspec's HTTP backend: names percent-encoded in listings, Range not always answered."""
    return bool({"http", "https"} & set(_protocols(fs)))


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]


@dataclass(frozen=True)
class RemoteFile:
    """One file at a URL: an archive, or the shard table beside it. Stands where a local
    archive's Path stands (name, suffix, with_suffix, is_file) and opens through fsspec."""

    fs: Any
    path: str

    @property
    def url(self) -> str:
        return str(self.fs.unstrip_protocol(self.path))

    @property
    def name(self) -> str:
        return posixpath.basename(self.path)

    @property
    def suffix(self) -> str:
        return posixpath.splitext(self.path)[1]

    def with_suffix(self, suffix: str) -> RemoteFile:
        return RemoteFile(self.fs, posixpath.splitext(self.path)[0] + suffix)

    def is_file(self) -> bool:
        try:
            return bool(self.fs.isfile(self.path))
        except OSError:
            return False

    def open(self) -> IO[bytes]:
        """A seekable binary file: fsspec fetches the byte ranges zipfile and tarfile seek to,
        so a shard in a bucket is never downloaded whole. A web server that ignores Range
        (`python -m http.server`) gets the archive copied to a temporary file instead."""
        with backend_errors():
            return self._open()

    def _open(self) -> IO[bytes]:
        fh = self.fs.open(self.path, "rb")
        try:
            size = fh.seek(0, os.SEEK_END)
            if size:
                fh.seek(size - 1)
                fh.read(1)  # a range read: raises ValueError where the server ignores Range
            fh.seek(0)
            return fh  # type: ignore[no-any-return]
        except ValueError:
            fh.close()
        spool = tempfile.SpooledTemporaryFile(max_size=64 << 20)  # noqa: SIM115 - the caller closes it
        with self._stream() as stream:
            for block in iter(lambda: stream.read(1 << 20), b""):
                if spool.tell() + len(block) > SPOOL_MAX:  # an endless answer must not fill the disk
                    spool.close()
                    raise OSError(f"over {SPOOL_MAX / 2**30:g} GiB from a server without byte ranges: "
                                  "download the archive and import the file")
                spool.write(block)
        spool.seek(0)
        return spool  # type: ignore[return-value]

    def _stream(self) -> IO[bytes]:
        """The object read once from its start (HTTP: no Range requests, which not every
        server supports, and no size, which not every listing gives)."""
        if is_http(self.fs):
            return self.fs.open(self.path, "rb", block_size=0)  # type: ignore[no-any-return]
        return self.fs.open(self.path, "rb")  # type: ignore[no-any-return]

    def read(self, limit: int) -> bytes:
        with backend_errors(), self._stream() as fh:
            data = _read_upto(fh, limit + 1)  # a listed size can be missing (HTTP) or stale
        if len(data) > limit:
            raise TooLarge
        return data  # type: ignore[no-any-return]

    def stamp(self) -> str:
        with backend_errors():
            return version_stamp(self.fs.info(self.path))


def remote_file(url: str) -> RemoteFile:
    fs, path = filesystem(url)
    return RemoteFile(fs, path)


def version_stamp(info: dict[str, Any]) -> str:
    """Size and whatever version field the backend reports: changes when the object does."""
    version = next((str(info[k]) for k in _VERSION_FIELDS if info.get(k) not in (None, "")), "")
    return f"{info.get('size')}:{version}"


class UrlTree(SourceTree):
    """A folder-like prefix at a URL (a bucket prefix, an HTTP directory listing, a local
    `file://` folder), walked with one recursive listing and read object by object.

    A Ray worker builds its own from the URL alone and reads without listing anything.
    """

    kind = "url"

    def __init__(self, url: str, *, exclude: frozenset[str] = frozenset(), only: str | None = None,
                 ) -> None:
        self.fs, root = filesystem(url)
        self.root = root.rstrip("/") or root
        self.url = str(self.fs.unstrip_protocol(self.root))
        super().__init__(self.url)
        # HTTP listings give names percent-encoded (`10_sks%20cat/`): the tree's names are the
        # decoded ones (a Kohya folder's repeats and class words), quoted again to fetch
        self.quoted = is_http(self.fs)
        # real paths of a local workspace inside a file:// source, never walked
        self.exclude = exclude if "file" in _protocols(self.fs) else frozenset()
        self.only = only
        self.infos: dict[str, dict[str, Any]] = {}

    @property
    def root_name(self) -> str:
        return posixpath.basename(self.root)

    def full(self, relpath: str) -> str:
        """The backend's path of the file at `relpath` (no listing needed: a Ray worker reads)."""
        if self.quoted:
            relpath = quote(relpath)
        return f"{self.root}/{relpath}" if relpath else self.root

    def shown(self, relpath: str) -> str:
        return f"{self.url}/{relpath}" if relpath else self.label

    def entries(self) -> Iterator[Entry | Problem | Archive]:
        try:
            if self.only is None:
                listing = self.fs.find(self.root, detail=True, withdirs=False)
            else:  # one image: its folder's own files (sidecars), not the whole prefix below
                listing = {i["name"]: i for i in self.fs.ls(self.root, detail=True)}
        except (OSError, ValueError) as exc:  # aiohttp's errors are OSErrors, botocore's too
            yield Problem(self.label, f"cannot list ({_first_line(exc)}): check the URL and "
                          "that this machine can reach it")
            return
        found: list[tuple[str, str]] = []
        for path, info in listing.items():
            if info.get("type", "file") != "file":
                continue
            rel = self._relative(str(path))
            if rel is None:
                continue
            folder, _, name = rel.rpartition("/")
            self.names.setdefault(folder, set()).add(name)
            self.infos[rel] = info
            found.append((rel, name))
        for rel, name in sorted(found):
            if self.only is not None and (name != self.only or "/" in rel):
                continue
            where = RemoteFile(self.fs, str(self.infos[rel]["name"]))  # if it is an archive
            item = classify_file(self, name, rel, self.shown(rel), where)
            if item is not None:
                yield item

    def _relative(self, path: str) -> str | None:
        """`path` relative to the root, or None for what the walk leaves out (tool state
        folders, a workspace inside the source)."""
        path = path.rstrip("/")
        if not path.startswith(self.root + "/"):
            return None
        rel = path[len(self.root) + 1:]
        if self.quoted:
            rel = unquote(rel)
        if any(part in SKIP_DIRS for part in rel.split("/")[:-1]):
            return None
        if self.exclude and any(os.path.realpath(path).startswith(e.rstrip(os.sep) + os.sep)
                                for e in self.exclude):
            return None
        return rel

    def read(self, relpath: str, limit: int) -> bytes:
        size = self.infos.get(relpath, {}).get("size")
        if isinstance(size, int) and size > limit:
            raise TooLarge
        return RemoteFile(self.fs, self.full(relpath)).read(limit)

    def stamp(self, relpath: str) -> str:
        info = self.infos.get(relpath)
        if info is None or info.get("size") is None:  # HTTP listings carry no size: ask once
            with backend_errors():
                try:
                    info = {"name": self.full(relpath), **self.fs.info(self.full(relpath))}
                except FileNotFoundError as exc:  # fsspec's HTTP backend says this for any status
                    raise FileNotFoundError(errno.ENOENT, "the server has no such file or answered "
                                            "with an error") from exc
            self.infos[relpath] = info
        return version_stamp(info)

    def shard_table(self, relpath: str) -> str | None:
        return files_shard_table(self, relpath)


def open_url(url: str, exclude: frozenset[str]) -> SourceTree:
    """The tree of one URL SRC: a folder-like prefix, an archive, or a single image."""
    from curate.stages.ingest.archives import open_archive  # archives reads RemoteFile: import late

    fs, path = filesystem(url)
    suffix = posixpath.splitext(path.rstrip("/"))[1].lower()
    try:
        # an object store has no folders and HTTP calls anything a file: ask by what the name says
        if suffix in ARCHIVE_EXTS | IMAGE_EXTS and fs.isfile(path):
            if suffix in ARCHIVE_EXTS:
                return open_archive(RemoteFile(fs, path))
            parent = str(fs.unstrip_protocol(posixpath.dirname(path.rstrip("/"))))
            return UrlTree(parent, exclude=exclude, only=posixpath.basename(path))
        if fs.isdir(path):
            return UrlTree(url, exclude=exclude)
        exists = fs.exists(path)
    except (OSError, ValueError) as exc:
        raise CurateError(f"{url}: cannot reach it ({_first_line(exc)}): check the URL, the "
                          "network and the credentials") from exc
    if exists:
        raise CurateError(f"{url}: not a folder, an image, a .zip or a .tar archive")
    raise CurateError(f"{url}: no such file or folder")
