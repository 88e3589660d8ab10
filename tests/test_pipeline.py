"""`curate run`: every stage in order on the fixture scrape; a re-run skips what did not change;
hand edits (a dataset caption, keep.txt, a new scrape file) re-run only what they touch and
are kept; a run killed with SIGKILL and re-run ends where an uninterrupted run ends."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from curate.cli import cli
from curate.errors import CurateError
from curate.pipeline import run_pipeline
from curate.tagging.captions import caption_of
from curate.workspace import Workspace
from fixtures.scrape import jpeg, photo
from fixtures.tiny_tagger import build_tiny_tagger

STAGES = ["import", "dedupe", "filter", "tag", "tags-filter", "captions", "layout", "check"]


@pytest.fixture(scope="module")
def tagger(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_tagger(tmp_path_factory.mktemp("tagger") / "wd-tiny")


def make_workspace(root: Path, scrape: Path, tagger: Path, extra: str = "") -> Path:
    """A workspace folder holding only a curate.toml: `curate run` imports into it."""
    src = root / "scrape"
    shutil.copytree(scrape, src, symlinks=True)
    ws = root / "ws"
    ws.mkdir()
    (ws / "curate.toml").write_text(
        f'[run]\nsources = ["{src}"]\ntrigger = "sks"\nclass_token = "woman"\nstages = {json.dumps(STAGES)}\n'
        f'[tag]\nmodel = "{tagger}"\n[layout]\ntarget_steps = 500\n{extra}', encoding="utf-8")
    return ws


def dataset_state(ws: Path) -> dict[str, str]:
    """Every dataset file by content (not time): what a trainer would read. dataset.toml names
    its folders by absolute path, so the workspace's own path is taken out of it."""
    root = ws / "dataset"
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes().replace(str(ws).encode(), b"WS"))
            .hexdigest() for p in sorted(root.rglob("*")) if p.is_file() and not p.name.startswith(".curate")}


def statuses(result: object) -> dict[str, str]:
    return {o.name: o.status for o in result.stages}  # type: ignore[attr-defined]


def test_rerun_skips_unchanged_stages_and_keeps_the_result(scrape: Path, tagger: Path,
                                                           tmp_path: Path) -> None:
    ws = make_workspace(tmp_path, scrape, tagger)
    first = run_pipeline(ws)
    assert statuses(first) == dict.fromkeys(STAGES, "ran")
    before = dataset_state(ws)
    assert any(name.endswith(".txt") for name in before) and "dataset.toml" in before
    again = run_pipeline(ws)
    assert statuses(again) == {**dict.fromkeys(STAGES, "unchanged"), "import": "ran", "check": "ran"}
    assert dataset_state(ws) == before
    forced = run_pipeline(ws, force=["tag"], only="tag")
    assert statuses(forced) == {"tag": "ran"}


def test_hand_edits_are_kept_and_rerun_only_what_they_touch(scrape: Path, tagger: Path,
                                                            tmp_path: Path) -> None:
    ws = make_workspace(tmp_path, scrape, tagger)
    run_pipeline(ws)
    caption = sorted((ws / "dataset").rglob("*.txt"))[0]
    caption.write_text("sks, woman, my own words\n", encoding="utf-8")
    result = run_pipeline(ws)
    assert statuses(result)["layout"] == "ran" and statuses(result)["tag"] == "unchanged"
    layout = next(o.result for o in result.stages if o.name == "layout")
    assert layout and [e["caption"] for e in layout["kept_edits"]] == ["sks, woman, my own words"]
    assert caption.read_text(encoding="utf-8").strip() == "sks, woman, my own words"
    with Workspace.open(ws) as w:  # the workspace now carries the edit for every later stage
        assert "sks, woman, my own words" in {caption_of(r) for r in w.active_records()}
    # a second hand edit while a filter rule names a tag of it: the user's caption wins over every
    # stage (issue 15), so the rule leaves it alone and there is nothing to conflict with
    caption.write_text("sks, woman, my own words, 1girl\n", encoding="utf-8")
    with (ws / "curate.toml").open("a", encoding="utf-8") as fh:
        fh.write('[filter]\nblacklist = ["my own words"]\n')
    result = run_pipeline(ws)
    layout = next(o.result for o in result.stages if o.name == "layout")
    assert layout and layout["conflicts"] == []
    assert [e["caption"] for e in layout["kept_edits"]] == ["sks, woman, my own words, 1girl"]
    assert caption.read_text(encoding="utf-8").strip() == "sks, woman, my own words, 1girl"


def test_keep_txt_and_new_scrape_files_rerun_their_stages(scrape: Path, tagger: Path, tmp_path: Path) -> None:
    ws = make_workspace(tmp_path, scrape, tagger)
    run_pipeline(ws)
    (ws / "keep.txt").write_text("nothing-that-matches.jpg\n", encoding="utf-8")
    assert statuses(run_pipeline(ws))["dedupe"] == "ran"
    (tmp_path / "scrape" / "new_bike.jpg").write_bytes(jpeg(photo("motorcycle_left").convert("RGB")))
    result = statuses(run_pipeline(ws))
    assert result["dedupe"] == result["tag"] == result["layout"] == "ran"
    assert any("new_bike" in name for name in dataset_state(ws))


def test_errors_name_the_stage_and_what_to_do(scrape: Path, tagger: Path, tmp_path: Path) -> None:
    ws = make_workspace(tmp_path, scrape, tagger)
    with pytest.raises(CurateError, match="unknown stage 'tagging'"):
        run_pipeline(ws, only="tagging")
    with pytest.raises(CurateError, match=r"stage tag: .*no-such-model"):
        run_pipeline(ws, overrides=["tag.model=no-such-model"])
    with Workspace.open(ws) as w:  # what ran before the failure is kept and keyed
        assert w.active_records()
    result = run_pipeline(ws)  # fixed: it goes on from where it stopped
    assert statuses(result)["dedupe"] == "unchanged" and statuses(result)["tag"] == "ran"
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(CurateError, match=r"run\.sources is empty"):
        run_pipeline(empty, only="import")
    # every stage's options are read before the first runs: nothing is imported into `empty`
    with pytest.raises(CurateError, match=r"stage captions: run\.trigger is not set"):
        run_pipeline(empty, overrides=[f'run.sources=["{scrape}"]'])
    assert not (empty / ".curate").exists()


def test_cli_json_and_exit_status(scrape: Path, tagger: Path, tmp_path: Path) -> None:
    ws = make_workspace(tmp_path, scrape, tagger)
    result = CliRunner().invoke(cli, ["run", str(ws), "--json", "--from", "import"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert [s["stage"] for s in data["stages"]] == STAGES
    result = CliRunner().invoke(cli, ["run", str(ws), "--only", "layout", "--force", "layout"])
    assert result.exit_code == 0 and "1 of 1 stages ran (layout)" in result.output


def test_run_options_as_flags(scrape: Path, tagger: Path, tmp_path: Path,
                              monkeypatch: pytest.MonkeyPatch) -> None:
    """[run]'s common options are flags too (declared once, in RunConfig): a flag wins over
    curate.toml, and a path given as a flag is the shell's (relative to the current folder)."""
    ws = make_workspace(tmp_path, scrape, tagger)
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(cli, ["run", "ws", "--sources", "scrape", "--trigger", "zkx",
                                      "--class-token", "man", "--stages", "import,captions,layout", "--json"])
    assert result.exit_code == 0, result.output
    assert [s["stage"] for s in json.loads(result.stdout)["stages"]] == ["import", "captions", "layout"]
    captions = [p.read_text(encoding="utf-8") for p in (ws / "dataset").rglob("*.txt")]
    # the trigger everywhere; the class token where no imported Kohya folder named its own
    assert captions and all(c.startswith("zkx, ") for c in captions), captions[:2]
    assert any(c.startswith("zkx, man") for c in captions) and not any("sks," in c for c in captions)
    bad = CliRunner().invoke(cli, ["run", "ws", "--stages", "import,tagz"])
    assert bad.exit_code != 0 and "unknown stage(s) tagz" in bad.output


def _curate_run(ws: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-m", "curate", "run", str(ws), "-q"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def test_sigkill_then_rerun_matches_an_uninterrupted_run(scrape: Path, tagger: Path, tmp_path: Path) -> None:
    clean = make_workspace(tmp_path / "a", scrape, tagger)
    run_pipeline(clean)
    killed = make_workspace(tmp_path / "b", scrape, tagger)
    kills = 0
    for delay in (0.8, 1.6, 2.4):
        proc = _curate_run(killed)
        time.sleep(delay)
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
            kills += 1
        proc.wait(timeout=60)
    assert kills  # at least one run died part-way
    run_pipeline(killed)
    assert dataset_state(killed) == dataset_state(clean)
    leftovers = [p for p in killed.rglob("*") if p.name.startswith(".curate-tmp") or "-old-" in p.name]
    assert not leftovers


def test_init_template_documents_real_options() -> None:
    """Uncommenting every `# key = value` line of the curate.toml that `curate init` writes gives
    options each stage accepts: the template cannot drift from the code."""
    import re
    import tomllib

    from curate.config import SECTIONS, build, section_class
    from curate.workspace import default_config

    text = re.sub(r"^# (\S+ = .*)$", r"\1", default_config(), flags=re.MULTILINE)
    tables = tomllib.loads(text)
    for section in SECTIONS:
        if section == "train":
            continue
        assert tables[section], section
        build(section_class(section), section, tables[section])
    pytest.importorskip("torch")
    from curate.trainer.config import TrainConfig

    build(TrainConfig, "train", tables["train"])


def test_crops_csv_reruns_crop_and_the_users_box_wins(scrape: Path, tagger: Path, tmp_path: Path) -> None:
    stages = ["import", "dedupe", "filter", "crop", "tag", "layout"]
    ws = make_workspace(tmp_path, scrape, tagger, '[crop]\nsize = 128\n')
    toml = ws / "curate.toml"
    toml.write_text(toml.read_text(encoding="utf-8").replace(json.dumps(STAGES), json.dumps(stages)),
                    encoding="utf-8")
    run_pipeline(ws)
    with Workspace.open(ws) as w:
        record = w.active_records()[0]
    (ws / "crops.csv").write_text(f"{record.sha256},10,20,100,100\n", encoding="utf-8")
    run = run_pipeline(ws)
    result = statuses(run)
    assert result["crop"] == "ran" and result["tag"] == "ran" and result["dedupe"] == "unchanged"
    tagged = next(o.result for o in run.stages if o.name == "tag")
    assert tagged and tagged["counts"]["tagged again (new crop)"] == 1  # the new crop's tags, not the old
    with Workspace.open(ws) as w:
        rows = w.manifest.rows("SELECT json_extract(info, '$.subject') AS subject FROM derived "
                               "WHERE image_sha256 = ? AND kind = 'crop'", [record.sha256])
    assert rows and rows[0]["subject"] == "user"
    assert statuses(run_pipeline(ws))["crop"] == "unchanged"


def test_train_stage_runs_once_and_is_skipped_when_nothing_changed(scrape: Path, tagger: Path, tiny_sd: Path,
                                                                    tmp_path: Path) -> None:
    pytest.importorskip("diffusers")
    stages = ["import", "dedupe", "layout", "train"]
    extra = ('[train]\nmax_train_steps = 2\nresolution = 64\nmin_bucket_reso = 64\nmax_bucket_reso = 128\n'
             'network_dim = 2\n')
    ws = make_workspace(tmp_path, scrape, tagger, extra)
    toml = ws / "curate.toml"
    text = toml.read_text(encoding="utf-8").replace(json.dumps(STAGES), json.dumps(stages))
    toml.write_text(text.replace("[run]\n", f'[run]\nmodel = "{tiny_sd}"\n', 1), encoding="utf-8")
    first = run_pipeline(ws)
    trained = next(o.result for o in first.stages if o.name == "train")
    assert trained and trained["steps"] == 2 and (ws / "lora" / "last.safetensors").is_file()
    assert statuses(run_pipeline(ws))["train"] == "unchanged"
    assert statuses(run_pipeline(ws, overrides=["train.max_train_steps=3"]))["train"] == "ran"
