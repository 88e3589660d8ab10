"""Derived images as a chain (issue 15, case 1): original -> cut-out (bg) -> crop (-> close-ups).

`curate run` with bg before crop (the demo's order) trains on crops of the cut-outs, with their
alpha as sd-scripts' alpha_mask; changing bg settings re-crops from the new cut-out; an unchanged
re-run is skipped; crop alone still crops the original; a workspace written at schema 6 (crops
and backgrounds tables) migrates with every crop and cut-out kept; only curate/manifest/ knows SQL.
"""

from __future__ import annotations

import json
import re
import sqlite3
import tomllib
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from curate.manifest import MIGRATIONS
from curate.pipeline import run_pipeline
from curate.stages.background import BgConfig, remove_backgrounds
from curate.stages.crop.config import CropConfig
from curate.stages.crop.run import crop_images
from curate.stages.ingest import ImportConfig, import_sources
from curate.stages.layout import LayoutConfig, layout
from curate.workspace import Workspace
from fixtures.scrape import jpeg, photo, png, write

ROOT = Path(__file__).resolve().parent.parent
STAGES = ["import", "bg", "crop", "captions", "layout"]


def scene(name: str) -> Image.Image:
    """A real photo on a plain, slightly noisy light background: GrabCut finds it."""
    rng = np.random.default_rng(0)
    canvas = np.clip(rng.normal(225, 4, (300, 320, 3)), 0, 255).astype(np.uint8)
    canvas[70:230, 90:230] = np.asarray(photo(name).convert("RGB").resize((140, 160)))
    return Image.fromarray(canvas)


def scrape(root: Path) -> Path:
    write(root / "cat.jpg", jpeg(scene("chelsea"), quality=95))
    write(root / "sub" / "cup.jpg", jpeg(scene("coffee"), quality=95))
    return root


def workspace(tmp_path: Path, fill: str = "white") -> Path:
    src = scrape(tmp_path / "scrape")
    ws = tmp_path / "ws"
    ws.mkdir()
    (ws / "curate.toml").write_text(
        f'[run]\nsources = ["{src}"]\ntrigger = "sks"\nclass_token = "cat"\nstages = {json.dumps(STAGES)}\n'
        f'[bg]\nmethod = "grabcut"\nfill = "{fill}"\n[crop]\nsize = 128\naspect = "1:1"\nworkers = 1\n'
        '[layout]\nrepeats = 1\n', encoding="utf-8")
    return ws


def statuses(result: object) -> dict[str, str]:
    return {o.name: o.status for o in result.stages}  # type: ignore[attr-defined]


def chains(ws: Path) -> dict[str, list[tuple[str, str, str]]]:
    """Image sha -> its main line as (kind, parent, file sha)."""
    with Workspace.open(ws) as w:
        return {r.sha256: [(d["kind"], d["parent"], d["sha256"]) for d in r.extra["chain"]]
                for r in w.records()}


def test_run_bg_then_crop_trains_on_crops_of_the_cut_outs_with_their_alpha(tmp_path: Path) -> None:
    ws = workspace(tmp_path)
    assert statuses(run_pipeline(ws)) == dict.fromkeys(STAGES, "ran")
    for sha, line in chains(ws).items():
        (cut_kind, cut_parent, cut_sha), (crop_kind, crop_parent, _) = line
        assert (cut_kind, cut_parent) == ("cutout", sha) and (crop_kind, crop_parent) == ("crop", cut_sha)
    images = sorted(p for p in (ws / "dataset/img").rglob("*") if p.suffix in (".png", ".jpg"))
    assert [p.name for p in images] == ["cat.png", "cup.png"]  # the JPEG originals became PNG cut-outs
    for path in images:
        with Image.open(path) as image:
            assert image.mode == "RGBA" and image.size == (128, 128)
            alpha = np.asarray(image.getchannel("A"))
            rgb = np.asarray(image.convert("RGB")).astype(int)
        assert (alpha < 128).any() and (alpha >= 128).any()  # subject and cut-away background
        assert rgb[alpha == 0].min() >= 250  # the white fill of the cut-out, not the original's grey
    toml = tomllib.loads((ws / "dataset/dataset.toml").read_text(encoding="utf-8"))
    assert [s.get("alpha_mask") for s in toml["datasets"][0]["subsets"]] == [True]
    # the re-run the issue reported as "unchanged" after crop had thrown the cut-outs away
    again = run_pipeline(ws)
    assert statuses(again) == {"import": "ran", "bg": "unchanged", "crop": "unchanged",
                               "captions": "unchanged", "layout": "unchanged"}


def test_changed_bg_settings_recrop_from_the_new_cut_out(tmp_path: Path) -> None:
    ws = workspace(tmp_path)
    run_pipeline(ws)
    before = chains(ws)
    result = run_pipeline(ws, overrides=["bg.fill=black"])
    assert statuses(result) == {"import": "ran", "bg": "ran", "crop": "ran", "captions": "unchanged",
                                "layout": "ran"}
    after = chains(ws)
    for sha, line in after.items():
        (_, _, cut_sha), (_, crop_parent, crop_sha) = line
        assert cut_sha != before[sha][0][2] and crop_parent == cut_sha and crop_sha != before[sha][1][2]
    for path in (ws / "dataset/img").rglob("*.png"):
        with Image.open(path) as image:
            rgba = np.asarray(image)
        assert rgba[rgba[:, :, 3] == 0][:, :3].max() <= 5  # the black fill now
    assert statuses(run_pipeline(ws, overrides=["bg.fill=black"])) == {
        "import": "ran", **dict.fromkeys(("bg", "crop", "captions", "layout"), "unchanged")}


def test_crop_alone_crops_the_original_and_bg_afterwards_makes_it_stale(tmp_path: Path) -> None:
    ws = tmp_path / "ws"
    import_sources(ws, [scrape(tmp_path / "scrape")], ImportConfig(workers=1))
    crop = CropConfig(sources=("saliency",), size=128, workers=1)
    crop_images(ws, crop)
    with Workspace.open(ws) as w:
        for record in w.records():
            [(kind, parent, _)] = [(d["kind"], d["parent"], d["sha256"]) for d in record.extra["chain"]]
            assert (kind, parent) == ("crop", record.sha256) and record.mode == "RGB"
            assert record.extra["crop"]["original_size"] == (320, 300)
    remove_backgrounds(ws, BgConfig(method="grabcut"))
    assert {tuple(k for k, _, _ in line) for line in chains(ws).values()} == {("cutout",)}
    crop_images(ws, crop)
    assert {tuple(k for k, _, _ in line) for line in chains(ws).values()} == {("cutout", "crop")}


def test_closeups_hang_on_the_chain_and_go_with_their_crop(tmp_path: Path) -> None:
    raw = tmp_path / "raw"
    write(raw / "astro.png", png(photo("astronaut").convert("RGB").resize((1024, 1024))))
    ws = tmp_path / "ws"
    import_sources(ws, [raw], ImportConfig(workers=1))
    crop = CropConfig(sources=("faces", "saliency"), face_closeups=True, workers=1)
    crop_images(ws, crop)
    with Workspace.open(ws) as w:
        [record] = w.records()
        rows = w.manifest.derived_rows()[record.sha256]
    assert sorted(d.kind for d in rows) == ["closeup-1", "crop"]
    assert all(d.parent == record.sha256 for d in rows) and len(record.extra["closeups"]) == 1
    dataset = tmp_path / "dataset"
    layout(ws, dataset, LayoutConfig(repeats=1))
    assert sorted(p.name for p in dataset.rglob("*.png")) == ["astro-closeup1.png", "astro.png"]
    crop_images(ws, replace(crop, face_closeups=False))  # the next run makes none: the old one goes
    with Workspace.open(ws) as w:
        [record] = w.records()
        assert [d.kind for d in w.manifest.derived_rows()[record.sha256]] == ["crop"]
        assert "closeups" not in record.extra


# -- schema 6 -> 7 ----------------------------------------------------------------------------

# The rows schema 6 held, written with the statements the release before the chain used
# (curate/stages/crop/run.py and curate/stages/background/run.py at that commit).
V6_CROP = ("INSERT INTO crops (image_sha256, kind, sha256, stored_path, width, height, mode, format, box, "
           "subject, run_id) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)")
V6_BG = ("INSERT OR REPLACE INTO backgrounds (image_sha256, sha256, source_path, source_row, method, run_id) "
         "VALUES (?, ?, ?, ?, ?, ?)")


def _file(ws: Path, image: Image.Image, fmt: str) -> tuple[str, str, int, int, str, str]:
    """Store an image as the release did (content-addressed); (sha, path, w, h, mode, format)."""
    import hashlib
    import io

    buf = io.BytesIO()
    image.save(buf, fmt)
    sha = hashlib.sha256(buf.getvalue()).hexdigest()
    rel = f"images/{sha[:2]}/{sha}.{'png' if fmt == 'PNG' else 'jpg'}"
    write(ws / rel, buf.getvalue())
    return sha, rel, image.width, image.height, image.mode, fmt


def v6_workspace(tmp_path: Path) -> tuple[Path, dict[str, str]]:
    """A workspace whose manifest is at schema 6, holding the three states the release left:
    a crop with a close-up; a crop that bg then cut (the cut-out replaced the 'main' row and
    kept the crop in source_row); a cut-out that a later crop run replaced."""
    raw = tmp_path / "raw"
    for name in ("astronaut", "chelsea", "coffee"):
        write(raw / f"{name}.png", png(photo(name).convert("RGB").resize((200, 160))))
    ws = tmp_path / "ws"
    import_sources(ws, [raw], ImportConfig(workers=1))
    db_path = ws / ".curate/manifest.sqlite"
    with sqlite3.connect(db_path) as new:
        images = [tuple(r) for r in new.execute("SELECT * FROM images ORDER BY rowid")]
        origins = [tuple(r) for r in new.execute("SELECT * FROM origins ORDER BY id")]
    for suffix in ("", "-wal", "-shm"):
        Path(f"{db_path}{suffix}").unlink(missing_ok=True)
    db = sqlite3.connect(db_path, isolation_level=None)
    for version in range(1, 7):
        db.executescript(f"BEGIN;\n{MIGRATIONS[version]}\nPRAGMA user_version = {version};\nCOMMIT;")
    db.executemany(f"INSERT INTO images VALUES ({', '.join('?' * len(images[0]))})", images)
    db.executemany(f"INSERT INTO origins VALUES ({', '.join('?' * len(origins[0]))})", origins)
    shas = {Path(o[1]).stem: o[5] for o in origins}
    for run, command in ((1, "crop"), (2, "bg"), (3, "crop")):
        db.execute("INSERT INTO runs (id, command, params, started_at, finished_at) "
                   "VALUES (?, ?, '{}', 't', 't')", (run, command))
    crop, box = Image.new("RGB", (96, 96), (10, 20, 30)), json.dumps([10, 20, 96, 96])
    # astronaut: a crop and a close-up, from the original
    main, face = _file(ws, crop, "JPEG"), _file(ws, Image.new("RGB", (64, 64), (1, 2, 3)), "JPEG")
    db.execute(V6_CROP, (shas["astronaut"], "main", *main, box, "face", 3))
    db.execute(V6_CROP, (shas["astronaut"], "closeup-1", *face, json.dumps([5, 5, 64, 64]), "face", 3))
    # chelsea: cropped (run 1), then cut by bg (run 2) from that crop
    old_crop = _file(ws, Image.new("RGB", (96, 96), (40, 50, 60)), "PNG")
    row = dict(zip(("image_sha256", "kind", "sha256", "stored_path", "width", "height", "mode", "format",
                    "box", "subject", "run_id"), (shas["chelsea"], "main", *old_crop, box, "saliency", 1),
                   strict=True))
    cut = _file(ws, Image.new("RGBA", (96, 96), (40, 50, 60, 128)), "PNG")
    db.execute(V6_CROP, (shas["chelsea"], "main", *cut, box, "saliency", 2))
    db.execute(V6_BG, (shas["chelsea"], cut[0], old_crop[1], json.dumps(row), "grabcut", 2))
    # coffee: cut by bg (run 2) from the original, then a crop run (3) replaced the main row
    lost = _file(ws, Image.new("RGBA", (200, 160), (70, 80, 90, 128)), "PNG")
    coffee_path = next(i[1] for i in images if i[0] == shas["coffee"])
    db.execute(V6_BG, (shas["coffee"], lost[0], coffee_path, None, "grabcut", 2))
    coffee_crop = _file(ws, Image.new("RGB", (96, 96), (90, 90, 90)), "JPEG")
    db.execute(V6_CROP, (shas["coffee"], "main", *coffee_crop, box, "saliency", 3))
    db.execute("INSERT INTO decisions (image_sha256, subject, stage, verdict, reason, run_id, created_at) "
               "VALUES (?, 'coffee.png', 'bg', 'cut', 'r', 2, 't')", (shas["coffee"],))
    db.close()
    return ws, {"astronaut": main[0], "closeup": face[0], "chelsea_crop": old_crop[0], "chelsea_cut": cut[0],
                "coffee_cut": lost[0], "coffee_crop": coffee_crop[0],
                **{f"image:{k}": v for k, v in shas.items()}}


def test_schema_6_workspace_migrates_with_every_crop_and_cut_out(tmp_path: Path) -> None:
    ws, shas = v6_workspace(tmp_path)
    with Workspace.open(ws) as w:
        assert w.manifest.db.execute("PRAGMA user_version").fetchone()[0] >= 7
        rows = {(d.kind, d.sha256): d for ds in w.manifest.derived_rows().values() for d in ds}
        records = {Path(r.origins[0].source_path).stem: r for r in w.records()}
        assert w.manifest.decisions(stage="bg")  # decisions are untouched
    assert {(k, s) for k, s in rows} == {
        ("crop", shas["astronaut"]), ("closeup-1", shas["closeup"]), ("crop", shas["chelsea_crop"]),
        ("cutout", shas["chelsea_cut"]), ("cutout", shas["coffee_cut"]), ("crop", shas["coffee_crop"])}
    # what each image stood for before the migration, it stands for after it
    astronaut = records["astronaut"]
    assert astronaut.extra["leaf"] == shas["astronaut"] and len(astronaut.extra["closeups"]) == 1
    assert records["chelsea"].extra["leaf"] == shas["chelsea_cut"]
    assert [d["kind"] for d in records["chelsea"].extra["chain"]] == ["crop", "cutout"]
    assert rows[("cutout", shas["chelsea_cut"])].parent == shas["chelsea_crop"]
    assert records["coffee"].extra["leaf"] == shas["coffee_crop"]
    coffee_cut = rows[("cutout", shas["coffee_cut"])]
    assert coffee_cut.parent == shas["image:coffee"] and (coffee_cut.width, coffee_cut.height) == (200, 160)
    for record in records.values():
        assert record.path.is_file()
    # the next crop run crops coffee's kept cut-out, as the chain says it should
    crop_images(ws, CropConfig(sources=("saliency",), size=64, workers=1))
    coffee = chains(ws)[shas["image:coffee"]]
    assert [(k, p) for k, p, _ in coffee] == [("cutout", shas["image:coffee"]), ("crop", shas["coffee_cut"])]


# -- only curate/manifest/ knows SQL ----------------------------------------------------------

# every package but the manifest's: only curate/manifest/ knows the schema (issue 15)
OWNED = [*(str(p.relative_to(ROOT)) for p in sorted((ROOT / "curate").iterdir())
           if p.name not in ("manifest", "__pycache__") and (p.is_dir() or p.suffix == ".py")),
         "tagging", "buckets", "trainer"]
SQL = re.compile(r"execute\(|executemany\(|executescript\(|\.rows\(|\b(SELECT|INSERT|UPDATE|DELETE)\s+[\w*]")


@pytest.mark.parametrize("part", OWNED)
def test_no_sql_outside_the_manifest(part: str) -> None:
    path = ROOT / part
    files = [path] if path.is_file() else sorted(path.rglob("*.py"))
    assert files
    hits = [f"{f.relative_to(ROOT)}:{n}: {line.strip()}" for f in files
            for n, line in enumerate(f.read_text(encoding="utf-8").splitlines(), 1) if SQL.search(line)]
    assert hits == []


def test_a_mask_that_finds_no_subject_keeps_the_original(tmp_path: Path) -> None:
    """GrabCut finds nothing in a flat grey picture: an all-transparent cut-out would train as an
    empty image, so the original stays in the chain's place, with the reason recorded."""
    ws = workspace(tmp_path)
    write(tmp_path / "scrape" / "flat.png", png(Image.new("RGB", (200, 160), (120, 120, 120))))
    run_pipeline(ws)
    with Workspace.open(ws) as w:
        flat = next(r for r in w.records() if r.origins[0].source_path.endswith("flat.png"))
        reasons = [d.reason for d in flat.decisions if d.stage == "bg"]
    assert [d["kind"] for d in flat.extra["chain"]] == ["crop"]  # cropped from the original
    assert reasons and reasons[0].startswith("no subject found")
    with Image.open(next((ws / "dataset").glob("img/*/flat.*"))) as image:
        assert image.mode == "RGB" or image.getextrema()[-1] == (255, 255)  # opaque, not blank
