"""bg and crop commit each image's result as it streams back from the executor (local, or a
real 2-CPU Ray instance): a run stopped after 3 images keeps those, the next run with the same
options computes only the rest, and the workspace ends as an uninterrupted run leaves it."""

from __future__ import annotations

import hashlib
import sqlite3
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from curate import stage_run
from curate.executor import LOCAL, Executor
from curate.stages.background import BgConfig, remove_backgrounds
from curate.stages.crop.config import CropConfig
from curate.stages.crop.run import crop_images
from curate.stages.ingest import ImportConfig, import_sources
from fixtures.scrape import jpeg, photo, write

NAMES = ("astronaut", "chelsea", "coffee", "rocket", "camera", "horse")
WHEN = {"id", "imported_at", "created_at", "run_id"}


@pytest.fixture(scope="module", params=["local", "ray"])
def executor(request: pytest.FixtureRequest) -> Iterator[Executor]:
    if request.param == "local":
        yield LOCAL
        return
    pytest.importorskip("ray.data")
    import ray

    from curate.executor import RayExecutor

    yield RayExecutor(num_cpus=2)
    ray.shutdown()


@pytest.fixture(scope="module")
def raw(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("raw")
    rng = np.random.default_rng(0)
    for name in NAMES:
        canvas = np.clip(rng.normal(225, 4, (160, 180, 3)), 0, 255).astype(np.uint8)
        canvas[30:130, 40:140] = np.asarray(photo(name).convert("RGB").resize((100, 100)))
        write(folder / f"{name}.jpg", jpeg(Image.fromarray(canvas)))
    return folder


def snapshot(ws: Path) -> dict[str, Any]:
    """derived, decisions (current ones: of finished runs) and the stored files' bytes."""
    db = sqlite3.connect(ws / ".curate" / "manifest.sqlite")
    state: dict[str, Any] = {}
    for table in ("derived", "decisions"):
        columns = [c[1] for c in db.execute(f"PRAGMA table_info({table})") if c[1] not in WHEN]
        state[table] = sorted(map(repr, db.execute(f"SELECT {', '.join(columns)} FROM {table}")))
    state["unfinished"] = db.execute("SELECT COUNT(*) FROM runs WHERE finished_at IS NULL").fetchone()[0]
    db.close()
    state["files"] = sorted(hashlib.sha256(p.read_bytes()).hexdigest()
                            for p in (ws / "images").rglob("*") if p.is_file())
    return state


class Stop(Exception):
    pass


def stop_after(n: int) -> Callable[[int, int], None]:
    def progress(done: int, _total: int) -> None:
        if done == n:
            raise Stop
    return progress


def test_bg_and_crop_resume_with_only_the_rest(raw: Path, tmp_path: Path, executor: Executor,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(stage_run, "COMMIT_EVERY_S", -1)  # commit after every image
    bg, crop = BgConfig(method="grabcut"), CropConfig()
    ws = tmp_path / "ws"
    import_sources(ws, [raw], ImportConfig())
    with pytest.raises(Stop):
        remove_backgrounds(ws, bg, executor=executor, on_progress=stop_after(3))
    assert len(snapshot(ws)["derived"]) == 3  # kept though the run did not finish
    rest = remove_backgrounds(ws, bg, executor=executor)
    assert rest.counts()["images"] == len(NAMES) - 3 and rest.counts()["resumed"] == 3
    with pytest.raises(Stop):
        crop_images(ws, crop, executor=executor, on_progress=stop_after(2))
    rest_crop = crop_images(ws, crop, executor=executor)
    assert rest_crop.counts()["images"] == len(NAMES) - 2 and rest_crop.counts()["resumed"] == 2

    whole = tmp_path / "whole"
    import_sources(whole, [raw], ImportConfig())
    assert remove_backgrounds(whole, bg, executor=executor).counts()["images"] == len(NAMES)
    crop_images(whole, crop, executor=executor)
    stopped, clean = snapshot(ws), snapshot(whole)
    assert stopped == clean and stopped["unfinished"] == 0
    assert sum("'cutout'" in row for row in clean["derived"]) == len(NAMES)

    # a finished run is not continued: a re-run cuts every image afresh, to the same files
    again = remove_backgrounds(ws, bg, executor=executor)
    assert again.counts()["images"] == len(NAMES) and "resumed" not in again.counts()
    # other options: a stopped run is not continued either
    with pytest.raises(Stop):
        crop_images(ws, crop, executor=executor, on_progress=stop_after(2))
    other = crop_images(ws, CropConfig(padding=0.2), executor=executor)
    assert other.counts()["images"] == len(NAMES) and "resumed" not in other.counts()
