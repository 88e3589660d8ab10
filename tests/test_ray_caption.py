"""`curate caption --executor ray` with a local model: one model load per Ray actor, the driver
keying captions without loading the weights, and the same Text annotations and cache rows as
the local executor (tiny random models: an encoder-decoder and a decoder-only family). Needs
`ray[data]` (the `ray` extra) and transformers: skipped without them."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

pytest.importorskip("ray")
pytest.importorskip("ray.data")
pytest.importorskip("transformers")

from curate.cli import cli
from curate.errors import CurateError
from curate.executor import LOCAL, Executor, RayExecutor
from curate.stages.caption import CaptionConfig, caption
from curate.stages.caption import model as caption_model
from curate.stages.captions.edit import set_trigger
from curate.stages.ingest import ImportConfig, import_sources
from fixtures.scrape import jpeg, photo, write

NAMES = ("astronaut", "chelsea", "coffee", "rocket", "camera", "horse")
TAGS = "1girl, smile"


@pytest.fixture(scope="module")
def ray_executor() -> Iterator[Executor]:
    import ray

    executor = RayExecutor(num_cpus=2)
    yield executor
    ray.shutdown()


@pytest.fixture(autouse=True)
def cache_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CURATE_CACHE_DIR", str(tmp_path / "cache"))


@pytest.fixture(scope="module")
def raw(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Six photos of different sizes (a prompt's padding differs per batch) and an unreadable one."""
    folder = tmp_path_factory.mktemp("raw")
    for i, name in enumerate(NAMES):
        write(folder / f"{name}.jpg", jpeg(photo(name).convert("RGB").resize((96 + 8 * i, 80 + 4 * i))))
        write(folder / f"{name}.txt", TAGS if i % 2 else f"{TAGS}, {name}, outdoors, day")
    write(folder / "broken.jpg", b"\xff\xd8\xff\xe0 not really a jpeg")
    return folder


def workspace(root: Path, raw: Path) -> Path:
    import_sources(root, [raw], ImportConfig())
    set_trigger(root, "sks", "woman")
    return root


def stored(ws: Path) -> dict[str, Any]:
    """The Text annotations (table captions), the decisions and the cache rows, without their times."""
    db = sqlite3.connect(ws / ".curate" / "manifest.sqlite")
    state = {}
    for table in ("captions", "decisions", "caption_cache"):
        columns = [c[1] for c in db.execute(f"PRAGMA table_info({table})")
                   if c[1] not in {"id", "created_at", "run_id", "decided_at", "updated_at"}]
        state[table] = sorted(map(repr, db.execute(f"SELECT {', '.join(columns)} FROM {table}")))
    db.close()
    return state


@pytest.mark.parametrize("family", ["florence2", "qwen2_5_vl"])
def test_local_and_ray_give_the_same_texts_and_cache_rows(family: str, vlm_models: dict[str, Path], raw: Path,
                                                          tmp_path: Path, ray_executor: Executor) -> None:
    # batch 4 over 6 images: a full batch and a short one; hybrid: prompts of different lengths
    options = CaptionConfig(model=str(vlm_models[family]), preset="hybrid", max_tokens=10, batch_size=4,
                            checks=("empty",))
    results, states = {}, {}
    for name, executor in (("local", LOCAL), ("ray", ray_executor)):
        ws = workspace(tmp_path / name, raw)
        results[name] = caption(ws, options, executor=executor)
        states[name] = stored(ws)
    local, remote = results["local"], results["ray"]
    assert local.counts == remote.counts and local.counts.get("captioned", 0) >= 4, local.as_dict()
    assert remote.model == local.model and remote.device == local.device == "cpu"
    assert sorted(remote.captions) == sorted(local.captions)
    assert states["ray"] == states["local"]
    assert len([row for row in states["local"]["captions"] if "vlm:" in row]) == local.counts["captioned"]
    # the keys agree: a ray re-run of the local workspace asks nothing again, and the other way round
    assert caption(tmp_path / "local", options, executor=ray_executor).counts.get("cached", 0) == \
        local.counts["captioned"]
    assert caption(tmp_path / "ray", options).counts.get("cached", 0) == local.counts["captioned"]


def test_the_driver_keys_without_loading_and_a_stopped_run_resumes(vlm_models: dict[str, Path], raw: Path,
                                                                   tmp_path: Path, ray_executor: Executor,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """No weights are loaded in the driver on Ray; answers are committed as they stream back,
    so a run stopped after 2 images keeps those and the next one asks only the rest."""
    import curate.stages.caption.run as run
    import curate.stages.caption.workspace as sink

    def no_load(*_args: Any, **_kwargs: Any) -> Any:
        raise AssertionError("the driver loaded the model")

    monkeypatch.setattr(run, "open_backend", no_load)
    monkeypatch.setattr(sink, "COMMIT_EVERY_S", -1)  # commit after every answer

    class Stop(Exception):
        pass

    def stop_after_two(done: int, _total: int) -> None:
        if done == 2:
            raise Stop

    options = CaptionConfig(model=str(vlm_models["florence2"]), preset="short", max_tokens=8, batch_size=2,
                            checks=("empty",))
    ws = workspace(tmp_path / "ws", raw)
    with pytest.raises(Stop):
        caption(ws, options, executor=ray_executor, on_progress=stop_after_two)
    rest = caption(ws, options, executor=ray_executor)
    assert rest.counts.get("cached", 0) == 2 and rest.generated == len(NAMES) - 2, rest.as_dict()
    monkeypatch.undo()
    whole = workspace(tmp_path / "whole", raw)
    caption(whole, options)
    assert stored(ws)["captions"] == stored(whole)["captions"]


def test_dtype_auto_follows_the_cluster_and_is_in_the_key(vlm_models: dict[str, Path], ray_executor: Executor,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    options = CaptionConfig(model=str(vlm_models["florence2"]))
    _, identity = caption_model.remote_model(options, ray_executor)
    assert identity.settings["dtype"] == "float32" and identity.family == "florence2"
    monkeypatch.setattr(ray_executor, "gpus", lambda: 1)
    model, on_gpus = caption_model.remote_model(options, ray_executor)
    assert on_gpus.settings["dtype"] == model.dtype == "bfloat16" and on_gpus.revision == identity.revision
    assert caption_model.remote_model(CaptionConfig(model=options.model, device="cpu"),
                                      ray_executor)[1].settings["dtype"] == "float32"


def test_a_worker_with_other_model_files_refuses(vlm_models: dict[str, Path], tmp_path: Path, raw: Path,
                                                 ray_executor: Executor) -> None:
    """The driver's identity is checked on the worker: other files there are refused, in one line."""
    options = CaptionConfig(model=str(vlm_models["florence2"]), max_tokens=4, checks=("empty",))
    model, identity = caption_model.remote_model(options, ray_executor)
    model.expected = caption_model.Identity(identity.name, "0" * 16, identity.family, identity.settings)
    from curate.tagging.vlm.backend import Request

    requests = [Request(raw / f"{NAMES[0]}.jpg", "<CAPTION>")]
    with pytest.raises(CurateError) as refused:
        list(caption_model.answers(ray_executor, model, requests))
    assert "not the one the driver keyed" in str(refused.value) and "\n" not in str(refused.value)


def test_cli_caption_takes_the_executor_and_a_server_stays_on_the_driver(tmp_path: Path, raw: Path,
                                                                          ray_executor: Executor) -> None:
    from tests.vlm_server import ChatServer

    ws = workspace(tmp_path / "ws", raw)
    with ChatServer(model="test-vlm") as server:
        out = CliRunner().invoke(cli, ["caption", str(ws), "--api-base", server.api_base, "--api-model",
                                       "test-vlm", "--executor", "ray", "--json"])
    assert out.exit_code == 0, out.output
    assert '"captioned": 6' in out.output, out.output
    assert "asked from this machine" in out.output
