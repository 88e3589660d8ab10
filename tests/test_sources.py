"""Walking sources: zip size limits that a lying header cannot dodge, workspace exclusion."""

from __future__ import annotations

import zipfile
from pathlib import Path

import pytest

from curate.stages.ingest import ImportConfig, import_sources
from curate.stages.ingest.sources import TooLarge, ZipTree


def test_zip_member_over_limit_refused(tmp_path: Path) -> None:
    path = tmp_path / "big.zip"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("big.jpg", b"\0" * 5_000_000)
    tree = ZipTree(path)
    with pytest.raises(TooLarge):
        tree.read("big.jpg", 1_000_000)


def test_workspace_inside_source_is_not_reimported(scrape: Path, tmp_path: Path) -> None:
    import shutil
    src = tmp_path / "src"
    shutil.copytree(scrape / "hydrus", src)
    first = import_sources(src / "ws", [src], ImportConfig())
    second = import_sources(src / "ws", [src], ImportConfig())
    assert first.counts["imported"] == 2 and second.nothing_new


def test_single_image_source(scrape: Path, tmp_path: Path) -> None:
    result = import_sources(tmp_path / "ws", [scrape / "hydrus" / "Image_1.png"], ImportConfig())
    assert result.counts["imported"] == 1
    assert result.counts["ignored"] == 0
