"""Captions from any OpenAI-compatible chat-completions server (vLLM, llama.cpp, Ollama, LM
Studio, a hosted API), on the standard library only.

- At most `concurrency` requests in flight; results come out as each answer arrives (out of
  order), so a caller can store each caption at once and an interrupted run keeps all of them.
- Timeouts, dropped connections, 429 (its Retry-After honoured, capped), 5xx and malformed
  answers are retried with exponential backoff and jitter; other 4xx fail the image at once
  with the reason. After `retries` the image gets an error Result and the run goes on.
- A run whose first attempts all fail for the whole server (connection refused, 401, 404, ...)
  stops with one CurateError naming the URL instead of failing every image in turn.
- The key is read from an environment variable and sent only as `Authorization: Bearer`; it is
  in no message, repr, setting or file (servers that echo it in errors are scrubbed).
- Closing the iterator (or the captioner) cuts the requests in flight and starts no new one.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import random
import socket
import threading
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import replace
from typing import Any

from curate.errors import CurateError
from curate.paths import first_line, printable
from curate.tagging.vlm.backend import Request, Result
from curate.tagging.vlm.wire import (
    Endpoint,
    Outcome,
    Secret,
    chat_body,
    encode_image,
    exchange,
    failure_outcome,
    status_outcome,
)

CHAT = "/chat/completions"
MODELS = "/models"
DOWN_AFTER = 3  # server-wide failures with no success yet: the server is down (or the URL/key wrong)
THREAD_PREFIX = "curate-caption"


class _Run:
    """One caption() call's shared state: stop flag, live connections, the down verdict."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.stop = threading.Event()
        self.conns: set[http.client.HTTPConnection] = set()
        self.successes = 0
        self.server_wide = 0
        self.down: str | None = None

    def register(self, conn: http.client.HTTPConnection) -> bool:
        """Track a connected connection; False once the run is stopping (nothing may be sent)."""
        with self.lock:
            if self.stop.is_set():
                return False
            self.conns.add(conn)
            return True

    def unregister(self, conn: http.client.HTTPConnection) -> None:
        with self.lock:
            self.conns.discard(conn)

    def note(self, outcome: Outcome, first_error: str) -> None:
        """Count an attempt; the `DOWN_AFTER`th server-wide failure before any success stops the run."""
        with self.lock:
            if outcome.text is not None:
                self.successes += 1
            elif outcome.server_wide:
                self.server_wide += 1
                if self.successes == 0 and self.server_wide >= DOWN_AFTER and self.down is None:
                    self.down = first_error
                    self._halt()

    def halt(self) -> None:
        with self.lock:
            self._halt()

    def _halt(self) -> None:
        """Stop: no new attempt starts, and the sockets in flight are shut so their reads end now.
        socket.socket.shutdown, not SSLSocket's, which unwraps TLS under a reading thread."""
        self.stop.set()
        for conn in self.conns:
            if conn.sock is not None:
                with contextlib.suppress(OSError):  # already closed by the other side
                    socket.socket.shutdown(conn.sock, socket.SHUT_RDWR)


class ServerCaptioner:
    """The caption backend for an OpenAI-compatible server (see the module docstring)."""

    family = "server"
    revision = ""  # a server has no weights revision we can see; the model name stands for it

    def __init__(self, api_base: str, model: str, *, api_key_env: str = "OPENAI_API_KEY",
                 concurrency: int = 4, timeout_s: float = 120, retries: int = 5, max_tokens: int = 300,
                 temperature: float = 0.0, max_image_side: int = 1536, backoff_s: float = 1.0,
                 max_backoff_s: float = 30.0, max_retry_after_s: float = 120.0) -> None:
        if not model.strip():
            raise CurateError("--api-model: give the model name the server serves (see its /v1/models)")
        for option, value, least in (("concurrency", concurrency, 1), ("retries", retries, 0),
                                     ("max_tokens", max_tokens, 1), ("max_image_side", max_image_side, 16)):
            if value < least:
                raise CurateError(f"{option} must be at least {least}, got {value}")
        if timeout_s <= 0:
            raise CurateError(f"timeout_s must be above 0, got {timeout_s}")
        self.endpoint = Endpoint(api_base)
        self.name = model
        self.api_key_env = api_key_env
        self._key = Secret(os.environ.get(api_key_env, ""))
        self.concurrency, self.timeout_s, self.retries = concurrency, float(timeout_s), retries
        self.max_tokens, self.temperature, self.max_image_side = max_tokens, temperature, max_image_side
        # backoff: the first retry waits ~backoff_s, doubling up to max_backoff_s (tests pass tiny ones)
        self.backoff_s, self.max_backoff_s = backoff_s, max_backoff_s
        self.max_retry_after_s = max_retry_after_s
        self._random = random.Random()
        self._runs: set[_Run] = set()
        self._runs_lock = threading.Lock()

    def __repr__(self) -> str:
        return f"ServerCaptioner({self.endpoint.base!r}, {self.name!r}, key from ${self.api_key_env})"

    def settings(self) -> dict[str, Any]:
        """What changes the text (the cache key's part): not concurrency, timeouts or the key."""
        return {"api_base": self.endpoint.base, "model": self.name, "max_tokens": self.max_tokens,
                "temperature": self.temperature, "max_image_side": self.max_image_side}

    def close(self) -> None:
        """Stop every run of this captioner: requests in flight are cut, none is started."""
        with self._runs_lock:
            runs = list(self._runs)
        for run in runs:
            run.halt()

    def caption(self, requests: Sequence[Request], *, batch_size: int = 4,
                on_progress: Callable[[int, int], None] | None = None) -> Iterator[Result]:
        """One Result per request, in the order the answers arrive. `batch_size` is unused: a
        server batches by itself; `concurrency` is how many requests it gets at once."""
        run = _Run()
        with self._runs_lock:
            self._runs.add(run)
        todo = iter(enumerate(requests))
        pending: set[Future[Result]] = set()
        done, total = 0, len(requests)
        pool = ThreadPoolExecutor(self.concurrency, thread_name_prefix=THREAD_PREFIX)
        try:
            self._fill(pool, pending, todo, run, self.concurrency)
            while pending:
                finished, _ = wait(pending, return_when=FIRST_COMPLETED)
                pending -= finished
                if run.down is not None:
                    raise CurateError(f"{self.endpoint.url(CHAT)}: {run.down}; no caption was received, "
                                      "so the run stops here")
                if run.stop.is_set():  # close() from elsewhere: what was cut is not a failure
                    return
                waiting = list(finished)
                while waiting:
                    future = waiting.pop()
                    # the next request goes out before this result is handed over, so the server
                    # stays busy; no more than that, so a run closed here has sent at most
                    # `concurrency` requests beyond the results it handed over
                    self._fill(pool, pending, todo, run, self.concurrency - len(waiting))
                    done += 1
                    if on_progress is not None:
                        on_progress(done, total)
                    yield future.result()
        finally:
            run.halt()
            pool.shutdown(wait=True, cancel_futures=True)  # quick: sockets shut, sleeps woken
            with self._runs_lock:
                self._runs.discard(run)

    def _fill(self, pool: ThreadPoolExecutor, pending: set[Future[Result]],
              todo: Iterator[tuple[int, Request]], run: _Run, room: int) -> None:
        """Top up to `room` requests in flight: none is queued ahead, so a closed run has
        nothing waiting to be sent."""
        while len(pending) < room:
            item = next(todo, None)
            if item is None:
                return
            pending.add(pool.submit(self._one, run, *item))

    def _one(self, run: _Run, index: int, request: Request) -> Result:
        """Caption one image, retrying what may pass on a second try."""
        try:
            image_url = encode_image(request.path, self.max_image_side)
        except CurateError as exc:
            return Result(index, None, str(exc))
        body = chat_body(self.name, request.prompt, image_url, self.max_tokens, self.temperature)
        attempts = 0
        while True:
            if run.stop.is_set():
                return Result(index, None, "stopped before an answer came")
            outcome = self._attempt(run, body)
            attempts += 1
            run.note(outcome, outcome.error)
            if outcome.text is not None:
                return Result(index, outcome.text)
            if not outcome.retry or run.down is not None:
                return Result(index, None, outcome.error)
            if attempts > self.retries:
                return Result(index, None, f"{outcome.error}; gave up after {attempts} attempts")
            if run.stop.wait(self._delay(attempts, outcome.wait_s)):
                return Result(index, None, "stopped before an answer came")

    def _delay(self, attempts: int, wait_s: float | None) -> float:
        """Exponential backoff with jitter (a crowd of clients does not come back in step); the
        server's Retry-After, capped, when it sent one."""
        backoff = min(self.max_backoff_s, self.backoff_s * 2 ** (attempts - 1))
        if wait_s is not None:
            return min(wait_s, self.max_retry_after_s) + self._random.uniform(0, self.backoff_s)
        return backoff * self._random.uniform(0.5, 1.0)

    def _attempt(self, run: _Run, body: bytes) -> Outcome:
        """One POST; every way it can end is an Outcome, the key scrubbed from its text."""
        where = {"host": self.endpoint.host, "port": self.endpoint.port, "timeout_s": self.timeout_s}
        try:
            conn, prefix = self.endpoint.connect(self.timeout_s)
        except (OSError, http.client.HTTPException, ValueError) as exc:
            return self._scrub(failure_outcome(exc, **where))
        try:
            if not run.register(conn):
                return Outcome(error="stopped before an answer came")
            status, reason, headers, data = exchange(conn, "POST", prefix + CHAT, self._headers(), body)
        except (OSError, http.client.HTTPException, ValueError) as exc:
            if run.stop.is_set():
                return Outcome(error="stopped before an answer came")
            return self._scrub(failure_outcome(exc, **where))
        finally:
            run.unregister(conn)
            conn.close()
        return self._scrub(status_outcome(status, reason, headers, data, url=self.endpoint.url(CHAT),
                                          model=self.name, key_env=self.api_key_env, key_set=bool(self._key)))

    def _headers(self) -> dict[str, str]:
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        if self._key:
            headers["Authorization"] = f"Bearer {self._key.reveal()}"
        return headers

    def _scrub(self, outcome: Outcome) -> Outcome:
        return replace(outcome, error=self._key.scrub(outcome.error)) if self._key else outcome


def probe(api_base: str, *, model: str | None = None, api_key_env: str = "OPENAI_API_KEY",
          timeout_s: float = 5.0) -> tuple[bool, str]:
    """(ok, one-line detail) for `curate doctor`: does `{api_base}/models` answer, and with what."""
    try:
        endpoint = Endpoint(api_base)
    except CurateError as exc:
        return False, str(exc)
    key = Secret(os.environ.get(api_key_env, ""))
    headers = {"Accept": "application/json"}
    if key:
        headers["Authorization"] = f"Bearer {key.reveal()}"
    url = endpoint.url(MODELS)
    try:
        conn, prefix = endpoint.connect(timeout_s)
        try:
            status, reason, answer_headers, data = exchange(conn, "GET", prefix + MODELS, headers)
        finally:
            conn.close()
    except (OSError, http.client.HTTPException, ValueError) as exc:
        outcome = failure_outcome(exc, host=endpoint.host, port=endpoint.port, timeout_s=timeout_s)
        return False, key.scrub(f"{url}: {outcome.error}")
    if status != 200:
        outcome = status_outcome(status, reason, answer_headers, data, url=url, model=model or "",
                                 key_env=api_key_env, key_set=bool(key))
        return False, key.scrub(f"{url}: {outcome.error}")
    return True, key.scrub(_models_line(url, data, model))


def _models_line(url: str, data: bytes, model: str | None) -> str:
    try:
        listed = [printable(str(entry["id"]), one_line=True) for entry in json.loads(data)["data"]]
    except (ValueError, KeyError, TypeError) as exc:
        return f"{url} answers, but not with a model list ({first_line(exc)})"
    shown = ", ".join(listed[:5]) + (f" and {len(listed) - 5} more" if len(listed) > 5 else "")
    line = f"{url} answers: {len(listed)} model(s): {shown or 'none listed'}"
    if model and model not in listed:
        line += (f"; '{printable(model, one_line=True)}' is not among them "
                 "(some servers serve any name they are given)")
    return line
