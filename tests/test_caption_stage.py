"""`curate caption` on workspaces and plain folders, against the real chat-completions test server
(tests/vlm_server.py): its answer names the image (size, mean colour) and echoes the prompt, so
a test can plant a bad answer through an image's tags and a `{tags}` template."""

from __future__ import annotations

import json
import random
import re
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner

from curate.cli import cli
from curate.manifest import SCHEMA_VERSION
from curate.pipeline import run_pipeline
from curate.record import CAPTION_REJECTED
from curate.stages.caption import CaptionConfig, caption, show
from curate.stages.captions.edit import set_trigger
from curate.stages.ingest import ImportConfig, import_sources
from curate.stages.layout import LayoutConfig, layout
from curate.tagging.compile import CaptionFormat
from curate.trainer.data import process_caption, read_caption, toml_subsets
from curate.workspace import Workspace
from fixtures.scrape import jpeg, photo, write
from tests.conftest import tree_state
from tests.vlm_server import ChatServer

NAMES = ("astronaut", "chelsea", "coffee", "rocket")
TAGS = {"astronaut": "1girl, space suit, smile", "chelsea": "cat, grass", "coffee": "cup, table",
        "rocket": "rocket, sky"}
SOURCE = "vlm:test-vlm:detailed"


@pytest.fixture(autouse=True)
def cache_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CURATE_CACHE_DIR", str(tmp_path / "cache"))


@pytest.fixture
def server() -> Iterator[ChatServer]:
    with ChatServer(model="test-vlm") as running:
        yield running


def scrape(root: Path, tags: dict[str, str] = TAGS) -> Path:
    for name in NAMES:
        write(root / f"{name}.jpg", jpeg(photo(name).convert("RGB")))
        write(root / f"{name}.txt", tags[name] + "\n")
    return root


def workspace(tmp_path: Path, tags: dict[str, str] = TAGS) -> Path:
    ws = tmp_path / "ws"
    import_sources(ws, [scrape(tmp_path / "raw", tags)], ImportConfig())
    set_trigger(ws, "sks", "woman")
    return ws


def config(server: ChatServer, **kw: object) -> CaptionConfig:
    return CaptionConfig(api_base=server.api_base, api_model="test-vlm", **kw)  # type: ignore[arg-type]


def texts(ws: Path) -> dict[str, list[tuple[str, str]]]:
    with Workspace.open(ws) as w:
        return {Path(r.origins[0].source_path).stem: [(t.source, t.text) for t in r.texts]
                for r in w.records()}


def decisions(ws: Path) -> dict[str, list[tuple[str, str]]]:
    with Workspace.open(ws) as w:
        return {Path(r.origins[0].source_path).stem: [(d.verdict, d.reason) for d in r.decisions
                                                      if d.stage == "caption"] for r in w.records()}


def test_sentences_land_as_texts_and_layout_writes_them_nl_and_hybrid(tmp_path: Path,
                                                                     server: ChatServer) -> None:
    ws = workspace(tmp_path)
    result = caption(ws, config(server))
    assert result.counts == {"captioned": 4} and result.generated == 4 and not result.rejected
    stored = texts(ws)
    for name in NAMES:
        [(source, text)] = stored[name]
        assert source == SOURCE and text.startswith("a ") and "asked: Describe this image" in text
    for fmt in ("nl", "hybrid"):
        out = tmp_path / f"ds-{fmt}"
        layout(ws, out, LayoutConfig(repeats=2), captions=CaptionFormat(format=fmt))
        subsets, _ = toml_subsets(out / "dataset.toml")
        [subset] = subsets
        for image in sorted(Path(subset.image_dir).glob("*.jpg")):
            line = read_caption(image, subset, out)  # sd-scripts' own reading of the caption file
            sentence = next(t for name, ts in stored.items() for _, t in ts if t in line)
            assert line.startswith("sks woman, " + sentence)
            trained = {process_caption(line, subset, random.Random(seed)) for seed in range(20)}
            if fmt == "nl":
                assert trained == {line} and not subset.shuffle_caption
            else:  # tags after ||| shuffle; the sentence before it stays whole and first
                assert subset.shuffle_caption and subset.keep_tokens_separator == "|||"
                assert all(t.startswith("sks woman, " + sentence) for t in trained) and len(trained) > 1
                assert "|||" in line and "|||" not in next(iter(trained))


def test_unchanged_rerun_asks_nothing_and_a_new_prompt_replaces_the_sentence(tmp_path: Path,
                                                                             server: ChatServer) -> None:
    ws = workspace(tmp_path)
    caption(ws, config(server))
    asked = len(server.chat_requests)
    again = caption(ws, config(server))
    assert again.counts == {"cached": 4} and again.generated == 0 and len(server.chat_requests) == asked
    with Workspace.open(ws) as w:
        assert len(w.manifest.decisions("caption", "captioned")) == 4  # not recorded again
    short = caption(ws, config(server, preset="short"))
    assert short.counts == {"captioned": 4} and len(server.chat_requests) == asked + 4
    assert {s for ts in texts(ws).values() for s, _ in ts} == {"vlm:test-vlm:short"}
    back = caption(ws, config(server))  # the first prompt's answers are still cached
    assert back.counts == {"cached": 4} and len(server.chat_requests) == asked + 4
    assert {s for ts in texts(ws).values() for s, _ in ts} == {SOURCE}


def test_hybrid_preset_gives_the_tags_as_hints(tmp_path: Path, server: ChatServer) -> None:
    ws = workspace(tmp_path)
    caption(ws, config(server, preset="hybrid"))
    prompts = [seen.prompt or "" for seen in server.chat_requests]
    assert any("space suit, smile" in p for p in prompts) and any("cat, grass" in p for p in prompts)


def test_bad_answers_are_decisions_with_the_reason_and_no_text(tmp_path: Path, server: ChatServer) -> None:
    planted = {**TAGS, "astronaut": "as an ai",
               "chelsea": "loop, loop loop, loop loop loop, loop loop loop loop"}
    ws = workspace(tmp_path, planted)
    result = caption(ws, config(server, prompt="Describe it. Hints: {tags}."))
    assert result.counts == {"captioned": 2, "rejected": 2}
    stored, decided = texts(ws), decisions(ws)
    assert stored["astronaut"] == [] and stored["chelsea"] == []
    assert decided["astronaut"][0][0] == CAPTION_REJECTED and decided["astronaut"][0][1].startswith("refusal")
    assert decided["chelsea"][0][1].startswith("repetition loop: 'loop' repeated")
    assert stored["coffee"] and stored["rocket"]
    again = caption(ws, config(server, prompt="Describe it. Hints: {tags}."))  # judged again, not re-asked
    assert again.counts == {"cached": 2, "cached, rejected": 2} and decisions(ws) == decided
    with Workspace.open(ws) as w:  # a rejected caption leaves the image in the dataset
        assert len(w.active_records()) == 4


def test_no_names_leak_of_a_name_is_rejected(tmp_path: Path, server: ChatServer) -> None:
    ws = workspace(tmp_path)
    # the test server echoes the prompt, which says "a woman": listed as a name, it leaks
    result = caption(ws, config(server, preset="no-names", names=("woman",)))
    assert result.counts == {"rejected": 4}
    assert all(r.startswith("leak: the name 'woman'") for _, r in result.rejected)
    assert caption(ws, config(server, preset="no-names")).counts == {"cached": 4}


def test_user_captions_win(tmp_path: Path, server: ChatServer) -> None:
    ws = workspace(tmp_path)
    with Workspace.open(ws) as w, w.manifest.transaction():
        sha = next(r.sha256 for r in w.records() if r.origins[0].source_path.endswith("coffee.jpg"))
        w.manifest.set_user_caption(sha, "user-edit", "my own caption")
    result = caption(ws, config(server))
    assert result.counts == {"kept (your own caption)": 1, "captioned": 3}
    assert texts(ws)["coffee"] == [] and len(server.chat_requests) == 3


def test_a_run_stopped_mid_way_keeps_what_it_received(tmp_path: Path, server: ChatServer) -> None:
    ws = workspace(tmp_path)

    def stop(done: int, total: int) -> None:
        if done == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        caption(ws, config(server, concurrency=1), on_progress=stop)
    kept = [name for name, ts in texts(ws).items() if ts]
    assert 1 <= len(kept) <= 2
    server.wait_idle()
    asked = len(server.chat_requests)
    rest = caption(ws, config(server, concurrency=1))
    assert rest.counts == {"cached": len(kept), "captioned": 4 - len(kept)}
    assert len(server.chat_requests) == asked + 4 - len(kept)


def test_folder_mode_writes_caption_files(tmp_path: Path, server: ChatServer) -> None:
    root = scrape(tmp_path / "raw")
    write(root / "sub/broken.jpg", b"\xff\xd8\xff\xe0 not really a jpeg")
    (root / "coffee.caption").write_text("my words\n", encoding="utf-8")
    result = caption(root, config(server, preset="hybrid"))
    assert result.counts == {"kept (caption file exists)": 1, "captioned": 3}
    [(broken, reason)] = result.skipped
    assert broken.endswith("broken.jpg") and "\n" not in reason and "cannot read the image" in reason
    for name in ("astronaut", "chelsea", "rocket"):
        text = (root / f"{name}.caption").read_text(encoding="utf-8")
        assert text.count("\n") == 1 and text.startswith("a ") and TAGS[name] in text  # hints from .txt
    assert (root / "coffee.caption").read_text(encoding="utf-8") == "my words\n"
    assert (root / "astronaut.txt").read_text(encoding="utf-8") == TAGS["astronaut"] + "\n"
    asked = len(server.chat_requests)
    appended = caption(root, config(server, preset="hybrid", existing="append"))
    assert appended.counts == {"cached": 3, "captioned": 1} and len(server.chat_requests) == asked + 1
    assert (root / "coffee.caption").read_text(encoding="utf-8").startswith("my words a ")
    assert not list(root.rglob(".curate-tmp-*"))


def test_dry_run_writes_nothing_and_lists_prompts(tmp_path: Path, server: ChatServer) -> None:
    ws = workspace(tmp_path)
    before = tree_state(ws)
    result = caption(ws, config(server, preset="hybrid"), dry_run=True)
    assert tree_state(ws) == before and not server.requests
    assert result.counts == {"would caption": 4}
    assert any("1girl, space suit, smile" in prompt for _, prompt in result.planned)


def test_cli_json_show_and_the_key_never_stored(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CURATE_TEST_KEY", "sk-secret-123")
    ws = workspace(tmp_path)
    with ChatServer(model="test-vlm", key="sk-secret-123") as server:
        args = ["caption", str(ws), "--api-base", server.api_base, "--api-model", "test-vlm",
                "--api-key-env", "CURATE_TEST_KEY", "--preset", "short"]
        proc = CliRunner().invoke(cli, [*args, "--json"])
        assert proc.exit_code == 0, proc.output
        data = json.loads(proc.output)
        assert data["counts"] == {"captioned": 4} and data["prompt"] == "short"
        assert len(data["captions"]) == 4 and data["captions_per_s"] > 0
        shown = CliRunner().invoke(cli, [*args, "--show", str(tmp_path / "raw/rocket.jpg")])
        assert shown.exit_code == 0 and "prompt: Write a one-sentence caption" in shown.output
        assert "caption: a " in shown.output and len(server.chat_requests) == 5
    manifest = (ws / ".curate/manifest.sqlite").read_bytes() + (ws / "curate.toml").read_bytes()
    assert b"sk-secret" not in manifest
    assert all(b"sk-secret" not in p.read_bytes() for p in ws.rglob("*") if p.is_file())


def test_a_folder_of_only_unreadable_images_says_so(tmp_path: Path, server: ChatServer) -> None:
    root = tmp_path / "raw"
    write(root / "broken.jpg", b"\xff\xd8\xff\xe0 not really a jpeg")
    args = ["caption", str(root), "--api-base", server.api_base, "--api-model", "test-vlm"]
    proc = CliRunner().invoke(cli, args)
    assert proc.exit_code == 0, proc.output
    assert "cannot read the image" in proc.output
    assert re.search(r"skipped\s*│\s*1", proc.output), proc.output  # the summary is not empty
    assert not server.chat_requests


def test_show_names_the_problem(tmp_path: Path, server: ChatServer) -> None:
    ws = workspace(tmp_path, {**TAGS, "rocket": "as an ai"})
    shown = show(ws, tmp_path / "raw/rocket.jpg", config(server, prompt="Hints: {tags}"))
    assert shown.prompt == "Hints: as an ai" and (shown.problem or "").startswith("refusal")
    assert texts(ws)["rocket"] == []


def test_pipeline_skips_without_a_model_and_reruns_only_on_change(tmp_path: Path,
                                                                  server: ChatServer) -> None:
    ws = workspace(tmp_path)
    head = '[run]\nstages = ["caption", "layout"]\n[captions]\nformat = "nl"\n'
    (ws / "curate.toml").write_text(head, encoding="utf-8")
    first = run_pipeline(ws)
    assert first.stages[0].result == {"note": first.stages[0].result["note"]}  # type: ignore[index]
    assert "names no model" in first.stages[0].result["note"]  # type: ignore[index]
    backend = f'[caption]\napi_base = "{server.api_base}"\napi_model = "test-vlm"\n'
    (ws / "curate.toml").write_text(head + backend, encoding="utf-8")
    ran = run_pipeline(ws)
    assert [o.status for o in ran.stages] == ["ran", "ran"]
    assert ran.stages[0].result["counts"] == {"captioned": 4}  # type: ignore[index]
    again = run_pipeline(ws)
    assert [o.status for o in again.stages] == ["unchanged", "unchanged"] and len(server.chat_requests) == 4
    txt = sorted((ws / "dataset").rglob("*.txt"))
    assert len(txt) == 4 and all("asked: Describe this image" in p.read_text(encoding="utf-8") for p in txt)


def test_manifest_cache_table_is_migration_9(tmp_path: Path) -> None:
    ws = workspace(tmp_path)
    db = sqlite3.connect(ws / ".curate/manifest.sqlite")
    assert db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION >= 9
    assert [r[1] for r in db.execute("PRAGMA table_info(caption_cache)")] == ["key", "text", "source",
                                                                               "created_at"]


def test_doctor_lists_the_caption_backends(server: ChatServer) -> None:
    args = ["doctor", "--json", "--api-base", server.api_base, "--api-model", "test-vlm"]
    checks = {c["check"]: c for c in json.loads(CliRunner().invoke(cli, args).output)["checks"]}
    assert checks["caption: server"]["ok"] and "test-vlm" in checks["caption: server"]["detail"]
    assert checks["caption: transformers"]["optional"] and checks["caption: families"]["ok"]
    bare = CliRunner().invoke(cli, ["doctor", "--json"])
    assert not {c["check"]: c for c in json.loads(bare.output)["checks"]}["caption: server"]["ok"]


@pytest.fixture(scope="module")
def tiny_vlms(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    pytest.importorskip("transformers")
    from fixtures.tiny_vlm import build_all

    return build_all(tmp_path_factory.mktemp("vlm"))


@pytest.mark.parametrize("family", ["florence2", "qwen2_vl", "qwen2_5_vl", "llava"])
def test_local_models_sentence_and_hybrid_land_in_the_dataset(family: str, tiny_vlms: dict[str, Path],
                                                              tmp_path: Path) -> None:
    ws = workspace(tmp_path)
    # random weights say nonsense: only the checks that judge plumbing, not prose, apply
    options = CaptionConfig(model=str(tiny_vlms[family]), preset="hybrid", max_tokens=12, checks=("empty",))
    result = caption(ws, options)
    assert result.counts == {"captioned": 4} and result.device == "cpu", result.as_dict()
    if family == "florence2":
        assert any("<DETAILED_CAPTION>" in note for note in result.notes)
    stored = texts(ws)
    source = f"vlm:{tiny_vlms[family].name}:hybrid"
    assert all(len(stored[name]) == 1 and stored[name][0][0] == source for name in NAMES)
    assert caption(ws, options).counts == {"cached": 4}
    for fmt in ("nl", "hybrid"):
        out = tmp_path / f"ds-{fmt}"
        layout(ws, out, LayoutConfig(repeats=1), captions=CaptionFormat(format=fmt))
        [subset], _ = toml_subsets(out / "dataset.toml")
        lines = [read_caption(image, subset, out) for image in sorted(Path(subset.image_dir).glob("*.jpg"))]
        sentences = {" ".join(t.split()) for ts in stored.values() for _, t in ts}
        assert len(lines) == 4 and all(any(s in line for s in sentences) for line in lines)
        assert all(("|||" in line) == (fmt == "hybrid") for line in lines)
