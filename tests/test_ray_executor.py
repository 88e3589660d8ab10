"""`--executor ray`: every per-image stage gives on a real local Ray instance (2 CPUs) exactly
what the local executor gives (manifest rows, stored and derived file bytes), and a run stopped
part-way resumes with only the rest computed. Needs `ray[data]` (the `ray` extra): skipped
without it."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

pytest.importorskip("ray")
pytest.importorskip("ray.data")

from curate.cli import cli
from curate.errors import CurateError
from curate.executor import LOCAL, Executor, RayExecutor
from curate.stages.background import BgConfig, remove_backgrounds
from curate.stages.crop.config import CropConfig
from curate.stages.crop.run import crop_images
from curate.stages.dedupe.config import DedupeConfig
from curate.stages.dedupe.run import dedupe
from curate.stages.ingest import ImportConfig, import_sources
from curate.stages.quality import run as quality_run
from curate.stages.quality.config import QualityConfig
from curate.stages.tag import TagConfig, tag
from curate.stages.tag import workspace as tag_ws
from fixtures.scrape import build_kohya, jpeg, photo, png, write
from fixtures.scrapers import build_img2dataset
from fixtures.tiny_tagger import build_tiny_tagger
from tests.http_files import FileServer
from tests.snapshots import snapshot

NAMES = ("astronaut", "chelsea", "coffee", "rocket", "camera", "horse")
# every image measured, none rejected: later stages then see all six
LENIENT = QualityConfig(skip=("blur", "small", "aspect", "dark", "bright", "monochrome", "blocky", "text"))


@pytest.fixture(scope="module")
def ray_executor() -> Iterator[Executor]:
    import ray

    executor = RayExecutor(num_cpus=2)
    yield executor
    ray.shutdown()


@pytest.fixture(scope="module")
def raw(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Six small photos on a plain background (JPEG and PNG, one with a caption) and a broken file."""
    folder = tmp_path_factory.mktemp("raw") / "raw"
    rng = np.random.default_rng(0)
    for i, name in enumerate(NAMES):
        canvas = np.clip(rng.normal(225, 4, (200, 220, 3)), 0, 255).astype(np.uint8)
        canvas[40:160, 50:160] = np.asarray(photo(name).convert("RGB").resize((110, 120)))
        scene = Image.fromarray(canvas)
        write(folder / (f"{name}.jpg" if i % 2 else f"sub/{name}.png"), jpeg(scene) if i % 2 else png(scene))
    write(folder / "chelsea.txt", "cat, sitting")
    write(folder / "broken.jpg", b"\xff\xd8\xff\xe0 not really a jpeg")
    return folder


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_tagger(tmp_path_factory.mktemp("tagger") / "wd-tiny")


def both(tmp_path: Path, raw: Path, ray_executor: Executor, *stages: Any) -> tuple[dict, dict]:
    """The same stages on the same images in two workspaces, local and ray; their snapshots."""
    out = []
    for name, executor in (("local", LOCAL), ("ray", ray_executor)):
        ws = tmp_path / name
        import_sources(ws, [raw], ImportConfig(), executor=executor)
        for stage in stages:
            stage(ws, executor)
        out.append(snapshot(ws))
    return out[0], out[1]


def test_import_of_a_scrape_is_the_same(scrape: Path, tmp_path: Path, ray_executor: Executor) -> None:
    """Folders, zip and tar members, sidecars, repairs, merges and refusals alike."""
    local = import_sources(tmp_path / "local", [scrape], ImportConfig())
    remote = import_sources(tmp_path / "ray", [scrape], ImportConfig(), executor=ray_executor)
    assert remote.counts == local.counts and remote.counts["imported"] > 10 and remote.counts["skipped"]
    assert snapshot(tmp_path / "ray") == snapshot(tmp_path / "local")


def test_import_from_a_url_is_the_same(tmp_path: Path, ray_executor: Executor) -> None:
    """Workers read the source over HTTP themselves (by URL: nothing is shipped from the driver),
    archives by byte ranges."""
    pytest.importorskip("aiohttp", reason="fsspec's HTTP backend: pip install -e .[dev]")
    site = tmp_path / "site"
    build_img2dataset(site)
    build_kohya(site)
    with FileServer(site) as server:
        local = import_sources(tmp_path / "local", [server.url], ImportConfig())
        remote = import_sources(tmp_path / "ray", [server.url], ImportConfig(), executor=ray_executor)
    assert remote.counts == local.counts and remote.counts["imported"] == 7
    assert snapshot(tmp_path / "ray") == snapshot(tmp_path / "local")


def test_dedupe_hashes_and_decisions_are_the_same(scrape: Path, tmp_path: Path,
                                                   ray_executor: Executor) -> None:
    found = {}
    for name, executor in (("local", LOCAL), ("ray", ray_executor)):
        ws = tmp_path / name
        import_sources(ws, [scrape], ImportConfig())
        found[name] = dedupe(ws, DedupeConfig(), executor=executor)
        assert snapshot(ws)["hashes"]
    assert found["ray"].counts == found["local"].counts and found["ray"].duplicates > 0
    assert snapshot(tmp_path / "ray") == snapshot(tmp_path / "local")
    # a plain folder too (its hashes go to the user's cache, not a workspace)
    folder = dedupe(scrape, DedupeConfig(), executor=ray_executor)
    plain = dedupe(scrape, DedupeConfig())
    assert [(g.keeper, [m.index for m in g.duplicates]) for g in folder.groups] == \
           [(g.keeper, [m.index for m in g.duplicates]) for g in plain.groups]


def test_filter_bg_crop_and_tag_are_the_same(raw: Path, tmp_path: Path, ray_executor: Executor,
                                             model: Path) -> None:
    def quality(ws: Path, ex: Executor) -> None:
        result = quality_run.quality_filter(ws, LENIENT, executor=ex)
        assert result.measured == len(NAMES) and not result.rejected

    def bg(ws: Path, ex: Executor) -> None:
        assert remove_backgrounds(ws, BgConfig(method="grabcut"), executor=ex).counts()["cut"] >= 4

    def crop(ws: Path, ex: Executor) -> None:
        assert crop_images(ws, CropConfig(), executor=ex).counts()["cropped"] >= 4

    def tagged(ws: Path, ex: Executor) -> None:
        assert tag(ws, TagConfig(model=str(model)), executor=ex).counts["tagged"] >= 4

    local, remote = both(tmp_path, raw, ray_executor, quality, bg, crop, tagged)
    assert local["quality_scores"] and local["tags"] and local["tag_inputs"]
    assert all(any(f", '{kind}', " in row for row in local["derived"]) for kind in ("cutout", "crop"))
    assert remote == local


def test_a_stopped_run_resumes_with_only_the_rest(raw: Path, tmp_path: Path, ray_executor: Executor,
                                                  model: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Results are committed as they stream in: stopping after 3 images keeps those 3, and the
    next run computes only the others (import, filter scores, tags), ending where a run that was
    never stopped ends."""
    monkeypatch.setattr(quality_run, "COMMIT_EVERY_S", -1)  # commit after every image
    monkeypatch.setattr(tag_ws, "COMMIT_EVERY_S", -1)

    class Stop(Exception):
        pass

    def stop_after(n: int):  # type: ignore[no-untyped-def]
        def progress(done: int, _total: int) -> None:
            if done == n:
                raise Stop
        return progress

    ws = tmp_path / "ws"
    with pytest.raises(Stop):
        import_sources(ws, [raw], ImportConfig(), executor=ray_executor, on_progress=stop_after(3))
    again = import_sources(ws, [raw], ImportConfig(), executor=ray_executor)
    assert again.counts["unchanged"] == 3 and again.counts["imported"] + again.counts["skipped"] == 4
    config = LENIENT
    with pytest.raises(Stop):
        quality_run.quality_filter(ws, config, executor=ray_executor, on_progress=stop_after(3))
    assert quality_run.quality_filter(ws, config, executor=ray_executor).measured == len(NAMES) - 3
    with pytest.raises(Stop):
        tag(ws, TagConfig(model=str(model)), executor=ray_executor, on_progress=stop_after(3))
    rest = tag(ws, TagConfig(model=str(model)), executor=ray_executor)
    assert rest.counts["already tagged"] == 3 and rest.counts["tagged"] == len(NAMES) - 3

    clean = tmp_path / "clean"
    import_sources(clean, [raw], ImportConfig())
    quality_run.quality_filter(clean, config)
    tag(clean, TagConfig(model=str(model)))
    stopped, whole = snapshot(ws), snapshot(clean)
    for table in ("images", "origins", "tags", "captions", "quality_scores", "tag_inputs", "files"):
        assert stopped[table] == whole[table], table


def test_cli_dedupe_and_run_take_the_executor(raw: Path, tmp_path: Path, ray_executor: Executor) -> None:
    """--executor ray on `curate dedupe` and `curate run` (Ray already up: the same instance)."""
    ws = tmp_path / "ws"
    out = CliRunner().invoke(cli, ["run", str(ws), "--sources", str(raw), "--stages", "import,dedupe,filter",
                                   "--set", "filter.min_side=64", "--executor", "ray", "--json"])
    assert out.exit_code == 0, out.output
    out = CliRunner().invoke(cli, ["dedupe", str(ws), "--executor", "ray", "--json"])
    assert out.exit_code == 0 and '"images": 6' in out.output, out.output


def test_without_ray_the_flag_says_how_to_install_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import builtins

    real = builtins.__import__

    def no_ray(name: str, *args: Any, **kwargs: Any) -> Any:
        if name == "ray" or name.startswith("ray."):
            raise ImportError(f"No module named {name!r}")
        return real(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_ray)
    out = CliRunner().invoke(cli, ["dedupe", str(tmp_path), "--executor", "ray"])
    assert out.exit_code != 0 and "pip install 'curate[ray]'" in out.output
    assert "Traceback" not in out.output and len(out.output.strip().splitlines()) == 1


def test_a_model_that_will_not_load_on_the_actors_is_one_line(tmp_path: Path, raw: Path, model: Path,
                                                               ray_executor: Executor) -> None:
    """The actor's CurateError reaches the driver as itself, not as Ray's wrapped traceback."""
    broken = tmp_path / "wd-broken"
    broken.mkdir()
    (broken / "selected_tags.csv").write_bytes((model / "selected_tags.csv").read_bytes())
    (broken / "model.onnx").write_bytes(b"not an onnx model")
    with pytest.raises(CurateError) as local:
        tag(raw, TagConfig(model=str(broken)))
    with pytest.raises(CurateError) as remote:
        tag(raw, TagConfig(model=str(broken)), executor=ray_executor)
    assert str(remote.value) == str(local.value) and "\n" not in str(remote.value)
