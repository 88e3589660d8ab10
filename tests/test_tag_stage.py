"""`curate tag` on plain folders and workspaces, with the tiny SmilingWolf-layout fixture model."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

from curate.cli import cli
from curate.stages.dedupe.config import DedupeConfig
from curate.stages.dedupe.run import dedupe
from curate.stages.ingest import ImportConfig, import_sources
from curate.stages.tag import TagConfig, tag
from curate.stages.tag.compose import STORE_FLOOR
from curate.tagging.captions import caption_of
from curate.workspace import Workspace
from fixtures.scrape import jpeg, photo, write
from fixtures.tiny_tagger import build_tiny_tagger
from tests.conftest import tree_state


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_tagger(tmp_path_factory.mktemp("tagger") / "wd-tiny")


def build_folder(root: Path) -> Path:
    for name in ("astronaut", "chelsea", "coffee", "rocket"):
        write(root / f"{name}.jpg", jpeg(photo(name).convert("RGB")))
    write(root / "sub/broken.jpg", b"\xff\xd8\xff\xe0 not really a jpeg")
    return root


def config(model: Path, **kw: object) -> TagConfig:
    return TagConfig(model=str(model), **kw)  # type: ignore[arg-type]


def test_folder_writes_one_line_captions_beside_images(tmp_path: Path, model: Path) -> None:
    root = build_folder(tmp_path / "raw")
    result = tag(root, config(model))
    assert result.counts == {"written": 4}
    for name in ("astronaut", "chelsea", "coffee", "rocket"):
        text = (root / f"{name}.txt").read_text(encoding="utf-8")
        assert text.endswith("\n") and text.count("\n") == 1
        tags = text.strip().split(", ")
        assert tags and all(t and "_" not in t.replace("^_^", "") for t in tags)
    assert not (root / "sub/broken.txt").exists()
    assert [f for f, _r in result.skipped] == [str(root / "sub/broken.jpg")]
    assert not list(root.rglob(".curate-tmp-*"))


def test_folder_existing_captions_skip_append_overwrite(tmp_path: Path, model: Path) -> None:
    root = build_folder(tmp_path / "raw")
    (root / "coffee.txt").write_text("my tag, coffee\n", encoding="utf-8")
    kept = tag(root, config(model))
    assert kept.counts == {"kept": 1, "written": 3}
    assert (root / "coffee.txt").read_text() == "my tag, coffee\n"
    appended = tag(root, config(model, existing="append"))
    text = (root / "coffee.txt").read_text().strip().split(", ")
    assert text[:2] == ["my tag", "coffee"] and len(text) > 2 and text.count("coffee") == 1
    assert appended.counts["appended"] == 4
    tag(root, config(model, existing="overwrite"))
    assert "my tag" not in (root / "coffee.txt").read_text()


def test_folder_dry_run_and_caption_ext(tmp_path: Path, model: Path) -> None:
    root = build_folder(tmp_path / "raw")
    before = tree_state(root)
    result = tag(root, config(model, caption_ext=".caption"), dry_run=True)
    assert tree_state(root) == before and len(result.captions) == 4
    tag(root, config(model, caption_ext=".caption"))
    assert sorted(p.name for p in root.glob("*.caption")) == [
        "astronaut.caption", "chelsea.caption", "coffee.caption", "rocket.caption"]


def test_thresholds_change_captions(tmp_path: Path, model: Path) -> None:
    root = build_folder(tmp_path / "raw")
    loose = tag(root, config(model, threshold=0.2), dry_run=True)
    strict = tag(root, config(model, threshold=0.6), dry_run=True)
    n_loose = sum(len(c.split(", ")) for _i, c in loose.captions)
    n_strict = sum(len(c.split(", ")) for _i, c in strict.captions if c)
    assert n_strict < n_loose
    capped = tag(root, config(model, threshold=0.2, max_tags=2), dry_run=True)
    assert all(len(c.split(", ")) <= 2 for _i, c in capped.captions)


@pytest.fixture
def workspace(tmp_path: Path) -> Path:
    raw = build_folder(tmp_path / "raw")
    write(raw / "coffee_copy.jpg", jpeg(photo("coffee").convert("RGB"), quality=80))
    write(raw / "rocket.jpg.txt", "rocket\nsky\n")  # gallery-dl style tags
    ws = tmp_path / "ws"
    import_sources(ws, [raw], ImportConfig(workers=1))
    dedupe(ws, DedupeConfig(verify=False, workers=1))
    return ws


def test_workspace_stores_probabilities_and_skips_duplicates(workspace: Path, model: Path) -> None:
    result = tag(workspace, config(model))
    assert result.counts == {"already tagged": 0, "tagged": 4}  # coffee_copy is a duplicate
    with Workspace.open(workspace) as ws:
        rows = ws.manifest.rows("SELECT tag, category, confidence FROM tags WHERE source = 'tagger:wd-tiny'")
        assert {r["category"] for r in rows} >= {"rating", "general"}
        assert all(r["confidence"] >= STORE_FLOOR or r["category"] == "rating" for r in rows)
        assert len([r for r in rows if r["category"] == "rating"]) == 4 * 4
        captions = {r.sha256: caption_of(r) for r in ws.active_records()}  # compiled from the annotations
        assert len(captions) == 4 and all(captions.values())
        rocket = next(r for r in ws.records() if r.origins[0].source_path.endswith("rocket.jpg"))
        assert captions[rocket.sha256] == "rocket, sky"  # imported tags kept (existing = skip)
        assert caption_of(rocket) == "rocket, sky"
    again = tag(workspace, config(model))
    assert again.counts == {"already tagged": 4}


def test_rethreshold_needs_no_model(workspace: Path, model: Path, tmp_path: Path) -> None:
    copy = shutil.copytree(model, tmp_path / "wd-tiny")
    tag(workspace, config(copy, threshold=0.2))
    shutil.rmtree(copy)  # the model is gone: re-thresholding must not need it
    with Workspace.open(workspace) as ws:
        before = {r.sha256: caption_of(r) or "" for r in ws.active_records()}
    result = tag(workspace, config(copy, threshold=0.6, existing="overwrite"), rethreshold=True)
    assert result.counts == {"re-thresholded": 4}
    with Workspace.open(workspace) as ws:
        after = {r.sha256: caption_of(r) or "" for r in ws.active_records()}
    assert sum(len(t.split(", ")) for t in after.values() if t) < sum(
        len(t.split(", ")) for t in before.values())


def test_cli_errors_are_one_line(tmp_path: Path, model: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = build_folder(tmp_path / "raw")
    runner = CliRunner()
    res = runner.invoke(cli, ["tag", str(root), "--model", str(tmp_path / "raw")])
    assert res.exit_code == 2 and res.output.count("\n") == 1 and "model.onnx" in res.output
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    res = runner.invoke(cli, ["tag", str(root), "--model", "SmilingWolf/wd-swinv2-tagger-v3"])
    assert res.exit_code == 2 and res.output.count("\n") == 1
    assert "https://huggingface.co/SmilingWolf/wd-swinv2-tagger-v3/resolve/main/model.onnx" in res.output
    res = runner.invoke(cli, ["tag", str(root), "--rethreshold"])
    assert res.exit_code == 2 and "needs a workspace" in res.output


def test_cli_json(tmp_path: Path, model: Path) -> None:
    root = build_folder(tmp_path / "raw")
    res = CliRunner().invoke(cli, ["tag", str(root), "--model", str(model), "--json", "--threshold", "0.3"])
    assert res.exit_code == 0, res.output
    data = json.loads(res.output)
    assert data["counts"] == {"written": 4} and data["providers"][-1] == "CPUExecutionProvider"
    assert len(data["captions"]) == 4 and data["skipped"][0]["file"].endswith("broken.jpg")


def test_folder_and_workspace_tag_alike(tmp_path: Path, model: Path) -> None:
    """One per-image step (compose.tag_items) behind both: the same images with the same
    captions they came with get the same caption tags in a folder and in a workspace."""
    root = build_folder(tmp_path / "raw")
    (root / "coffee.txt").write_text("my tag, coffee\n", encoding="utf-8")
    shutil.copytree(root, tmp_path / "copy")
    import_sources(tmp_path / "ws", [tmp_path / "copy"], ImportConfig())
    tag(root, config(model, existing="append"))
    tag(tmp_path / "ws", config(model, existing="append"))
    with Workspace.open(tmp_path / "ws") as ws:
        in_ws = {Path(r.origins[0].source_path).stem: caption_of(r) for r in ws.active_records()}
    in_folder = {name: (root / f"{name}.txt").read_text(encoding="utf-8").strip()
                 for name in ("astronaut", "chelsea", "coffee", "rocket")}
    assert in_folder["coffee"].startswith("my tag, coffee, ")
    assert in_ws == in_folder
