"""`curate buckets`: the report on a workspace or dataset folder, fixes, and a fixed copy."""

from __future__ import annotations

import json
from pathlib import Path

from click.testing import CliRunner
from PIL import Image

from curate.buckets import BucketConfig, assign
from curate.cli import cli
from curate.stages.bucketing import buckets_for
from curate.stages.ingest import ImportConfig, import_sources
from fixtures.scrape import jpeg, photo, write
from tests.conftest import tree_state


def build_dataset(root: Path) -> Path:
    """Eight square images and three 4:3 strays, with captions, in a Kohya folder."""
    astro = photo("astronaut").convert("RGB")
    folder = root / "10_sks"
    for i in range(8):
        write(folder / f"sq{i}.jpg", jpeg(astro.resize((512 + 8 * i, 512 + 8 * i))))
        write(folder / f"sq{i}.txt", "sks, square\n")
    for i in range(3):
        write(folder / f"wide{i}.jpg", jpeg(astro.resize((600 + 40 * i, 450 + 30 * i))))
        write(folder / f"wide{i}.txt", "sks, wide\n")
    return root


def test_report_and_fixes_on_a_folder(tmp_path: Path) -> None:
    root = build_dataset(tmp_path / "ds")
    result = buckets_for(root, BucketConfig(), batch_size=4, fix=True, max_loss=0.3)
    counts = {b.resolution: b.count for b in result.report.buckets}
    assert counts == {(512, 512): 8, (576, 448): 3}
    assert any("scattered" in w for w in result.report.warnings)
    assert {f.key for f in result.fixes} == {"10_sks/wide0.jpg", "10_sks/wide1.jpg", "10_sks/wide2.jpg"}
    assert result.after is not None and [b.resolution for b in result.after.buckets] == [(512, 512)]


def test_apply_to_writes_a_fixed_resized_copy(tmp_path: Path) -> None:
    root = build_dataset(tmp_path / "ds")
    before = tree_state(root)
    out = tmp_path / "fixed"
    res = CliRunner().invoke(cli, ["buckets", str(root), "--batch-size", "4", "--max-loss", "0.3",
                                   "--apply-to", str(out), "--resize", "--json"])
    assert res.exit_code == 0, res.output
    assert tree_state(root) == before
    data = json.loads(res.output)
    assert data["written"] == 11 and data["after_fixes"] == [{"resolution": [512, 512], "images": 11}]
    for image in (out / "10_sks").glob("*.jpg"):
        with Image.open(image) as im:
            assert im.size == (512, 512)
        assert image.with_suffix(".txt").is_file()
    assert assign((512, 512), BucketConfig()).bucket == (512, 512)


def test_workspace_report_and_dataset_toml_settings(tmp_path: Path) -> None:
    root = build_dataset(tmp_path / "ds")
    ws = tmp_path / "ws"
    import_sources(ws, [root], ImportConfig(workers=1))
    res = CliRunner().invoke(cli, ["buckets", str(ws), "--json", "--resolution", "768"])
    assert res.exit_code == 0, res.output
    assert sum(b["images"] for b in json.loads(res.output)["buckets"]) == 11
    bad = CliRunner().invoke(cli, ["buckets", str(ws), "--apply-to", str(tmp_path / "x")])
    assert bad.exit_code == 2 and "curate layout" in bad.output
    (root / "dataset.toml").write_text("[general]\n[[datasets]]\nresolution = 768\nbatch_size = 1\n")
    res = CliRunner().invoke(cli, ["buckets", str(root), "--json"])
    assert {tuple(b["resolution"]) for b in json.loads(res.output)["buckets"]} <= {
        r for r in map(tuple, [[768, 768], [896, 640], [832, 704]])}
