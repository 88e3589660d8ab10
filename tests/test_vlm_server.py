"""The OpenAI-compatible caption backend against a real HTTP server on 127.0.0.1
(tests/vlm_server.py): request shape, every retried failure, refusals, the concurrency limit,
the key's confinement, a server that is down, and a run closed part-way."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
from PIL import Image

from curate.errors import CurateError
from curate.tagging.vlm.backend import Request, Result
from curate.tagging.vlm.server import THREAD_PREFIX, ServerCaptioner, probe
from tests.vlm_server import ChatServer, free_port

MODEL = "test-vlm"
KEY = "sk-test-0123456789abcdef"
FAST = {"timeout_s": 5.0, "backoff_s": 0.001, "max_backoff_s": 0.01}


@pytest.fixture(autouse=True)
def no_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """Eight small images of distinct sizes and colours (one with transparency)."""
    folder = tmp_path_factory.mktemp("images")
    paths = []
    for i in range(8):
        path = folder / f"{i}.png"
        mode, colour = ("RGBA", (200, 30, 30, 128)) if i == 3 else ("RGB", (i * 30, 100, 255 - i * 30))
        Image.new(mode, (40 + i, 30 + i), colour).save(path)
        paths.append(path)
    return paths


def requests_for(paths: list[Path], prompt: str = "Describe the image.") -> list[Request]:
    return [Request(path, prompt) for path in paths]


def by_index(results: list[Result], count: int) -> dict[int, Result]:
    indices = [result.index for result in results]
    assert sorted(indices) == list(range(count)), "each request answered exactly once"
    return {result.index: result for result in results}


def test_every_image_is_captioned_with_the_shape_servers_expect(images: list[Path], tmp_path: Path) -> None:
    wide = tmp_path / "wide.jpg"
    Image.new("RGB", (900, 300), (10, 200, 10)).save(wide)
    paths = [*images, wide]
    progress: list[tuple[int, int]] = []
    with ChatServer(model=MODEL) as server:
        captioner = ServerCaptioner(server.api_base, MODEL, max_image_side=300, **FAST)
        stream = captioner.caption(requests_for(paths), on_progress=lambda *p: progress.append(p))
        results = by_index(list(stream), len(paths))
        seen = server.chat_requests
    assert server.problems == []
    assert progress == [(done, len(paths)) for done in range(1, len(paths) + 1)]
    for index, path in enumerate(paths[:-1]):
        with Image.open(path) as image:
            assert results[index].text is not None
            assert results[index].text.startswith(f"a {image.width}x{image.height} picture")
            assert results[index].text.endswith("asked: Describe the image.")
    assert results[len(paths) - 1].text.startswith("a 300x100 picture")  # long side down to max_image_side
    formats = sorted(request.image_format for request in seen)
    assert formats == ["jpeg"] * 8 + ["png"]  # transparency kept as PNG, the rest JPEG
    body = seen[0].body
    assert body is not None and body["max_tokens"] == 300 and body["temperature"] == 0.0
    assert all("Authorization" not in request.headers for request in seen)  # no key set: no header
    assert captioner.settings() == {"api_base": server.api_base, "model": MODEL, "max_tokens": 300,
                                    "temperature": 0.0, "max_image_side": 300}
    assert (captioner.name, captioner.revision, captioner.family) == (MODEL, "", "server")


@pytest.mark.parametrize("failure", ["slow", "429", "500", "503", "malformed", "nocontent", "drop", "hangup"])
def test_each_failure_kind_is_retried_until_an_answer_comes(images: list[Path], failure: str) -> None:
    with ChatServer(model=MODEL, slow_s=3.0) as server:
        server.script(failure, failure)
        captioner = ServerCaptioner(server.api_base, MODEL, **{**FAST, "timeout_s": 0.3})
        (result,) = captioner.caption(requests_for(images[:1]))
        behaviours = [seen.behaviour for seen in server.chat_requests]
    assert result.error is None and result.text is not None and result.text.startswith("a 40x30 picture")
    assert behaviours == [failure, failure, "ok"]


def test_retry_after_is_honoured(images: list[Path]) -> None:
    with ChatServer(model=MODEL, retry_after="1") as server:
        server.script("429")
        captioner = ServerCaptioner(server.api_base, MODEL, **FAST)
        (result,) = captioner.caption(requests_for(images[:1]))
        first, second = server.chat_requests
    assert result.text is not None
    assert second.at - first.at >= 0.9  # backoff alone would have waited ~1 ms


def test_an_image_that_keeps_failing_gets_an_error_and_the_run_goes_on(images: list[Path]) -> None:
    with ChatServer(model=MODEL) as server:
        server.script(*["500"] * 3)
        captioner = ServerCaptioner(server.api_base, MODEL, concurrency=1, retries=2, **FAST)
        results = by_index(list(captioner.caption(requests_for(images[:3]))), 3)
    assert results[0].text is None
    assert results[0].error == ("server error (500 Internal Server Error: scripted 500); "
                                "gave up after 3 attempts")
    assert results[1].text and results[2].text


@pytest.mark.parametrize(("status", "expected"), [
    ("400", "the server refused the request (400 Bad Request: scripted 400)"),
    ("404", "/v1/chat/completions answered 404 Not Found: scripted 404: the URL or the model 'test-vlm' is "
            "wrong; check --api-base (it usually ends in /v1) and --api-model"),
    ("401", "the server refused the request (401 Unauthorized: scripted 401): set $OPENAI_API_KEY to the "
            "server's key"),
])
def test_a_refusal_fails_the_image_at_once(images: list[Path], status: str, expected: str) -> None:
    with ChatServer(model=MODEL) as server:
        server.script(status)
        captioner = ServerCaptioner(server.api_base, MODEL, concurrency=1, **FAST)
        results = by_index(list(captioner.caption(requests_for(images[:2]))), 2)
        tries = len(server.chat_requests)
    assert results[0].text is None and results[0].error is not None
    assert results[0].error.endswith(expected) and "\n" not in results[0].error
    assert results[1].text is not None
    assert tries == 2  # no retry of the refused one


def test_a_missing_image_is_an_error_result_and_nothing_is_sent(images: list[Path], tmp_path: Path) -> None:
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG not really")
    with ChatServer(model=MODEL) as server:
        captioner = ServerCaptioner(server.api_base, MODEL, **FAST)
        results = by_index(list(captioner.caption(requests_for([broken, images[0]]))), 2)
        sent = len(server.chat_requests)
    assert results[0].text is None and results[0].error is not None
    assert results[0].error.startswith(f"{broken}: cannot read image (")
    assert results[1].text is not None and sent == 1


def test_never_more_requests_in_flight_than_the_concurrency(images: list[Path]) -> None:
    with ChatServer(model=MODEL) as server:
        server.hold_until(3)  # each request waits for two others: 3 at once is reached, not passed
        captioner = ServerCaptioner(server.api_base, MODEL, concurrency=3, **FAST)
        results = list(captioner.caption(requests_for(images[:6])))
        assert server.max_active == 3
    assert all(result.text for result in by_index(results, 6).values())


def test_the_key_is_sent_as_a_header_only_and_shown_nowhere(images: list[Path],
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CURATE_TEST_KEY", KEY)
    with ChatServer(model=MODEL, key=KEY, echo_auth=True) as server:
        server.script("400", "500", "500", "500")
        captioner = ServerCaptioner(server.api_base, MODEL, api_key_env="CURATE_TEST_KEY", concurrency=1,
                                    retries=2, **FAST)
        results = by_index(list(captioner.caption(requests_for(images[:3]))), 3)
        seen = server.chat_requests
        ok, detail = probe(server.api_base, api_key_env="CURATE_TEST_KEY")
    assert all(request.headers["Authorization"] == f"Bearer {KEY}" for request in seen)
    assert all(KEY not in request.path for request in seen)
    assert results[0].error is not None and results[1].error is not None and results[2].text is not None
    assert "(you sent Bearer ***)" in results[0].error  # the server echoed it; we blank it
    shown = [results[0].error, results[1].error, repr(captioner), str(captioner.settings()), detail]
    assert all(KEY not in text for text in shown) and ok


def test_a_wrong_key_echoed_by_the_server_is_scrubbed(images: list[Path],
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    with ChatServer(model=MODEL, key="sk-the-right-one") as server:
        captioner = ServerCaptioner(server.api_base, MODEL, concurrency=1, **FAST)
        with pytest.raises(CurateError) as caught:
            list(captioner.caption(requests_for(images)))
        ok, detail = probe(server.api_base)
        sent = len(server.chat_requests)
    message = str(caught.value)
    assert message.startswith(f"{server.api_base}/chat/completions: the server refused the request (401 ")
    assert "check the key in $OPENAI_API_KEY" in message and KEY not in message and "\n" not in message
    assert not ok and "check the key in $OPENAI_API_KEY" in detail and KEY not in detail
    assert sent == 3  # one error for the run, not one per image


def test_a_server_that_is_down_stops_the_run_with_one_error(images: list[Path]) -> None:
    port = free_port()
    base = f"http://127.0.0.1:{port}/v1"
    captioner = ServerCaptioner(base, MODEL, concurrency=4, retries=5, **FAST)
    received: list[Result] = []
    with pytest.raises(CurateError) as caught:
        received.extend(captioner.caption(requests_for(images * 3)))
    assert received == []
    assert str(caught.value).startswith(f"{base}/chat/completions: connection refused by 127.0.0.1:")
    assert "is the server running?" in str(caught.value)
    refused = f"connection refused by 127.0.0.1:{port}: is the server running?"
    assert probe(base) == (False, f"{base}/models: {refused}")


def test_closing_part_way_keeps_what_came_and_sends_nothing_more(images: list[Path]) -> None:
    with ChatServer(model=MODEL) as server:
        captioner = ServerCaptioner(server.api_base, MODEL, concurrency=2, **FAST)
        stream = captioner.caption(requests_for(images))
        first = [next(stream) for _ in range(3)]
        stream.close()
        assert not [t for t in threading.enumerate() if t.name.startswith(THREAD_PREFIX)]
        server.wait_idle()
        sent = len(server.chat_requests)
    assert all(result.text for result in first)
    assert 3 <= sent <= 3 + 2  # what was answered, plus at most the requests then in flight


def test_close_stops_a_run_in_flight_without_failing_its_images(images: list[Path]) -> None:
    with ChatServer(model=MODEL, slow_s=10.0) as server:
        server.script("ok", *["slow"] * 8)
        captioner = ServerCaptioner(server.api_base, MODEL, concurrency=2, **FAST)
        stream = captioner.caption(requests_for(images))
        first = next(stream)  # the others are now waiting on slow answers
        threading.Thread(target=captioner.close).start()
        rest = list(stream)
        sent = len(server.chat_requests)
    assert first.text is not None and rest == [] and sent <= 3


def test_probe_lists_the_models(images: list[Path]) -> None:
    with ChatServer(model=MODEL) as server:
        assert probe(server.api_base, model=MODEL) == (True, f"{server.api_base}/models answers: 1 model(s): "
                                                              "test-vlm")
        ok, detail = probe(server.api_base, model="other")
    assert ok and detail.endswith("'other' is not among them (some servers serve any name they are given)")


@pytest.mark.parametrize(("base", "reason"), [
    ("ftp://host/v1", "not an http:// or https:// URL"),
    ("http://user:secret@host/v1", "holds a user name or password"),
    ("http://host/v1?x=1", "a query or fragment is not supported"),
])
def test_a_bad_api_base_is_refused_in_one_line(base: str, reason: str) -> None:
    with pytest.raises(CurateError, match=reason) as caught:
        ServerCaptioner(base, MODEL)
    assert "secret" not in str(caught.value)
    assert probe(base)[0] is False
