"""Shared fixtures: the fixture scrape is built once per session from scikit-image's photos,
and imported once into a workspace that read-only tests share."""

from __future__ import annotations

import hashlib
import os
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
