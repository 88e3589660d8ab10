"""Shared fixtures: the fixture scrape is built once per session from scikit-image's photos,
and imported once into a workspace that read-only tests share."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from curate.stages.ingest import ImportConfig, ImportResult, import_sources
from fixtures.scrape import build_scrape


@pytest.fixture(scope="session")
def scrape(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_scrape(tmp_path_factory.mktemp("fixtures"))


@pytest.fixture(scope="session")
def imported(scrape: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, ImportResult]:
    ws = tmp_path_factory.mktemp("ws") / "ws"
    return ws, import_sources(ws, [scrape], ImportConfig())


def tree_state(root: Path) -> dict[str, tuple[str, int]]:
    """Content hash and mtime of every file below root (links recorded, not followed)."""
    state = {}
    for dirpath, _dirs, files in os.walk(root):
        for name in files:
            path = Path(dirpath) / name
            if path.is_symlink():
                state[str(path)] = (os.readlink(path), 0)
                continue
            st = path.stat()
            state[str(path)] = (hashlib.sha256(path.read_bytes()).hexdigest(), st.st_mtime_ns)
    return state


@pytest.fixture(scope="module")
def one_thread() -> Iterator[None]:
    """One intra-op torch thread for a module's tests: on a busy 2-core CI machine two spinning
    threads slow the tiny models down 20-50x (measured: 30 steps 155 s at load 5.6, against 3 s
    idle); one is steady. Modules opt in with `pytestmark = pytest.mark.usefixtures("one_thread")`."""
    torch = pytest.importorskip("torch")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def tiny_sd(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny SD-shaped diffusers model (fixtures/tiny_sd.py), built once; tests only read it."""
    pytest.importorskip("diffusers")
    from fixtures.tiny_sd import build_tiny_sd

    return build_tiny_sd(tmp_path_factory.mktemp("tiny_sd") / "model")


@pytest.fixture(scope="session")
def photos_dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Four of scikit-image's photos at 128 px, captioned "sks, NAME, photo", in one 1_sks
    folder: a Kohya dataset the trainer tests read (and never write)."""
    import skimage.data
    from PIL import Image

    root = tmp_path_factory.mktemp("dataset")
    folder = root / "1_sks"
    folder.mkdir()
    for name in ("astronaut", "coffee", "chelsea", "rocket"):
        image = Image.fromarray(getattr(skimage.data, name)()).convert("RGB").resize((128, 128))
        image.save(folder / f"{name}.png")
        (folder / f"{name}.txt").write_text(f"sks, {name}, photo", encoding="utf-8")
    return root


@pytest.fixture(scope="session")
def vlm_models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The tiny vision-language models (fixtures/tiny_vlm.py), family -> folder, built once
    (~5 s for all); tests only read them."""
    pytest.importorskip("transformers")
    from fixtures.tiny_vlm import build_all

    return build_all(tmp_path_factory.mktemp("tiny_vlm"))
