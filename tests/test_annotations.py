"""Annotations as data (issue 15): tags with removed marks, texts, trigger settings and user
captions in the manifest; the caption compiled from them by the layout."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

from curate.stages.captions.edit import set_trigger
from curate.stages.captions.filter import FilterStageConfig, run_filter
from curate.stages.ingest import ImportConfig, import_sources
from curate.stages.layout import LayoutConfig, layout
from curate.tagging.captions import caption_of
from curate.workspace import Workspace
from fixtures.scrape import build_gallery_dl, jpeg, photo, write


def captions_of(dataset: Path) -> dict[str, str]:
    return {p.stem: p.read_text(encoding="utf-8").strip() for p in sorted(dataset.glob("img/*/*.txt"))}


def by_file(ws: Path) -> dict[str, object]:
    with Workspace.open(ws) as w:
        return {Path(r.origins[0].source_path).name: r for r in w.records()}


def test_imported_sidecar_tags_reach_the_caption_without_tagging(tmp_path: Path) -> None:
    """Case 2: gallery-dl tags in the manifest, no `curate tag`: the layout captions with them."""
    build_gallery_dl(tmp_path / "raw")
    import_sources(tmp_path / "ws", [tmp_path / "raw"], ImportConfig(workers=1))
    result = layout(tmp_path / "ws", tmp_path / "ds", LayoutConfig())
    assert not [w for w in result.warnings if "no caption" in w[1]]
    caps = captions_of(tmp_path / "ds")
    assert caps["1004"] == "rocket, launch pad, sky, outdoors"
    assert {"1girl", "long hair", "spacesuit", "hatsune miku"} <= set(caps["1001"].split(", "))


def test_trigger_is_a_setting_and_appears_once(tmp_path: Path) -> None:
    """Case 8 (storage): an imported caption `sks woman` and `captions trigger sks --class-token
    woman`: the words are settings, not tags, and the caption holds each once."""
    write(tmp_path / "raw" / "a.jpg", jpeg(photo("astronaut")))
    write(tmp_path / "raw" / "a.txt", "sks woman\n")
    import_sources(tmp_path / "ws", [tmp_path / "raw"], ImportConfig(workers=1))
    set_trigger(tmp_path / "ws", "sks", "woman")
    record = by_file(tmp_path / "ws")["a.jpg"]
    assert (record.trigger, record.class_tokens) == ("sks", "woman")
    assert [t.name for t in record.tags] == ["sks woman"]  # the imported tag, kept as data
    assert caption_of(record) == "sks, woman"


def test_text_and_tags_beside_one_image_are_both_kept(tmp_path: Path) -> None:
    """Case 10 (storage): WD14 tags in a.txt and a BLIP sentence in a.caption."""
    write(tmp_path / "raw" / "a.jpg", jpeg(photo("astronaut")))
    write(tmp_path / "raw" / "a.txt", "1girl, solo, spacesuit\n")
    write(tmp_path / "raw" / "a.caption", "an astronaut holding a helmet in front of a flag\n")
    import_sources(tmp_path / "ws", [tmp_path / "raw"], ImportConfig(workers=1))
    record = by_file(tmp_path / "ws")["a.jpg"]
    assert {"1girl", "solo", "spacesuit"} <= {t.name for t in record.tags}
    assert [t.text for t in record.texts] == ["an astronaut holding a helmet in front of a flag"]


def _tagged_workspace(tmp_path: Path) -> Path:
    for name, tags in (("astronaut", "1girl\nbrown hair\nsmile\n"), ("coffee", "1girl\nblonde hair\n"),
                       ("chelsea", "1girl\nblonde hair\n"), ("rocket", "1girl\nblonde hair\n")):
        write(tmp_path / "raw" / f"{name}.jpg", jpeg(photo(name).convert("RGB")))
        write(tmp_path / "raw" / f"{name}.jpg.txt", tags)
    import_sources(tmp_path / "ws", [tmp_path / "raw"], ImportConfig(workers=1))
    return tmp_path / "ws"


def test_filter_removal_is_a_mark_and_reversible(tmp_path: Path) -> None:
    ws = _tagged_workspace(tmp_path)
    run_filter(ws, FilterStageConfig(blacklist=("brown hair",)))
    astronaut = by_file(ws)["astronaut.jpg"]
    removed = {t.name: t.removed for t in astronaut.tags}
    assert removed["brown hair"] and "brown hair" not in (caption_of(astronaut) or "")
    run_filter(ws, FilterStageConfig())  # the rule off: the tag comes back
    astronaut = by_file(ws)["astronaut.jpg"]
    assert caption_of(astronaut) == "1girl, brown hair, smile"
    assert all(not t.removed for t in astronaut.tags)


def test_hand_edit_wins_and_survives_filter_and_edits(tmp_path: Path) -> None:
    ws = _tagged_workspace(tmp_path)
    layout(ws, tmp_path / "ds", LayoutConfig())
    edited = next((tmp_path / "ds").glob("img/*/astronaut.txt"))
    edited.write_text("1girl, brown hair, smile, my own words\n", encoding="utf-8")
    layout(ws, tmp_path / "ds", LayoutConfig())  # adopts the edit
    run_filter(ws, FilterStageConfig(blacklist=("brown hair", "smile")))
    set_trigger(ws, "sks")
    layout(ws, tmp_path / "ds2", LayoutConfig())
    assert captions_of(tmp_path / "ds2")["astronaut"] == "sks, 1girl, brown hair, smile, my own words"
    assert by_file(ws)["astronaut.jpg"].user_caption == "1girl, brown hair, smile, my own words"


def _to_schema_6(ws: Path) -> sqlite3.Connection:
    """The manifest as the code before migrations 7 and 8 left it (crops and backgrounds tables
    instead of derived, no removed/rank columns)."""
    from curate.manifest import MIGRATIONS

    db = sqlite3.connect(ws / ".curate" / "manifest.sqlite", isolation_level=None)
    db.execute("ALTER TABLE tags DROP COLUMN removed")
    db.execute("ALTER TABLE tags DROP COLUMN rank")
    db.execute("DROP TABLE derived")
    step4 = str(MIGRATIONS[4])
    db.executescript(step4[step4.index("CREATE TABLE crops"):] + str(MIGRATIONS[5]))
    db.execute("PRAGMA user_version = 6")
    return db


def test_migration_keeps_every_caption_byte_identical(tmp_path: Path) -> None:
    """A workspace written by the code before annotations (a tagger's scores, working captions
    after tag / tags filter / captions trigger / a hand edit), migrated: the same dataset."""
    ws = _tagged_workspace(tmp_path)
    write(tmp_path / "raw2" / "moon.jpg", jpeg(photo("moon")))
    write(tmp_path / "raw2" / "moon.txt", "a black and white photograph of the moon\n")
    import_sources(ws, [tmp_path / "raw2"], ImportConfig(workers=1))
    sha = {name: r.sha256 for name, r in by_file(ws).items()}
    db = _to_schema_6(ws)
    working = {  # what tag (append), filter, captions trigger and add/sort wrote
        "astronaut.jpg": "sks, woman, 1girl, smile, space, helmet",
        "coffee.jpg": "sks, woman, blonde hair, 1girl, cup",
        "chelsea.jpg": "sks, woman, 1girl, blonde hair",
        "moon.jpg": "sks, woman, a black and white photograph of the moon",
    }
    for name, text in working.items():
        db.execute("INSERT INTO captions VALUES (?, 'curate', ?)", (sha[name], text))
    for name, tag, p in (("astronaut.jpg", "space", 0.9), ("astronaut.jpg", "helmet", 0.7),
                         ("astronaut.jpg", "moon", 0.1), ("coffee.jpg", "cup", 0.8)):
        db.execute("INSERT INTO tags VALUES (?, 'tagger:wd', ?, 'general', ?)", (sha[name], tag, p))
    db.execute("INSERT INTO decisions (image_sha256, subject, stage, verdict, reason, created_at) VALUES "
               "(?, 'raw/astronaut.jpg: brown hair', 'filter', 'tag-removed', 'exclusive: hair', 'now')",
               (sha["astronaut.jpg"],))
    db.executemany("INSERT OR REPLACE INTO settings VALUES (?, ?)",
                   [("trigger", json.dumps("sks")), ("class_token", json.dumps("woman")),
                    ("keep_tokens", json.dumps(2))])
    db.close()
    layout(ws, tmp_path / "ds", LayoutConfig())
    caps = captions_of(tmp_path / "ds")
    for name, text in working.items():
        assert caps[name.removesuffix(".jpg")] == text
    assert caps["rocket"] == "sks, woman, 1girl, blonde hair"  # no working caption: compiled
    records = by_file(ws)
    astronaut = {t.name: t.removed for t in records["astronaut.jpg"].tags}
    assert astronaut == {"1girl": "", "brown hair": "exclusive", "smile": "", "space": "", "helmet": "",
                         "moon": "tag:select"}
    # a sentence in a tags-format caption compiles to no tag: the old caption stays whole, as the
    # user's own (the format `curate layout` writes by default is tags)
    assert [t.source for t in records["moon.jpg"].texts] == ["txt"]
    assert records["moon.jpg"].user_caption == working["moon.jpg"]
    with Workspace.open(ws) as w:
        assert not w.manifest.rows("SELECT * FROM captions WHERE source = 'curate'")
