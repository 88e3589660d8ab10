"""One chat-completions exchange with an OpenAI-compatible server, on the standard library only.

`http.client` rather than `urllib.request`: the captioner must be able to cut a request in
flight when a run is closed (it holds the socket), and tell a dropped connection (retry) from
an HTTP refusal (a reason). Proxies from the environment are honoured as urllib does.

The body is what every server we target accepts (vLLM, llama.cpp `llama-server`, Ollama's
`/v1`, LM Studio, OpenAI): `max_tokens` (not `max_completion_tokens`, which llama.cpp and
Ollama ignore), one user message whose content is a text part and an `image_url` part holding a
base64 data URL.
"""

from __future__ import annotations

import base64
import errno
import http.client
import io
import json
import socket
import ssl
import urllib.request
from dataclasses import dataclass
from email.message import Message
from email.utils import parsedate_to_datetime
from pathlib import Path
from time import time
from typing import Any
from urllib.parse import urlsplit

from PIL import Image

from curate.errors import CurateError
from curate.paths import display, first_line, printable
from curate.tagging.preprocess import upright

JPEG_QUALITY = 92
BODY_LIMIT = 64 << 20  # a caption answer is a few KB; a server sending more is not answering us
MESSAGE_LIMIT = 200
ALPHA_MODES = ("RGBA", "LA", "PA", "La", "RGBa")


class Secret:
    """The API key: its text never appears in a repr, a str, or (scrubbed) a server's error."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def __repr__(self) -> str:
        return "Secret(<set>)" if self._value else "Secret(<unset>)"

    __str__ = __repr__

    def __bool__(self) -> bool:
        return bool(self._value)

    def reveal(self) -> str:
        return self._value

    def scrub(self, text: str) -> str:
        """`text` with the key blanked: servers echo a wrong key in their error message."""
        return text.replace(self._value, "***") if self._value else text


@dataclass(frozen=True)
class Outcome:
    """What one attempt came to: a text, or an error and whether another attempt may help."""

    text: str | None = None
    error: str = ""
    retry: bool = False
    wait_s: float | None = None  # the server's Retry-After
    # failures that mean the server as a whole is unusable (down, wrong URL, wrong key): when
    # the first attempts of a run all end so, the run stops with one error instead of N
    server_wide: bool = False


class Endpoint:
    """The server an `--api-base` names: connections (through a proxy when the environment
    says so) and the URL of each route. The base is used as given and the route appended,
    as the OpenAI client does: `http://host:8000/v1` + `/chat/completions`."""

    def __init__(self, api_base: str) -> None:
        parts = urlsplit(api_base.strip())
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise CurateError(f"--api-base {printable(api_base, one_line=True)}: not an http:// or https:// "
                              "URL; give the server's base, e.g. http://127.0.0.1:8000/v1")
        if parts.username or parts.password:
            raise CurateError("--api-base: the URL holds a user name or password; remove it and put "
                              "the key in the environment variable the key option names")
        if parts.query or parts.fragment:
            raise CurateError(f"--api-base {printable(api_base, one_line=True)}: a query or fragment is "
                              "not supported; give the base only, e.g. http://127.0.0.1:8000/v1")
        self.scheme = parts.scheme
        self.host = parts.hostname
        try:
            self.port = parts.port or (443 if self.scheme == "https" else 80)
        except ValueError as exc:
            raise CurateError(f"--api-base {printable(api_base, one_line=True)}: {first_line(exc)}") from exc
        self.prefix = parts.path.rstrip("/")
        self.base = f"{self.scheme}://{parts.netloc}{self.prefix}"

    def url(self, route: str) -> str:
        return self.base + route

    def _proxy(self) -> tuple[str, int] | None:
        proxy = urllib.request.getproxies().get(self.scheme)
        if not proxy or urllib.request.proxy_bypass(self.host):
            return None
        parts = urlsplit(proxy if "://" in proxy else "http://" + proxy)
        return (parts.hostname or "", parts.port or 80) if parts.hostname else None

    def connect(self, timeout_s: float) -> tuple[http.client.HTTPConnection, str]:
        """A connected connection and the request target for `route`-relative use: through an
        http proxy the target is the absolute URL, through an https tunnel the path."""
        proxy = self._proxy()
        conn: http.client.HTTPConnection
        if self.scheme == "https":
            context = ssl.create_default_context()
            if proxy:
                conn = http.client.HTTPSConnection(*proxy, timeout=timeout_s, context=context)
                conn.set_tunnel(self.host, self.port)
            else:
                conn = http.client.HTTPSConnection(self.host, self.port, timeout=timeout_s, context=context)
            prefix = self.prefix
        else:
            conn = http.client.HTTPConnection(*(proxy or (self.host, self.port)), timeout=timeout_s)
            prefix = self.base if proxy else self.prefix
        conn.connect()
        return conn, prefix


def encode_image(path: Path, max_side: int) -> str:
    """The image as a data URL: upright, long side at most `max_side`, JPEG (PNG when it has
    transparency, which JPEG would lose). Raises CurateError naming the file when unreadable."""
    try:
        with Image.open(path) as image:
            scale = max_side / max(image.size)
            if scale < 1 and image.format == "JPEG":  # decode at 1/2, 1/4, 1/8 size: much faster
                image.draft(None, (max(1, round(image.width * scale)), max(1, round(image.height * scale))))
            image = upright(image)
            alpha = image.mode in ALPHA_MODES or "transparency" in image.info
            image = image.convert("RGBA" if alpha else "RGB")
            if max(image.size) > max_side:
                image.thumbnail((max_side, max_side), Image.Resampling.LANCZOS)
            out = io.BytesIO()
            if alpha:
                image.save(out, "PNG")
            else:
                image.save(out, "JPEG", quality=JPEG_QUALITY)
    except Exception as exc:  # decoders raise OSError, ValueError, SyntaxError, struct.error...
        raise CurateError(f"{display(path)}: cannot read image ({first_line(exc)}); "
                          "re-download or replace it, or remove it") from exc
    kind = "png" if alpha else "jpeg"
    return f"data:image/{kind};base64," + base64.b64encode(out.getvalue()).decode("ascii")


def chat_body(model: str, prompt: str, image_url: str, max_tokens: int, temperature: float) -> bytes:
    content = [{"type": "text", "text": prompt}, {"type": "image_url", "image_url": {"url": image_url}}]
    body = {"model": model, "messages": [{"role": "user", "content": content}],
            "max_tokens": max_tokens, "temperature": temperature}
    return json.dumps(body, ensure_ascii=False).encode("utf-8")


def exchange(conn: http.client.HTTPConnection, method: str, target: str, headers: dict[str, str],
             body: bytes | None = None) -> tuple[int, str, Message, bytes]:
    """(status, reason, headers, body) of one request. A connection dropped mid-answer raises
    (IncompleteRead: read() without a size checks Content-Length; read(n) would not)."""
    conn.request(method, target, body=body, headers=headers)
    response = conn.getresponse()
    if response.length is not None and response.length > BODY_LIMIT:
        raise http.client.HTTPException(f"an answer of {response.length} bytes, too big for a caption")
    return response.status, response.reason, response.headers, response.read()


def reply_text(data: bytes) -> str:
    """`choices[0].message.content` of a chat-completions answer; ValueError saying what is wrong."""
    try:
        reply: Any = json.loads(data)
    except (ValueError, UnicodeDecodeError):
        raise ValueError("the answer is not JSON") from None
    try:
        content = reply["choices"][0]["message"]["content"]
    except (KeyError, IndexError, TypeError):
        raise ValueError("the answer has no choices[0].message.content") from None
    if isinstance(content, list):  # some servers answer with content parts, as requests send them
        content = "".join(part.get("text", "") for part in content if isinstance(part, dict))
    if not isinstance(content, str):
        raise ValueError("the answer's choices[0].message.content is not text")
    return content.strip()


def server_message(data: bytes) -> str:
    """The reason a server gives in an error body: OpenAI's `{"error": {"message"}}`, vLLM's
    `{"message"}`, FastAPI's `{"detail"}`, or the first line of a plain-text body."""
    try:
        body: Any = json.loads(data)
    except (ValueError, UnicodeDecodeError):
        body = None
    text: Any = None
    if isinstance(body, dict):
        error = body.get("error")
        text = error.get("message") if isinstance(error, dict) else error
        text = text or body.get("message") or body.get("detail")
    if text is None and body is None:
        text = data[:1000].decode("utf-8", "replace")
    line = next((line.strip() for line in str(text or "").splitlines() if line.strip()), "")
    return printable(line, one_line=True)[:MESSAGE_LIMIT]


def retry_after(headers: Message) -> float | None:
    """Retry-After in seconds (a number or an HTTP date), None when absent or unreadable."""
    value = (headers.get("Retry-After") or "").strip()
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        return max(0.0, parsedate_to_datetime(value).timestamp() - time())
    except (TypeError, ValueError):
        return None


def status_outcome(status: int, reason: str, headers: Message, data: bytes, *, url: str, model: str,
                   key_env: str, key_set: bool) -> Outcome:
    """What an HTTP answer means for this attempt."""
    if status == 200:
        try:
            return Outcome(text=reply_text(data))
        except ValueError as exc:  # a proxy's HTML page, a half-written body: another try may do
            return Outcome(error=f"malformed answer from the server: {exc}", retry=True)
    said = server_message(data)
    head = f"{status} {reason}".strip() + (f": {said}" if said else "")
    if status == 429:
        return Outcome(error=f"rate limited ({head})", retry=True, wait_s=retry_after(headers))
    if status >= 500 or status == 408:
        return Outcome(error=f"server error ({head})", retry=True, wait_s=retry_after(headers))
    if status == 401:
        todo = f"check the key in ${key_env}" if key_set else f"set ${key_env} to the server's key"
        return Outcome(error=f"the server refused the request ({head}): {todo}", server_wide=True)
    if status == 403:
        return Outcome(error=f"the server refused access ({head}): check the key in ${key_env} and "
                             "what it may use", server_wide=True)
    if status == 404:
        shown = printable(model, one_line=True)
        return Outcome(error=f"{url} answered {head}: the URL or the model '{shown}' is wrong; "
                             "check --api-base (it usually ends in /v1) and --api-model", server_wide=True)
    return Outcome(error=f"the server refused the request ({head})")


def failure_outcome(exc: BaseException, *, host: str, port: int, timeout_s: float) -> Outcome:
    """What a connection-level failure means for this attempt (every one but TLS is retried)."""
    where = f"{host}:{port}"
    if isinstance(exc, http.client.RemoteDisconnected):
        return Outcome(error="the server closed the connection without answering", retry=True)
    if isinstance(exc, http.client.IncompleteRead):
        return Outcome(error="the server closed the connection in the middle of its answer", retry=True)
    if isinstance(exc, ConnectionRefusedError):
        return Outcome(error=f"connection refused by {where}: is the server running?", retry=True,
                       server_wide=True)
    if isinstance(exc, socket.gaierror):
        return Outcome(error=f"cannot resolve {host} ({first_line(exc)})", retry=True, server_wide=True)
    if isinstance(exc, ssl.SSLCertVerificationError):
        return Outcome(error=f"TLS certificate check failed for {where} ({first_line(exc)})",
                       server_wide=True)
    if isinstance(exc, TimeoutError):
        return Outcome(error=f"no answer from {where} within {timeout_s:g} s", retry=True)
    if isinstance(exc, ConnectionResetError):
        return Outcome(error=f"connection reset by {where}", retry=True)
    if isinstance(exc, OSError) and exc.errno in (errno.ENETUNREACH, errno.EHOSTUNREACH):
        return Outcome(error=f"{where} is unreachable ({first_line(exc)})", retry=True, server_wide=True)
    cause = f"{type(exc).__name__}: {first_line(exc)}"
    return Outcome(error=f"connection to {where} failed ({cause})", retry=True)
