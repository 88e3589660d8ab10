"""A real static file server for tests, on 127.0.0.1 in a thread: a folder served over HTTP as
nginx serves one (`autoindex on`: directory listings with links, `Range: bytes=a-b` answered
206 with `Accept-Ranges: bytes`) or as `python -m http.server` does (listings, no ranges).

fsspec's HTTP backend reads such a server like a bucket: it lists by following the index pages'
links and reads objects by byte ranges. Paths can be scripted to fail (`fail["a/b.jpg"] = 500`)
and every request is logged, so a test can tell what was fetched and how.

    with FileServer(folder, ranges=True) as server:
        server.url                  # http://127.0.0.1:PORT
        server.fail["bad.jpg"] = 503
        server.requests             # [(method, path, range header or None), ...]
"""

from __future__ import annotations

import functools
import os
import re
import threading
from http import HTTPStatus
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

_RANGE = re.compile(r"^bytes=(\d*)-(\d*)$")


class _Handler(SimpleHTTPRequestHandler):
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:
        pass  # quiet test output

    def send_head(self) -> Any:
        rel = unquote(urlsplit(self.path).path).lstrip("/")
        self.server.log.append((self.command, rel, self.headers.get("Range")))
        status = self.server.fail.get(rel)
        if status is not None:
            self.send_error(status)
            return None
        wanted = self.headers.get("Range")
        path = Path(self.translate_path(self.path))
        if not (self.server.ranges and wanted and path.is_file()):
            return super().send_head()
        return self._send_range(path, wanted)

    def _send_range(self, path: Path, wanted: str) -> Any:
        size = path.stat().st_size
        match = _RANGE.match(wanted.strip())
        if match is None or (not match.group(1) and not match.group(2)):
            self.send_error(HTTPStatus.REQUESTED_RANGE_NOT_SATISFIABLE)
            return None
        if match.group(1):
            start = int(match.group(1))
            end = min(int(match.group(2)), size - 1) if match.group(2) else size - 1
        else:  # bytes=-N: the last N bytes
            start, end = max(0, size - int(match.group(2))), size - 1
        if start >= size or end < start:
            self.send_response(HTTPStatus.REQUESTED_RANGE_NOT_SATISFIABLE)
            self.send_header("Content-Range", f"bytes */{size}")
            self.end_headers()
            return None
        fh = path.open("rb")
        fh.seek(start)
        self.send_response(HTTPStatus.PARTIAL_CONTENT)
        self.send_header("Content-Type", self.guess_type(str(path)))
        self.send_header("Content-Range", f"bytes {start}-{end}/{size}")
        self.send_header("Content-Length", str(end - start + 1))
        self.send_header("Accept-Ranges", "bytes")
        self.send_header("Last-Modified", self.date_time_string(int(path.stat().st_mtime)))
        self.end_headers()
        return _Slice(fh, end - start + 1)

    def end_headers(self) -> None:
        if self.server.ranges:
            self.send_header("Accept-Ranges", "bytes")
        super().end_headers()


class _Slice:
    """The part of a file a range asks for, as copyfile reads it."""

    def __init__(self, fh: Any, length: int) -> None:
        self.fh, self.left = fh, length

    def read(self, n: int = -1) -> bytes:
        n = self.left if n < 0 else min(n, self.left)
        data = self.fh.read(n)
        self.left -= len(data)
        return data  # type: ignore[no-any-return]

    def close(self) -> None:
        self.fh.close()


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    ranges: bool
    fail: dict[str, int]
    log: list[tuple[str, str, str | None]]


class FileServer:
    def __init__(self, folder: Path, *, ranges: bool = True) -> None:
        handler = functools.partial(_Handler, directory=os.fspath(folder))
        self._server = _Server(("127.0.0.1", 0), handler)
        self._server.ranges, self._server.fail, self._server.log = ranges, {}, []
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    @property
    def ranges(self) -> bool:
        return self._server.ranges

    @property
    def fail(self) -> dict[str, int]:
        return self._server.fail

    @property
    def requests(self) -> list[tuple[str, str, str | None]]:
        return self._server.log

    def __enter__(self) -> FileServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()
