"""Sources read as the tools write them (fixtures/scrapers.py), through one tag normaliser."""

from __future__ import annotations

import shutil
import sqlite3
import sys
from pathlib import Path

import pytest

from curate.record import Tag, Text
from curate.stages.ingest import ImportConfig, import_sources
from curate.stages.ingest.plan import make_plan, open_trees
from curate.stages.ingest.sidecars import Sidecars, read_sidecars
from curate.tagging.normalize import canonical_tag, parse_tag, split_tag_line
from curate.tagging.tags import tag_key
from fixtures.scrapers import build_evil_tar, build_scrapers


@pytest.fixture(scope="module")
def scrapers(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_scrapers(tmp_path_factory.mktemp("scrapers"))


@pytest.fixture(scope="module")
def read(scrapers: Path) -> dict[str, Sidecars]:
    """Every image of the fixture, by its shown path: its sidecars as import reads them."""
    trees = open_trees([scrapers], scrapers.parent / "ws")
    plan = make_plan(trees, {})
    assert not plan.skipped, plan.skipped
    return {w.entry.shown: read_sidecars(w.entry.tree, w.entry.relpath, list(w.sidecars))
            for w in plan.work}


def of(read: dict[str, Sidecars], tail: str) -> Sidecars:
    hits = [sc for shown, sc in read.items() if shown.endswith(tail)]
    assert len(hits) == 1, f"{tail}: {len(hits)} images"
    return hits[0]


def cats(sc: Sidecars) -> dict[str, str]:
    return {t.name: t.category for t in sc.annotations}


# case 3: one spelling per tag, wherever it came from
@pytest.mark.parametrize("raw", ["saber (fate)", "saber \\(fate\\)", "saber_\\(fate\\)",
                                 "Saber_(Fate)", "  saber   (fate) "])
def test_one_spelling(raw: str) -> None:
    assert canonical_tag(raw) == "saber (fate)"
    assert tag_key(raw) == tag_key("saber (fate)")  # rules, edits and check compare this way


def test_escapes_and_kaomoji_kept_apart() -> None:
    assert canonical_tag("^_^") == "^_^" and canonical_tag("\\(^o^)/") == "\\(^o^)/"
    assert canonical_tag("long_hair") == canonical_tag("long hair") == "long hair"


def test_text_and_json_sidecars_agree(read: dict[str, Sidecars]) -> None:
    hydrus_txt = cats(of(read, "hydrus-export/0a1b2c.jpg"))
    hydrus_json = cats(of(read, "hydrus-export/3d4e5f.png"))
    sd_scripts = cats(of(read, "sd-scripts/train/a.jpg"))
    grabber = cats(of(read, "imgbrd-grabber/f7deda9c.jpg"))
    assert hydrus_txt["saber (fate)"] == hydrus_json["saber (fate)"] == "character"
    assert "saber (fate)" in sd_scripts and "saber (fate)" in grabber
    assert hydrus_txt["long hair"] == hydrus_json["long hair"] == "general"
    for sc in read.values():
        assert all("_" not in t.name and "\\" not in t.name for t in sc.annotations), sc.annotations


# case 4: non-content tags are categorised, never general
def test_gallery_dl_metadata_dir_categories_and_rating(read: dict[str, Sidecars]) -> None:
    sc = of(read, "danbooru/saber/5001.jpg")
    assert sc.kind == "gallery-dl" and any("/metadata/" in p for p in sc.paths)
    tags = cats(sc)
    assert tags["saber (fate)"] == "character" and tags["fate (series)"] == "copyright"
    assert tags["takeuchi takashi"] == "artist"
    for meta in ("highres", "absurdres", "commentary request", "translated"):
        assert tags[meta] == "meta"
    assert tags["sensitive"] == "rating"  # Danbooru's "s"
    assert {n for n, c in tags.items() if c == "general"} == {"1girl", "long hair", "ahoge", "armor"}
    # extension-format "json": metadata/<stem>.json
    assert cats(of(read, "danbooru/saber/5002.jpg"))["saber (fate)"] == "character"


def test_e621_and_gelbooru_categories(read: dict[str, Sidecars]) -> None:
    e621 = cats(of(read, "e621/abc123.png"))
    assert e621["domestic cat"] == "species" and e621["male (lore)"] == "lore"
    assert e621["hi res"] == "meta" and e621["photography (artwork)"] == "meta"
    assert e621["some photographer"] == "artist" and e621["safe"] == "rating"  # e621's "s"
    gel = cats(of(read, "gelbooru/gelbooru_7.jpg"))
    assert gel["highres"] == "meta" and gel["barista artist"] == "artist"
    assert gel["general"] == "rating" and gel["cup"] == "general"
    assert list(gel).count("highres") == 1  # the flat `tags` string adds no second copy


def test_hydrus_namespaces(read: dict[str, Sidecars]) -> None:
    sc = of(read, "hydrus-export/0a1b2c.jpg")
    assert sc.kind == "hydrus" and any(p.endswith(".jpg.tags.txt") for p in sc.paths)
    tags = cats(sc)
    assert tags["safe"] == "rating" and tags["my favourite picture"] == "title"
    assert tags["fate (series)"] == "copyright" and tags["someone"] == "artist"
    # an unknown namespace: data, not a tag `page:3`
    assert tags["3"] == "other" and sc.metadata["namespaces"] == {"page": ["3"]}
    assert not any(":" in name for name in tags)
    assert any("namespaces not understood (page)" in w for _, w in sc.warnings)


def test_hydrus_nested_json(read: dict[str, Sidecars]) -> None:
    sc = of(read, "hydrus-export/3d4e5f.png")
    assert sc.kind == "hydrus"
    assert cats(sc) == {"saber (fate)": "character", "highres": "meta", "coin": "general",
                        "long hair": "general"}


# case 5: imgbrd-grabber's %all% is split; namespaced lines categorised
def test_imgbrd_grabber(read: dict[str, Sidecars]) -> None:
    flat = of(read, "imgbrd-grabber/f7deda9c.jpg")
    assert cats(flat) == {"1girl": "general", "long hair": "general", "saber (fate)": "general",
                          "smile": "general", "highres": "meta"}
    assert not flat.texts
    named = cats(of(read, "imgbrd-grabber/a75b2e6c.jpg"))
    assert named == {"saber (fate)": "character", "fate (series)": "copyright",
                     "takeuchi takashi": "artist", "long hair": "general", "highres": "meta"}


# case 6: img2dataset captions are sentences, kept whole
def test_img2dataset_prose_kept_whole(read: dict[str, Sidecars]) -> None:
    sc = of(read, "files/00000/000000000.jpg")
    assert sc.kind == "img2dataset" and not sc.annotations
    assert sc.texts == [Text("A cat sitting on a sofa, next to a window, in the afternoon sun.",
                             "img2dataset")]


def test_split_tag_line() -> None:
    assert split_tag_line("1girl long_hair smile") == ["1girl", "long_hair", "smile"]
    assert split_tag_line("a black and white photograph of a camera") is None
    assert split_tag_line("a red motorcycle parked outside, seen from the left side") is None
    assert split_tag_line("1girl, long hair, looking at viewer") == ["1girl", "long hair",
                                                                     "looking at viewer"]


# case 10: .txt tags and .caption sentence both kept; disagreeing files kept and said
def test_txt_and_caption_both_kept(read: dict[str, Sidecars]) -> None:
    sc = of(read, "sd-scripts/train/a.jpg")
    assert {"1girl", "solo", "spacesuit", "smile", "saber (fate)"} == set(cats(sc))
    assert sc.texts == [Text("a woman in a white space suit smiling at the camera", ".caption")]
    assert all(isinstance(t, Tag) and t.source for t in sc.annotations)
    other = of(read, "sd-scripts/train/b.jpg")
    assert {"space", "stars", "galaxy", "nebula"} <= set(cats(other))
    assert any("caption files disagree" in w for _, w in other.warnings)


def test_parquet_shard_table_read(read: dict[str, Sidecars], scrapers: Path, tmp_path: Path) -> None:
    """img2dataset writes `00000.parquet` beside `00000/` (and `00001.parquet` beside
    `00001.tar`): each image gets its row (status, original size) once, its caption once; the
    table's failed downloads are no images."""
    sc = of(read, "files/00000/000000001.jpg")
    assert sc.metadata["img2dataset"]["original_width"] == 250
    assert sc.metadata["img2dataset"]["status"] == "success"
    assert sc.texts == [Text("a red motorcycle parked outside, seen from the left side", "img2dataset")]
    result = import_sources(tmp_path / "ws", [scrapers / "img2dataset"], ImportConfig())
    assert result.counts["imported"] == 4 and not result.skipped, result
    assert not [w for _, w in result.warnings if "parquet" in w or "table" in w], result.warnings
    captions = [r[0] for r in _db(tmp_path / "ws").execute("SELECT text FROM captions")]
    assert len(captions) == len(set(captions)) == 4 and "a page that is gone" not in captions
    # the table alone (the sample's .json and .txt deleted) still gives its caption and metadata
    shutil.copytree(scrapers / "img2dataset" / "files", tmp_path / "files")
    for ext in (".json", ".txt"):
        (tmp_path / "files" / "00000" / f"000000001{ext}").unlink()
    alone = import_sources(tmp_path / "ws2", [tmp_path / "files"], ImportConfig())
    assert alone.counts["imported"] == 2
    captions = [r[0] for r in _db(tmp_path / "ws2").execute("SELECT text FROM captions")]
    assert "a red motorcycle parked outside, seen from the left side" in captions


def test_broken_parquet_said_once_and_import_goes_on(scrapers: Path, tmp_path: Path) -> None:
    shutil.copytree(scrapers / "img2dataset" / "files", tmp_path / "files")
    (tmp_path / "files" / "00000.parquet").write_bytes(b"PAR1 not a table")
    result = import_sources(tmp_path / "ws", [tmp_path / "files"], ImportConfig())
    assert result.counts["imported"] == 2
    said = [w for _, w in result.warnings if "shard table not read" in w]
    assert len(said) == 1 and "check or delete it" in said[0], result.warnings


def test_parquet_without_pyarrow_said_once(scrapers: Path, tmp_path: Path,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """pyarrow is optional: without it (import blocked here) that is said once, and each
    image's .json/.txt sidecars are read anyway."""
    monkeypatch.setitem(sys.modules, "pyarrow", None)
    monkeypatch.setitem(sys.modules, "pyarrow.parquet", None)
    shutil.copytree(scrapers / "img2dataset" / "files", tmp_path / "files")
    result = import_sources(tmp_path / "ws", [tmp_path / "files"], ImportConfig())
    assert result.counts["imported"] == 2
    said = [w for _, w in result.warnings if "pyarrow is not installed" in w]
    assert len(said) == 1, result.warnings
    captions = {r[0] for r in _db(tmp_path / "ws").execute("SELECT text FROM captions")}
    assert "a red motorcycle parked outside, seen from the left side" in captions


def _db(ws: Path) -> sqlite3.Connection:
    return sqlite3.connect(ws / ".curate" / "manifest.sqlite")


def test_webdataset_tar_imported(scrapers: Path, tmp_path: Path) -> None:
    tar = scrapers / "img2dataset" / "webdataset" / "00001.tar"
    result = import_sources(tmp_path / "ws", [tar], ImportConfig())
    assert result.counts["imported"] == 2, result
    rows = _db(tmp_path / "ws").execute(
        "SELECT source_path, source_kind FROM origins ORDER BY source_path").fetchall()
    assert [r[0].rpartition("!/")[2] for r in rows] == ["000010000.jpg", "000010001.jpg"]
    assert {r[1] for r in rows} == {"img2dataset"}
    captions = {r[0] for r in _db(tmp_path / "ws").execute("SELECT text FROM captions")}
    assert "a photograph of a retina, in black and white, taken indoors" in captions


def test_evil_tar_members_refused(tmp_path: Path) -> None:
    tar = build_evil_tar(tmp_path / "src")
    result = import_sources(tmp_path / "ws", [tar], ImportConfig())
    assert result.counts["imported"] == 1
    reasons = dict(result.skipped)
    assert len(reasons) == 4
    assert any("unsafe path '../escape.jpg'" in r for r in reasons.values())
    assert any("unsafe path '/abs/evil.jpg'" in r for r in reasons.values())
    assert sum("link entry in archive refused" in r for r in reasons.values()) == 2
    assert not (tmp_path / "escape.jpg").exists()


def test_parse_tag_namespaces() -> None:
    assert parse_tag("rating:safe") == parse_tag("safe", "rating")
    assert parse_tag("metadata:highres").category == "meta"  # type: ignore[union-attr]
    assert parse_tag("re:zero", namespaced=True).name == "re:zero"  # type: ignore[union-attr]
    assert parse_tag("gender:female", namespaced=True).namespace == "gender"  # type: ignore[union-attr]
    assert parse_tag("gender:female").category == "general"  # type: ignore[union-attr]
