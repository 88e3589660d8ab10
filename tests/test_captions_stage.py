"""`curate tags filter` and `curate captions ...` on caption files and workspace captions."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from curate.cli import cli
from curate.errors import CurateError
from curate.stages.captions.edit import set_trigger
from curate.stages.captions.filter import FilterStageConfig, run_filter
from curate.stages.ingest import ImportConfig, import_sources
from curate.tagging.captions import caption_of
from curate.workspace import Workspace
from fixtures.scrape import jpeg, photo, write
from tests.conftest import tree_state

CAPTIONS = {
    f"img{i}": ["1girl", "solo", "blonde hair" if i != 7 else "brown hair", "blue eyes", "white shirt",
                "shirt" if i == 3 else "smile", "long hair"]
    for i in range(8)
}


def build_dataset(root: Path) -> Path:
    """8 images of one blonde character; img7's tagger said 'brown hair'; img3 has 'shirt'
    beside 'white shirt'."""
    base = photo("astronaut").convert("RGB")
    for i, (name, tags) in enumerate(CAPTIONS.items()):
        write(root / f"{name}.jpg", jpeg(base.crop((i * 8, 0, 400 + i * 8, 400))))
        write(root / f"{name}.txt", ", ".join(tags) + "\n")
    return root


def read(root: Path, name: str) -> list[str]:
    return (root / f"{name}.txt").read_text(encoding="utf-8").strip().split(", ")


def test_filter_folder_dry_run_then_apply(tmp_path: Path) -> None:
    root = build_dataset(tmp_path / "10_sks")
    before = tree_state(root)
    dry = run_filter(root, FilterStageConfig(), dry_run=True)
    assert tree_state(root) == before
    assert sorted(dry.changed) == ["img3.jpg", "img7.jpg"]
    assert any(line.startswith("img7.jpg: - brown hair") and "exclusive:hair" in line for line in dry.diff)
    assert any(line.startswith("img3.jpg: - shirt") and "implies:white shirt>shirt" in line
               for line in dry.diff)
    run_filter(root, FilterStageConfig())
    assert "brown hair" not in read(root, "img7") and "shirt" not in read(root, "img3")
    assert read(root, "img0") == CAPTIONS["img0"]  # untouched captions are not rewritten
    assert (root / "img0.txt").stat().st_mtime_ns == before[str(root / "img0.txt")][1]


def test_filter_multi_character_keeps_colours_and_bad_caption_is_skipped(tmp_path: Path) -> None:
    root = build_dataset(tmp_path / "ds")
    (root / "img5.txt").write_bytes(b"\xff\xfe\x00 not utf-8 \x81")
    run = run_filter(root, FilterStageConfig(single_character=False, implications=False), dry_run=True)
    assert run.changed == [] and run.images == 7
    assert [f for f, _r in run.skipped] == [str(root / "img5.txt")]


@pytest.fixture
def workspace(tmp_path: Path) -> Path:
    ws = tmp_path / "ws"
    import_sources(ws, [build_dataset(tmp_path / "5_sks")], ImportConfig(workers=1))
    return ws


def test_filter_workspace_records_each_removal(workspace: Path) -> None:
    run = run_filter(workspace, FilterStageConfig())
    assert len(run.changed) == 2
    with Workspace.open(workspace) as ws:
        removed = ws.manifest.decisions(stage="filter", verdict="tag-removed")
        assert sorted(r["reason"].split(":")[0] for r in removed) == ["exclusive", "implies"]
        assert any(r["subject"].endswith("img7.jpg: brown hair") for r in removed)
        captions = {r.origins[0].source_path.rsplit("/", 1)[1]: caption_of(r) for r in ws.records()}
    assert "brown hair" not in captions["img7.jpg"] and "blonde hair" in captions["img0.jpg"]


def test_trigger_first_once_and_keep_tokens_recorded(workspace: Path) -> None:
    run = set_trigger(workspace, "sks", "woman")
    assert run.settings["keep_tokens"] == 2 and len(run.changed) == 8
    with Workspace.open(workspace) as ws:
        assert ws.manifest.settings()["trigger"] == "sks"
        assert all(caption_of(r).startswith("sks, woman, 1girl") for r in ws.records())  # type: ignore[union-attr]
    again = set_trigger(workspace, "SKS", "woman")  # same trigger, other case: nothing to do but case
    assert all(line.count("sks") <= 1 for line in again.diff)
    # where ||| goes in a workspace is the caption format's (layout), never a silent no-op flag
    with pytest.raises(CurateError, match=r"--separator .* plain folder.*\[captions\] format"):
        set_trigger(workspace, "sks", "woman", separator=True)


def test_trigger_separator_form_in_folder(tmp_path: Path) -> None:
    root = build_dataset(tmp_path / "ds")
    (root / "img1.txt").write_text("1girl, sks, solo\n")
    set_trigger(root, "sks", separator=True)
    assert (root / "img1.txt").read_text() == "sks ||| 1girl, solo\n"


def test_captions_cli_edits_and_stats(tmp_path: Path) -> None:
    root = build_dataset(tmp_path / "ds")
    runner = CliRunner()

    def run(*args: str) -> str:
        res = runner.invoke(cli, ["captions", *args])
        assert res.exit_code == 0, res.output
        return res.output

    run("replace", str(root), "brown_hair", "blonde hair")
    assert read(root, "img7")[2] == "blonde hair"
    run("remove", str(root), "solo")
    assert "solo" not in read(root, "img0")
    run("add", str(root), "outdoors", "--position", "start")
    assert read(root, "img4")[0] == "outdoors"
    run("regex", str(root), "^(.*) eyes$", r"\1 eyes, eyes")
    assert "eyes" in read(root, "img2") and "blue eyes" in read(root, "img2")
    run("sort", str(root), "--by", "alpha", "--keep-first", "1")
    tags = read(root, "img0")
    assert tags[0] == "outdoors" and tags[1:] == sorted(tags[1:])
    data = json.loads(run("stats", str(root), "--json", "--tag", "blue eyes"))
    assert data["images"] == 8 and data["tags"][0]["images"] == 8
    assert {"tag": "eyes", "images": 8} in data["cooccurrence"]["blue eyes"]
    bad = runner.invoke(cli, ["captions", "regex", str(root), "([", "x"])
    assert bad.exit_code == 2 and bad.output.count("\n") == 1


def test_tags_filter_cli_json(tmp_path: Path) -> None:
    root = build_dataset(tmp_path / "ds")
    args = ["tags", "filter", str(root), "--json", "--dry-run", "--blacklist", "smile"]
    res = CliRunner().invoke(cli, args)
    assert res.exit_code == 0, res.output
    data = json.loads(res.output)
    assert data["removed_by_rule"] == {"blacklist": 7, "exclusive": 1, "implies": 1}
    assert data["dry_run"] and len(data["diff"]) == 9
