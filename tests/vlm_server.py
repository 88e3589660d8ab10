"""A real OpenAI-compatible chat-completions server for tests, on 127.0.0.1 in a thread.

It speaks `POST /v1/chat/completions` and `GET /v1/models` as vLLM or llama.cpp's server do,
checks each request's shape (model, a user message with a text part and an image_url part
whose data URL decodes to an image, max_tokens, temperature) and answers with a caption made
from the image (its size and mean colour) and the prompt, so a test can tell which image and
prompt an answer belongs to. Requests can be scripted to misbehave, one behaviour per request
in arrival order:

    ok          the caption (the default once the script is used up)
    slow        the caption after `slow_s` (beyond a client's timeout)
    429         Too Many Requests, with `Retry-After: retry_after` when that is set
    500, 503    a server error
    400, 401, 404  a refusal
    malformed   200 with a body that is not JSON
    nocontent   200 with JSON that has no choices[0].message.content
    drop        200 headers and half the body, then the socket closed
    hangup      the socket closed without a byte of answer

    with ChatServer(model="test-vlm") as server:
        server.script("500", "drop")
        ServerCaptioner(server.api_base, "test-vlm").caption(...)
        server.requests, server.max_active, server.problems
"""

from __future__ import annotations

import base64
import contextlib
import io
import json
import socket
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from PIL import Image, ImageStat

CHAT = "/v1/chat/completions"
MODELS = "/v1/models"
SAFETY_S = 30.0  # waits in the server end after this (a test bug must not hang the run)


@dataclass
class Seen:
    """One request as the server received it."""

    path: str
    headers: dict[str, str]
    behaviour: str
    at: float  # time.monotonic() when its body had been read
    body: dict[str, Any] | None = None
    image_format: str | None = None  # "jpeg" | "png"
    image_size: tuple[int, int] | None = None
    prompt: str | None = None


@dataclass
class State:
    model: str
    key: str | None
    slow_s: float
    retry_after: str | None
    echo_auth: bool
    lock: threading.Lock = field(default_factory=threading.Lock)
    changed: threading.Condition = field(init=False)
    stopping: threading.Event = field(default_factory=threading.Event)
    script: deque[str] = field(default_factory=deque)
    requests: list[Seen] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    active: int = 0
    max_active: int = 0
    hold: int = 0  # a chat request waits until this many are in flight (0: no wait)
    gate: int = 0  # bumped each time `hold` requests are in flight: the waiting ones go on

    def __post_init__(self) -> None:
        self.changed = threading.Condition(self.lock)


def caption_for(image: Image.Image, prompt: str) -> str:
    """The deterministic answer: what the test can predict from the image it sent."""
    r, g, b = (round(v) for v in ImageStat.Stat(image.convert("RGB")).mean[:3])
    return f"a {image.width}x{image.height} picture, mean colour #{r:02x}{g:02x}{b:02x}; asked: {prompt}"


class ChatServer:
    """The server; a context manager that starts it on a free port and stops it."""

    def __init__(self, *, model: str = "test-vlm", key: str | None = None, slow_s: float = 2.0,
                 retry_after: str | None = None, echo_auth: bool = False) -> None:
        self.state = State(model, key, slow_s, retry_after, echo_auth)
        state = self.state

        class Handler(_Handler):
            shared = state

        self.httpd = _QuietServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        # a short poll interval: shutdown() waits up to one interval, and each test starts a server
        self.thread = threading.Thread(target=self.httpd.serve_forever, args=(0.02,), name="test-chat-server",
                                       daemon=True)

    @property
    def api_base(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"

    def __enter__(self) -> ChatServer:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.state.stopping.set()
        with self.state.lock:
            self.state.changed.notify_all()
        self.httpd.shutdown()
        self.httpd.server_close()

    def script(self, *behaviours: str) -> None:
        with self.state.lock:
            self.state.script.extend(behaviours)

    def hold_until(self, count: int) -> None:
        """Each chat request waits until `count` are in flight: a client allowed N at once
        reaches exactly N, whatever the timing."""
        with self.state.lock:
            self.state.hold = count

    def wait_idle(self) -> None:
        """Until no request is being handled (the counts below are final for what was sent)."""
        with self.state.lock:
            self.state.changed.wait_for(lambda: self.state.active == 0, timeout=SAFETY_S)

    @property
    def requests(self) -> list[Seen]:
        with self.state.lock:
            return list(self.state.requests)

    @property
    def chat_requests(self) -> list[Seen]:
        return [seen for seen in self.requests if seen.path == CHAT]

    @property
    def max_active(self) -> int:
        return self.state.max_active

    @property
    def problems(self) -> list[str]:
        with self.state.lock:
            return list(self.state.problems)


class _QuietServer(ThreadingHTTPServer):
    def handle_error(self, request: Any, client_address: Any) -> None:
        """A client that hung up (a closed run, a timeout) is expected here, not a traceback."""


class _Handler(BaseHTTPRequestHandler):
    shared: State
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:  # keep pytest's output clean
        pass

    def do_GET(self) -> None:
        seen = self._seen("ok")
        if self.path != MODELS:
            return self._json(404, {"error": {"message": f"no route {self.path}"}})
        if not self._authorised(seen):
            return None
        return self._json(200, {"object": "list", "data": [{"id": self.shared.model, "object": "model"}]})

    def do_POST(self) -> None:
        state = self.shared
        with state.lock:
            behaviour = state.script.popleft() if state.script and self.path == CHAT else "ok"
            gate = state.gate
            state.active += 1
            state.max_active = max(state.max_active, state.active)
            if state.active >= state.hold:  # opens the gate for every request waiting now
                state.gate += 1
            state.changed.notify_all()
        self._counted = True
        try:
            self._chat(behaviour, gate)
        finally:
            self._release()

    def _release(self) -> None:
        """The request stops counting as in flight when its answer starts: the client can send
        its next one only after that, so the server never counts more than the client sends."""
        if getattr(self, "_counted", False):
            self._counted = False
            with self.shared.lock:
                self.shared.active -= 1
                self.shared.changed.notify_all()

    def _chat(self, behaviour: str, gate: int) -> None:
        state = self.shared
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length)
        seen = self._seen(behaviour)
        if self.path != CHAT:
            return self._json(404, {"error": {"message": f"no route {self.path}"}})
        with state.lock:
            state.changed.wait_for(lambda: state.gate != gate or state.stopping.is_set(), timeout=SAFETY_S)
        if not self._authorised(seen):
            return None
        problem, image = self._check(raw, seen)
        if problem:
            with state.lock:
                state.problems.append(problem)
            return self._json(400, {"error": {"message": problem, "type": "invalid_request_error"}})
        return self._behave(behaviour, image, seen.prompt or "")

    def _behave(self, behaviour: str, image: Image.Image, prompt: str) -> None:
        answer = {"id": "chatcmpl-test", "object": "chat.completion", "model": self.shared.model,
                  "choices": [{"index": 0, "finish_reason": "stop",
                               "message": {"role": "assistant", "content": caption_for(image, prompt)}}]}
        if behaviour == "slow":
            self.shared.stopping.wait(self.shared.slow_s)
        if behaviour in ("ok", "slow"):
            return self._json(200, answer)
        if behaviour == "429":
            extra = {"Retry-After": self.shared.retry_after} if self.shared.retry_after else {}
            return self._json(429, {"error": {"message": "slow down"}}, extra)
        if behaviour in ("400", "401", "404", "500", "503"):
            return self._json(int(behaviour), {"error": {"message": f"scripted {behaviour}" + self._echo()}})
        if behaviour == "malformed":
            return self._send(200, b"<html>502 Bad Gateway</html>", "text/html")
        if behaviour == "nocontent":
            return self._json(200, {"id": "chatcmpl-test", "choices": []})
        if behaviour == "drop":
            body = json.dumps(answer).encode()
            self._head(200, len(body), "application/json")
            self.wfile.write(body[: len(body) // 2])
            self.wfile.flush()
            return self._cut()
        if behaviour == "hangup":
            return self._cut()
        raise AssertionError(f"unknown scripted behaviour {behaviour!r}")

    def _check(self, raw: bytes, seen: Seen) -> tuple[str | None, Image.Image]:
        """The request shape a real server needs; a one-line problem or None, and the image."""
        blank = Image.new("RGB", (1, 1))
        try:
            body = json.loads(raw)
            seen.body = body
            message, = body["messages"]
            parts = {part["type"]: part for part in message["content"]}
            seen.prompt = parts["text"]["text"]
            url = parts["image_url"]["image_url"]["url"]
        except (ValueError, KeyError, TypeError) as exc:
            return f"request shape: {type(exc).__name__}: {exc}", blank
        if body.get("model") != self.shared.model:
            return f"model {body.get('model')!r} is not served here", blank
        if message.get("role") != "user" or not seen.prompt:
            return "the message must be a user message with prompt text", blank
        numbers = body.get("max_tokens"), body.get("temperature")
        if not isinstance(numbers[0], int) or not isinstance(numbers[1], int | float):
            return "max_tokens and temperature must be numbers", blank
        head, _, data = url.partition(",")
        if head not in ("data:image/jpeg;base64", "data:image/png;base64"):
            return f"image_url must be a base64 JPEG or PNG data URL, got {head[:40]!r}", blank
        try:
            image = Image.open(io.BytesIO(base64.b64decode(data, validate=True)))
            image.load()
        except Exception as exc:
            return f"the data URL is not an image: {exc}", blank
        seen.image_format, seen.image_size = head[len("data:image/"):-len(";base64")], image.size
        return None, image

    def _authorised(self, seen: Seen) -> bool:
        key = self.shared.key
        if key is None or seen.headers.get("Authorization") == f"Bearer {key}":
            return True
        got = self.headers.get("Authorization", "")
        # as OpenAI does: the key received, in the message (our client must scrub it)
        self._json(401, {"error": {"message": f"Incorrect API key provided: {got[len('Bearer '):]}"}})
        return False

    def _echo(self) -> str:
        return f" (you sent {self.headers.get('Authorization')})" if self.shared.echo_auth else ""

    def _seen(self, behaviour: str) -> Seen:
        seen = Seen(self.path, dict(self.headers.items()), behaviour, time.monotonic())
        with self.shared.lock:
            self.shared.requests.append(seen)
        return seen

    def _json(self, status: int, body: dict[str, Any], headers: dict[str, str] | None = None) -> None:
        self._send(status, json.dumps(body).encode(), "application/json", headers)

    def _send(self, status: int, data: bytes, kind: str, headers: dict[str, str] | None = None) -> None:
        self._head(status, len(data), kind, headers)
        self.wfile.write(data)

    def _head(self, status: int, length: int, kind: str, headers: dict[str, str] | None = None) -> None:
        self._release()
        self.send_response(status)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(length))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()

    def _cut(self) -> None:
        self._release()
        self.close_connection = True
        with contextlib.suppress(OSError):  # the client may have gone already
            self.connection.shutdown(socket.SHUT_RDWR)


def free_port() -> int:
    """A port nothing listens on (bound, then released): connecting to it is refused."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])
