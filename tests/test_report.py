"""`curate report`: the data it gathers agrees with the manifest, user strings are escaped,
thumbnails are reused, and the page renders in headless Chromium without console errors."""

from __future__ import annotations

import json
import math
import re
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import pytest
from click.testing import CliRunner

from curate.cli import cli
from curate.manifest import CURRENT_DECISION
from curate.report import ReportResult, write_report
from curate.report.collect import collect
from curate.stages.captions.edit import set_trigger
from curate.stages.captions.filter import FilterStageConfig, run_filter
from curate.stages.crop.config import CropConfig
from curate.stages.crop.run import crop_images
from curate.stages.dedupe.config import DedupeConfig
from curate.stages.dedupe.run import dedupe
from curate.stages.ingest import ImportConfig, import_sources
from curate.stages.quality.config import QualityConfig
from curate.stages.quality.run import quality_filter
from curate.stages.tag import TagConfig, tag
from curate.workspace import Workspace
from fixtures.scrape import jpeg, photo, write
from fixtures.tiny_tagger import build_tiny_tagger

ARTIFACTS = Path(__file__).resolve().parents[1] / "build" / "test-artifacts"
# Nasty on purpose: markup, an entity start and both quote kinds, in a file name and in a tag.
EVIL_NAME = """bike <script>alert("x")&'y'.jpg"""
EVIL_TAG = "<script>alert(1)</script>"


@pytest.fixture(scope="module")
def workspace(imported: tuple[Path, object], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The imported fixture scrape (copied), plus one nasty file, through every review stage."""
    base = tmp_path_factory.mktemp("report")
    ws = base / "ws"
    shutil.copytree(imported[0], ws)
    extra = base / "extra"
    write(extra / EVIL_NAME, jpeg(photo("motorcycle_left").convert("RGB").resize((512, 341))))
    write(extra / f"{EVIL_NAME}.txt", f"{EVIL_TAG}, motorcycle\n")
    import_sources(ws, [extra], ImportConfig())
    model = build_tiny_tagger(base / "tagger")
    dedupe(ws, DedupeConfig())
    quality_filter(ws, QualityConfig())
    tag(ws, TagConfig(model=str(model)))
    run_filter(ws, FilterStageConfig())
    set_trigger(ws, "sks", "woman")
    crop_images(ws, CropConfig(aspect="2:3"))
    return ws


@pytest.fixture(scope="module")
def report(workspace: Path, tmp_path_factory: pytest.TempPathFactory) -> ReportResult:
    return write_report(workspace, tmp_path_factory.mktemp("out") / "report")


class Page(HTMLParser):
    """Elements by id, attributes of every tag, in document order."""

    def __init__(self, text: str) -> None:
        super().__init__()
        self.ids: dict[str, dict[str, str | None]] = {}
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.text: dict[str, str] = {}
        self._open: str | None = None
        self.feed(text)

    def handle_starttag(self, name: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        self.tags.append((name, a))
        if a.get("id"):
            self.ids[str(a["id"])] = a
            self._open = str(a["id"])

    def handle_data(self, data: str) -> None:
        if self._open is not None:
            self.text[self._open] = self.text.get(self._open, "") + data

    def handle_endtag(self, name: str) -> None:
        self._open = None


def manifest_counts(ws: Path) -> dict[str, int]:
    """The summary counts, straight from the manifest's SQL (not through Workspace.records)."""
    with Workspace.open(ws) as w:
        def one(sql: str, *args: object) -> int:
            return int(w.manifest.rows(sql, args)[0][0])

        excluded = (f"SELECT image_sha256 FROM decisions WHERE verdict IN ('duplicate', 'rejected') "
                    f"AND image_sha256 IS NOT NULL AND {CURRENT_DECISION}")
        verdict = ("SELECT COUNT(DISTINCT image_sha256) FROM decisions WHERE verdict = ? "
                   f"AND {CURRENT_DECISION}")
        images = one("SELECT COUNT(*) FROM images")
        return {
            "images": images,
            "kept": images - one(f"SELECT COUNT(DISTINCT image_sha256) FROM ({excluded})"),
            "duplicates": one(verdict, "duplicate"),
            "rejected": one(verdict, "rejected"),
            "skipped": one(f"SELECT COUNT(*) FROM decisions WHERE verdict = 'skipped' "
                           f"AND image_sha256 IS NULL AND {CURRENT_DECISION}"),
            "tagged": one("SELECT COUNT(DISTINCT image_sha256) FROM tags "
                          f"WHERE image_sha256 NOT IN ({excluded})"),
            # captions are compiled from kept tags, texts and the trigger word (issue 15)
            "captioned": images - one(f"SELECT COUNT(DISTINCT image_sha256) FROM ({excluded})")
            if one("SELECT COUNT(*) FROM settings WHERE key = 'trigger'") else one(
                "SELECT COUNT(DISTINCT image_sha256) FROM (SELECT image_sha256 FROM tags WHERE removed = '' "
                f"UNION SELECT image_sha256 FROM captions) WHERE image_sha256 NOT IN ({excluded})"),
            "tags_removed": one("SELECT COUNT(*) FROM decisions WHERE verdict = 'tag-removed'"),
            "cropped": one("SELECT COUNT(*) FROM derived WHERE kind = 'crop' "
                           f"AND image_sha256 NOT IN ({excluded})"),
        }


def test_counts_match_the_manifest(workspace: Path, report: ReportResult) -> None:
    counts = manifest_counts(workspace)
    assert report.data.counts == counts
    # the fixture exercises every section: nothing here may be trivially zero
    assert all(counts[k] > 0 for k in counts), counts
    assert counts["kept"] + counts["duplicates"] + counts["rejected"] == counts["images"]
    data = report.data
    assert sum(len(c.duplicates) for c in data.clusters) == counts["duplicates"]
    with Workspace.open(workspace) as w:
        assert len(data.clusters) == len(w.manifest.decisions("dedupe", "kept"))
        boxes = {r["image_sha256"]: json.loads(r["box"]) for r in w.manifest.rows(
            "SELECT image_sha256, json_extract(info, '$.box') AS box FROM derived WHERE kind = 'crop'")}
    page = Page(report.index.read_text(encoding="utf-8"))
    for name, n in counts.items():
        assert page.ids[f"count-{name}"]["data-count"] == str(n)
        assert page.text[f"count-{name}"] == str(n)
    assert page.ids["images"]["data-count"] == str(counts["kept"])
    assert page.ids["duplicates"]["data-count"] == str(len(data.clusters))
    # every crop is drawn over its original at the manifest's box
    rects = [(int(a["x"] or 0), int(a["y"] or 0), int(a["width"] or 0), int(a["height"] or 0))
             for t, a in page.tags if t == "rect" and a.get("class") == "crop-box"]
    kept = {i.sha256 for i in data.images if i.status == "kept"}
    assert sorted(rects) == sorted(tuple(b) for s, b in boxes.items() if s in kept)


def test_removed_tags_struck_through_with_their_rule(workspace: Path, report: ReportResult) -> None:
    with Workspace.open(workspace) as w:
        removed = w.manifest.decisions(verdict="tag-removed")
    assert removed
    page = Page(report.index.read_text(encoding="utf-8"))
    struck = [a for t, a in page.tags if t == "s" and a.get("data-rule")]
    for d in removed:
        rule = d["reason"].partition(": ")[0]
        assert any(a["data-rule"] == rule and rule in str(a["title"]) for a in struck), (rule, struck)
    # a removed tag is not counted in the frequency chart
    removed_tags = {d["subject"].rpartition(": ")[2] for d in removed}
    freq = {name: n for name, _c, n in report.data.tag_frequency}
    kept_with = {name: sum(1 for i in report.data.images if i.status == "kept"
                           for t in i.tags if t.name == name and not t.rule) for name in freq}
    assert freq == kept_with and removed_tags


def test_training_plan_follows_layout_settings(workspace: Path, report: ReportResult, tmp_path: Path) -> None:
    plan = report.data.plan
    assert not plan.configured and "No [layout] settings" in plan.note
    assert report.data.counts["kept"] == sum(n for _r, n in report.data.buckets.rows)
    ws = tmp_path / "ws"
    shutil.copytree(workspace, ws)
    toml = ws / "curate.toml"  # `curate init` wrote a commented [layout] table: fill it in
    text = toml.read_text(encoding="utf-8")
    settings = "[layout]\nrepeats = 3\nepochs = 4\nbatch_size = 2\n"
    text = text.replace("[layout]\n", settings, 1) if "[layout]\n" in text else f"{text}\n{settings}"
    toml.write_text(text, encoding="utf-8")
    configured = collect(ws).plan
    kept = report.data.counts["kept"]
    assert configured.configured and not configured.note
    # the imported Kohya subset (fixtures/scrape.py: img/10_sks cat) keeps its class tokens as its
    # own concept; --repeats sets every concept's repeats
    rows = [(r["folder"], r["images"], r["repeats"]) for r in configured.rows]
    assert [(f, n) for f, _i, n in rows] == [("img/3_sks", 3), ("img/3_sks cat", 3)]
    assert sum(i for _f, i, _n in rows) == kept
    assert configured.total_steps == math.ceil(kept * 3 * 4 / 2)
    assert configured.steps_per_epoch == math.ceil(kept * 3 / 2)


def test_user_strings_are_escaped(report: ReportResult) -> None:
    text = report.index.read_text(encoding="utf-8")
    assert "<script" not in text.lower()
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in text
    page = Page(text)
    titles = [str(a.get("title")) for t, a in page.tags if a.get("class") == "file"]
    # the full path round-trips through an attribute: quotes and & were escaped correctly
    assert any(t.endswith(EVIL_NAME) for t in titles), titles


def test_thumbnails_exist_and_are_reused(workspace: Path, report: ReportResult) -> None:
    out = report.index.parent
    page = Page(report.index.read_text(encoding="utf-8"))
    srcs = {a["src"] for t, a in page.tags if t == "img"} | {a["href"] for t, a in page.tags if t == "image"}
    assert srcs and all(s and (out / s).is_file() for s in srcs)
    assert report.thumbs_made == len(list((out / "thumbs").iterdir())) and not report.unreadable
    before = {p.name: p.stat().st_mtime_ns for p in (out / "thumbs").iterdir()}
    again = write_report(workspace, out)
    assert (again.thumbs_made, again.thumbs_reused) == (0, report.thumbs_made)
    assert {p.name: p.stat().st_mtime_ns for p in (out / "thumbs").iterdir()} == before


def test_cli_json_and_default_folder(workspace: Path, tmp_path: Path) -> None:
    ws = tmp_path / "ws"
    shutil.copytree(workspace, ws)
    result = CliRunner().invoke(cli, ["report", str(ws), "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert data["counts"] == manifest_counts(ws)
    assert data["index"] == str(ws / "report" / "index.html") and (ws / "report" / "index.html").is_file()
    text = CliRunner().invoke(cli, ["report", str(ws), "--out", str(tmp_path / "r")])
    assert text.exit_code == 0 and f"wrote {tmp_path / 'r' / 'index.html'}" in text.output
    assert f"images {data['counts']['images']}," in text.output
    missing = CliRunner().invoke(cli, ["report", str(tmp_path / "nope")])
    assert missing.exit_code == 2 and "not a curate workspace" in missing.output


def chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


def run_chromium(page: Path, profile: Path, *args: str) -> subprocess.CompletedProcess[str]:
    binary = chromium()
    assert binary is not None
    return subprocess.run(
        [binary, "--headless", "--no-sandbox", "--disable-gpu", f"--user-data-dir={profile}",
         "--enable-logging=stderr", "--v=0", "--window-size=1280,2000", *args, page.as_uri()],
        capture_output=True, text=True, timeout=120, check=True)


def console_errors(stderr: str) -> list[str]:
    # Chromium logs every console message of the page (errors included) as ...:CONSOLE(n)] "..."
    return [line for line in stderr.splitlines() if ":CONSOLE" in line or "Uncaught" in line]


@pytest.mark.skipif(chromium() is None, reason="no chromium binary: `apt-get install -y chromium` "
                    "(make test installs it when run as root)")
def test_page_renders_in_headless_chromium(report: ReportResult, tmp_path: Path) -> None:
    # the detector itself works on this Chromium: a page with a console error is caught
    bad = tmp_path / "bad.html"
    bad.write_text('<!doctype html><p>x</p><script>console.error("boom")</script>', encoding="utf-8")
    assert console_errors(run_chromium(bad, tmp_path / "profile0", "--dump-dom").stderr)

    dom = run_chromium(report.index, tmp_path / "profile1", "--dump-dom")
    assert console_errors(dom.stderr) == []
    page = Page(dom.stdout)
    for name, n in report.data.counts.items():
        assert page.text[f"count-{name}"] == str(n), name
    assert re.search(r'<section id="plan"', dom.stdout)
    shot = tmp_path / "report.png"
    screenshot = run_chromium(report.index, tmp_path / "profile2", f"--screenshot={shot}")
    assert console_errors(screenshot.stderr) == []
    assert shot.stat().st_size > 10_000
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(shot, ARTIFACTS / "report.png")
