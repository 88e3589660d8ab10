"""`curate import` over the fixture scrape yields the expected manifest."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest
from PIL import Image

from curate.stages.ingest import ImportConfig, import_sources
from curate.workspace import Workspace
from tests.conftest import tree_state


def db(ws: Path) -> sqlite3.Connection:
    conn = sqlite3.connect(ws / ".curate" / "manifest.sqlite")
    conn.row_factory = sqlite3.Row
    return conn


def origin(ws: Path, tail: str) -> sqlite3.Row:
    rows = db(ws).execute("SELECT * FROM origins WHERE source_path LIKE ?", (f"%{tail}",)).fetchall()
    assert len(rows) == 1, f"expected one origin ending in {tail}, got {len(rows)}"
    return rows[0]


def tags_of(ws: Path, tail: str) -> dict[str, str]:
    sha = origin(ws, tail)["image_sha256"]
    rows = db(ws).execute("SELECT tag, category FROM tags WHERE image_sha256 = ?", (sha,))
    return {r["tag"]: r["category"] for r in rows}


def image_of(ws: Path, tail: str) -> sqlite3.Row:
    sha = origin(ws, tail)["image_sha256"]
    return db(ws).execute("SELECT * FROM images WHERE sha256 = ?", (sha,)).fetchone()


def test_counts(imported) -> None:
    ws, result = imported
    assert result.counts == {"imported": 23, "repaired": 7, "merged": 1, "skipped": 11,
                             "unchanged": 0, "ignored": 2}
    conn = db(ws)
    assert conn.execute("SELECT COUNT(*) FROM images").fetchone()[0] == 30
    assert conn.execute("SELECT COUNT(*) FROM origins").fetchone()[0] == 42


@pytest.mark.parametrize(("tail", "reason"), [
    ("bad/empty.jpg", "empty file (0 bytes)"),
    ("bad/truncated.jpg", "truncated or corrupt image"),
    ("bad/random.png", "not an image Pillow can read"),
    ("bad/text.jpg", "a text file (an HTML error page"),
    ("bad/bomb.png", "40000x40000 is 1600 MP, over the 179 MP limit"),
    ("links/loop.jpg", "broken symlink or symlink loop"),
    ("links/dangling.jpg", "broken symlink or symlink loop"),
    ("links/escape.jpg", "outside the source folder: not followed"),
    ("archive.zip!/../escape.jpg", "unsafe path '../escape.jpg' in archive refused"),
    ("archive.zip!//abs/evil.jpg", "unsafe path '/abs/evil.jpg' in archive refused"),
    ("archive.zip!/set/link.jpg", "symlink entry in archive refused"),
])
def test_bad_files_skipped_with_reason(imported, tail: str, reason: str) -> None:
    ws, result = imported
    row = origin(ws, tail)
    assert row["status"] == "skipped" and row["image_sha256"] is None
    decision = db(ws).execute("SELECT * FROM decisions WHERE subject = ?",
                              (row["source_path"],)).fetchone()
    assert decision["verdict"] == "skipped" and reason in decision["reason"]
    assert (row["source_path"], decision["reason"]) in result.skipped
    assert "\n" not in decision["reason"]


@pytest.mark.parametrize(("tail", "warning"), [
    ("bad/latin1_tags.jpg.txt", "read as Windows-1252"),
    ("bad/binary_tags.jpg.txt", "not UTF-8 (nor Windows-1252)"),
    ("bad/broken_json.jpg.json", "malformed JSON sidecar (line 1"),
])
def test_bad_sidecars_warn_but_image_imports(imported, tail: str, warning: str) -> None:
    ws, _ = imported
    image_tail = tail.rsplit(".", 1)[0]
    assert origin(ws, image_tail)["status"] == "imported"
    rows = db(ws).execute("SELECT reason FROM decisions WHERE verdict = 'warning' AND subject LIKE ?",
                          (f"%{tail}",)).fetchall()
    assert len(rows) == 1 and warning in rows[0]["reason"]


def test_latin1_sidecar_tags_recovered(imported) -> None:
    ws, _ = imported
    assert tags_of(ws, "bad/latin1_tags.jpg") == {"café": "general", "crème brûlée": "general"}


def test_gallery_dl_tags_by_category(imported) -> None:
    ws, _ = imported
    tags = tags_of(ws, "hatsune_miku/1001.jpg")
    assert tags["hatsune miku"] == "character"
    assert tags["vocaloid"] == "copyright"
    assert tags["some artist"] == "artist"
    assert tags["long hair"] == "general" and tags["^_^"] == "general"  # kaomoji keeps "_"
    row = origin(ws, "hatsune_miku/1001.jpg")
    assert row["source_kind"] == "gallery-dl"
    assert json.loads(row["metadata"])["sidecar"]["id"] == 1001
    assert set(tags_of(ws, "hatsune_miku/1004.jpg")) == {"rocket", "launch pad", "sky", "outdoors"}


def test_exact_duplicate_stored_once_with_both_origins(imported) -> None:
    ws, _ = imported
    first, dup = origin(ws, "hatsune_miku/1001.jpg"), origin(ws, "hatsune_miku/1005.jpg")
    assert first["image_sha256"] == dup["image_sha256"]
    assert dup["status"] == "merged"
    # tags from both sidecars land on the one image
    assert {"white background", "spacesuit"} <= set(tags_of(ws, "hatsune_miku/1001.jpg"))
    stored = list((ws / "images").rglob(f"{first['image_sha256']}*"))
    assert len(stored) == 1


def test_hydrus_namespaces(imported) -> None:
    ws, _ = imported
    assert tags_of(ws, "hydrus/Image_1.png") == {
        "hatsune miku": "character", "someone": "artist", "vocaloid": "copyright",
        "long hair": "general", "twintails": "general", "re:zero": "general"}
    assert tags_of(ws, "hydrus/Image_2.jpg")["highres"] == "meta"
    assert origin(ws, "hydrus/Image_1.png")["source_kind"] == "hydrus"


def test_img2dataset_caption(imported) -> None:
    ws, _ = imported
    row = origin(ws, "00000/000000000.jpg")
    assert row["source_kind"] == "img2dataset"
    caption = db(ws).execute("SELECT text FROM captions WHERE image_sha256 = ?",
                             (row["image_sha256"],)).fetchone()["text"]
    assert caption == "a black and white photograph of camera"


def test_kohya_repeats_and_captions(imported) -> None:
    ws, _ = imported
    row = origin(ws, "10_sks cat/chelsea_1.png")
    assert json.loads(row["metadata"])["kohya"] == {"folder": "10_sks cat", "repeats": 10,
                                                    "class_tokens": "sks cat", "is_reg": False}
    # a Kohya caption of tags is tags, in its order (only the first line counts, as in
    # sd-scripts; .caption files are read too), never a sentence that nl/hybrid would write
    rows = db(ws).execute("SELECT image_sha256, tag FROM tags WHERE source IN ('kohya', '.caption') "
                          "ORDER BY rowid")
    tags: dict[str, list[str]] = {}
    for r in rows:
        tags.setdefault(r["image_sha256"], []).append(r["tag"])
    assert sorted(tags.values()) == [["sks cat", "cat", "close-up"],
                                     ["sks cat", "cat", "orange fur", "indoors"]]
    assert not db(ws).execute("SELECT * FROM captions WHERE source='kohya'").fetchall()
    assert json.loads(origin(ws, "3_moon/moon.png")["metadata"])["kohya"]["repeats"] == 3


@pytest.mark.parametrize(("tail", "mode", "fmt", "size", "change"), [
    ("variants/rotated_exif.jpg", "RGB", "PNG", (240, 320), "EXIF orientation 6 applied"),
    ("variants/cmyk.jpg", "RGB", "PNG", (600, 400), "CMYK converted to RGB"),
    ("variants/grey16.png", "L", "PNG", (512, 512), "I;16 greyscale scaled to 8-bit"),
    ("variants/palette_transparent.png", "RGBA", "PNG", (640, 427), "P converted to RGBA"),
    ("variants/grey_alpha.png", "RGBA", "PNG", (384, 303), "LA converted to RGBA"),
    ("variants/animated.gif", "RGB", "PNG", (14, 25), "animated (24 frames): kept the first frame"),
    ("variants/adobe_rgb.jpg", "RGB", "PNG", (240, 160), "converted to sRGB RGB"),
])
def test_normalisation(imported, tail: str, mode: str, fmt: str, size: tuple[int, int],
                       change: str) -> None:
    ws, _ = imported
    row = image_of(ws, tail)
    assert (row["mode"], row["format"], (row["width"], row["height"])) == (mode, fmt, size)
    assert any(change in c for c in json.loads(row["changes"]))
    assert origin(ws, tail)["status"] == "repaired"
    with Image.open(ws / row["stored_path"]) as im:
        assert (im.mode, im.size) == (mode, size)


def test_grey16_scaled_not_clipped(imported, scrape: Path) -> None:
    ws, _ = imported
    import numpy as np
    with Image.open(ws / image_of(ws, "variants/grey16.png")["stored_path"]) as im:
        stored = np.asarray(im)
    import skimage.data
    assert np.array_equal(stored, skimage.data.camera())  # v*257/257 round-trips exactly


def test_unchanged_files_keep_their_bytes(imported, scrape: Path) -> None:
    ws, _ = imported
    for tail in ("variants/srgb_tagged.jpg", "hatsune_miku/1002.jpg", "variants/logo_rgba.png"):
        row = image_of(ws, tail)
        source = next(scrape.rglob(Path(tail).name))
        assert (ws / row["stored_path"]).read_bytes() == source.read_bytes()
    assert image_of(ws, "variants/logo_rgba.png")["mode"] == "RGBA"  # alpha kept


def test_awkward_names(imported) -> None:
    ws, _ = imported
    for tail in ("variants/UPPER.JPG", "variants/Mixed.Png", "variants/café photo ✓.jpg"):
        assert origin(ws, tail)["status"] == "imported"
    a, b = origin(ws, "variants/a/photo.jpg"), origin(ws, "variants/b/photo.jpg")
    assert a["image_sha256"] != b["image_sha256"]
    assert image_of(ws, "variants/UPPER.JPG")["stored_path"].endswith(".jpg")


def test_zip_members(imported) -> None:
    ws, _ = imported
    row = origin(ws, "archive.zip!/set/2001.jpg")
    assert row["status"] == "imported" and row["source_kind"] == "gallery-dl"
    assert set(tags_of(ws, "archive.zip!/set/2001.jpg")) == {"rocket", "sky", "smoke"}
    assert not db(ws).execute("SELECT 1 FROM origins WHERE source_path LIKE '%__MACOSX%'").fetchall()


def test_ignored_not_recorded(imported) -> None:
    ws, result = imported
    ignored = {Path(f).name for f, _ in result.ignored}
    assert ignored == {"notes.md", "again"}
    assert not db(ws).execute("SELECT 1 FROM origins WHERE source_path LIKE '%notes.md'").fetchall()


def test_records_roundtrip(imported) -> None:
    ws, _ = imported
    with Workspace.open(ws) as w:
        records = w.records()
    assert len(records) == 30
    by_name = {Path(o.source_path).name: r for r in records for o in r.origins}
    miku = by_name["1001.jpg"]
    assert len(miku.origins) == 2 and miku.tag_confidences()["hatsune miku"] == 1.0
    assert all(r.path.is_file() for r in records)


def test_sources_never_modified(scrape: Path, tmp_path: Path) -> None:
    before = tree_state(scrape)
    import_sources(tmp_path / "ws", [scrape], ImportConfig())
    assert tree_state(scrape) == before


def test_reimport_is_noop_and_change_is_seen(scrape: Path, tmp_path: Path) -> None:
    import shutil
    src = tmp_path / "src"
    shutil.copytree(scrape / "gallery-dl", src)
    ws = tmp_path / "ws"
    first = import_sources(ws, [src], ImportConfig())
    assert first.counts["imported"] == 4
    again = import_sources(ws, [src], ImportConfig())
    assert again.nothing_new and again.counts["unchanged"] == 5
    before = db(ws).execute("SELECT COUNT(*) FROM decisions").fetchone()[0]
    # editing a sidecar re-reads just that image
    sidecar = next(src.rglob("1004.jpg.txt"))
    sidecar.write_text("rocket\nnight\n")
    third = import_sources(ws, [src], ImportConfig())
    assert third.counts["imported"] == 1 and third.counts["unchanged"] == 4
    assert "night" in tags_of(ws, "1004.jpg")
    assert db(ws).execute("SELECT COUNT(*) FROM decisions").fetchone()[0] == before + 1
