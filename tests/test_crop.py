"""`curate crop`: window geometry, subject sources, accuracy on photos with known subject
boxes (the crop keeps >= 95% of the box, as bench/crop_accuracy.py measures on the whole set),
and the stage on plain folders and workspaces, down to `curate layout` using the crops."""

from __future__ import annotations

import functools
import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from curate.cli import cli
from curate.errors import CurateError
from curate.stages.crop.config import CropConfig
from curate.stages.crop.geometry import output_size, place_window
from curate.stages.crop.render import plan
from curate.stages.crop.run import crop_images
from curate.stages.crop.subject import find_subject
from curate.stages.crop.user_boxes import match, read_crops
from curate.stages.ingest import ImportConfig, import_sources
from curate.stages.layout import LayoutConfig, layout
from curate.stages.quality.config import QualityConfig
from curate.stages.quality.run import quality_filter
from curate.workspace import Workspace
from fixtures.quality import CropCase, crop_cases
from fixtures.scrape import jpeg, photo, png, write
from tests.conftest import tree_state

KEPT = 0.95
NO_FACES = CropConfig(sources=("alpha", "saliency"), workers=1)


@functools.cache
def cases() -> dict[str, tuple[CropCase, Image.Image]]:
    return {case.file: (case, image) for case, image in crop_cases()}


@pytest.mark.parametrize(("aspect", "subject", "size"), [
    ("1:1", (0, 0, 10, 10), (512, 512)), ("2:3", (0, 0, 10, 10), (416, 624)),
    ("keep", (0, 0, 10, 10), (704, 376)), ("bucket", (0, 0, 20, 30), (384, 640)),
])
def test_output_size(aspect: str, subject: tuple[int, int, int, int], size: tuple[int, int]) -> None:
    assert output_size(512, aspect, (1500, 800), subject) == size
    with pytest.raises(CurateError, match="W:H"):
        output_size(512, "wide", (100, 100), subject)


def test_window_holds_the_subject_and_never_leaves_the_image() -> None:
    w = place_window((1200, 600), (1000, 200, 150, 150), (512, 512))
    assert w.box == (688, 19, 512, 512) and w.kept((1000, 200, 150, 150)) == 1.0 and not w.small
    tight = place_window((2000, 2000), (900, 900, 200, 200), (256, 256), padding=0.1)
    assert tight.box == (872, 872, 256, 256)  # 200 + 2 x 10% padding = 240, grown to 256 (no upscale)
    wide = place_window((2000, 1000), (100, 100, 1800, 300), (512, 512), focus=(1500, 250))
    # the subject is wider than the window: the window stays inside it, as near its focus as that allows
    assert wide.box[2] == 1000 and wide.box[0] == 900 and wide.box[0] < 1500 < wide.box[0] + 1000
    assert place_window((1200, 600), (0, 0, 10, 10), (512, 512), fit="max").box == (0, 0, 600, 600)


def test_too_small_is_never_enlarged_beyond_max_upscale() -> None:
    w = place_window((300, 200), (50, 50, 100, 100), (512, 512))
    assert w.small and w.box == (0, 0, 200, 200) and w.out == (200, 200) and w.target == (512, 512)
    assert not place_window((300, 200), (50, 50, 100, 100), (512, 512), max_upscale=3.0).small


def test_crops_file_rows_and_errors(tmp_path: Path) -> None:
    path = tmp_path / "crops.csv"
    path.write_text("file,x,y,w,h\n# mine\nsub/a.jpg, 10, 20, 30, 40\n\"b c.png\",0,0,5,5\n")
    boxes = read_crops(path)
    assert boxes == {"sub/a.jpg": (10, 20, 30, 40), "b c.png": (0, 0, 5, 5)}
    assert match(boxes, ["x.png", "./sub/a.jpg"]) == ("sub/a.jpg", (10, 20, 30, 40))
    path.write_text("a.jpg,1,2,0,4\n")
    with pytest.raises(CurateError, match=r"crops.csv:1: expected file,x,y,w,h"):
        read_crops(path)


def test_subject_sources_in_order_and_the_user_box_wins() -> None:
    case, image = cases()["cat_cutout_wide2.png"]
    rgba = np.asarray(image)
    alpha = find_subject(rgba[..., :3], rgba[..., 3], sources=("alpha", "saliency"), detector="none")
    assert alpha.source == "alpha" and alpha.box == tuple(float(v) for v in case.box)
    salient = find_subject(rgba[..., :3], rgba[..., 3], sources=("saliency",), detector="none")
    assert salient.source == "saliency"
    astronaut = np.asarray(photo("astronaut"))
    face = find_subject(astronaut, None)
    assert face.source == "face" and len(face.faces) == 1
    user = find_subject(astronaut, None, user=(0, 0, 50, 50))
    assert user.source == "user" and user.box == (0, 0, 50, 50)


@pytest.mark.parametrize("file", ["astronaut_x2.png", "lfw3_wide2.png", "lfw27_tall0.png",
                                  "cat_cutout_tall0.png", "cup_wide0.png", "camera_x2.png",
                                  "deep_field_user.png"])
def test_crop_keeps_the_known_subject(file: str) -> None:
    case, image = cases()[file]
    outcome = plan(image, CropConfig(), case.user)
    assert outcome.subject is not None and outcome.subject.source == case.finds
    assert outcome.pieces[0].window.kept(case.box) >= KEPT


# -- the stage -------------------------------------------------------------------------------

def build_raw(root: Path) -> Path:
    """A large portrait (the astronaut at 2x) with a caption, a small photo, a wide photo."""
    big = photo("astronaut").convert("RGB").resize((1024, 1024))
    write(root / "people/astro.png", png(big))
    write(root / "people/astro.txt", "1girl, spacesuit\n")
    write(root / "people/astro.png.json", "{}")
    write(root / "small.jpg", jpeg(photo("chelsea").convert("RGB").resize((300, 200))))
    write(root / "wide.jpg", jpeg(photo("rocket").convert("RGB").resize((1280, 854))))
    write(root / "wide.txt", "rocket\n")
    return root


def test_folder_out_writes_crops_captions_and_closeups(tmp_path: Path) -> None:
    raw = build_raw(tmp_path / "raw")
    before = tree_state(raw)
    report = crop_images(raw, replace(CropConfig(), workers=1))
    assert report.out is None and report.counts()["cropped"] == 3 and not (tmp_path / "out").exists()
    result = crop_images(raw, replace(CropConfig(), workers=1, face_closeups=True), out=tmp_path / "out")
    assert tree_state(raw) == before
    files = sorted(p.relative_to(tmp_path / "out").as_posix() for p in (tmp_path / "out").rglob("*"))
    assert files == ["people", "people/astro.png", "people/astro.png.json", "people/astro.txt",
                     "people/astro_face1.png", "people/astro_face1.png.json", "people/astro_face1.txt",
                     "small.jpg", "wide.jpg", "wide.txt"]
    assert Image.open(tmp_path / "out/people/astro.png").size == (512, 512)
    assert Image.open(tmp_path / "out/wide.jpg").size == (512, 512)
    assert Image.open(tmp_path / "out/small.jpg").size == (200, 200)  # never enlarged
    small = next(it for it in result.done if it.shown == "small.jpg")
    assert small.outcome and small.outcome.pieces[0].window.small
    with pytest.raises(CurateError, match="never written to"):
        crop_images(raw, NO_FACES, out=raw / "crops")


def test_workspace_crops_replace_originals_in_later_stages(tmp_path: Path) -> None:
    ws = tmp_path / "ws"
    raw = build_raw(tmp_path / "raw")
    write(raw / "crops.csv", "file,x,y,w,h\nwide.jpg,600,100,300,600\n")
    import_sources(ws, [raw], ImportConfig(workers=1))
    crop_images(ws, NO_FACES, dry_run=True)
    with Workspace.open(ws) as w:
        assert not w.manifest.derived_rows() and all("crop" not in r.extra for r in w.records())
    crop_images(ws, replace(NO_FACES, sources=("faces", "saliency"), face_closeups=True),
                crops_file=raw / "crops.csv")
    with Workspace.open(ws) as w:
        records = {Path(r.origins[0].source_path).name: r for r in w.records()}
        astro, wide = records["astro.png"], records["wide.jpg"]
        assert astro.extra["crop"]["subject"] == "face" and len(astro.extra["closeups"]) == 1
        assert Image.open(astro.extra["closeups"][0]).size == (512, 512)
        assert (wide.width, wide.height) == (512, 512) and wide.path.parent.parent == w.images_dir
        assert wide.extra["crop"]["box"][0] <= 600 and wide.extra["crop"]["subject"] == "user"
        assert Path(wide.extra["crop"]["original"]).is_file()
        assert wide.extra["crop"]["original_size"] == (1280, 854)
        verdicts = {r["subject"]: r["verdict"] for r in w.manifest.decisions(stage="crop")}
        assert sorted(verdicts.values()) == ["cropped", "cropped", "small"]
    with_closeups = layout(ws, tmp_path / "with-closeups", LayoutConfig(repeats=1))
    folder = tmp_path / "with-closeups/img/1_concept"
    assert (folder / "astro-closeup1.png").is_file() and (folder / "astro-closeup1.txt").is_file()
    assert with_closeups.plan[0]["images"] == 4 and with_closeups.total_steps == 4 * 10 // 2
    # re-crop from the originals at another size: the previous crops are replaced, not cropped again
    crop_images(ws, replace(NO_FACES, size=256))
    with Workspace.open(ws) as w:
        sizes = sorted((r.width, r.height) for r in w.records())
        assert sizes == [(200, 200), (256, 256), (256, 256)]
        assert len(w.manifest.rows("SELECT * FROM derived")) == 3
        # the first run's decisions went with it (they no longer count): one run's rows are left
        assert len(w.manifest.rows("SELECT * FROM decisions WHERE stage = 'crop'")) == 3
        assert len(w.manifest.decisions(stage="crop")) == 3
    out = tmp_path / "dataset"
    layout(ws, out, LayoutConfig(repeats=1))
    written = sorted(Image.open(p).size for p in (out / "img").rglob("*") if p.suffix in (".png", ".jpg"))
    assert written == [(200, 200), (256, 256), (256, 256)]  # layout wrote the crops, not the originals
    # the quality filter judges what later stages use: the crops (the 200 px one is too small)
    result = quality_filter(ws, QualityConfig(skip=("text", "border_face", "monochrome"), workers=1))
    assert [(it.shown.rsplit("/", 1)[-1], [c for c, _ in it.failures]) for it in result.rejected] == [
        ("small.jpg", ["small"])]


def test_cli_dry_run_json(tmp_path: Path) -> None:
    raw = build_raw(tmp_path / "raw")
    done = CliRunner().invoke(cli, ["crop", str(raw), "--dry-run", "--json", "--sources", "alpha,saliency",
                                    "--aspect", "2:3", "--size", "384", "--workers", "1"])
    assert done.exit_code == 0, done.output
    data = json.loads(done.output)
    assert data["counts"]["cropped"] == 3 and data["config"]["aspect"] == "2:3"
    pieces = {c["file"]: c["pieces"][0] for c in data["crops"]}
    assert pieces["wide.jpg"]["out"] == [312, 472] and pieces["small.jpg"]["small"] is True
    bad = CliRunner().invoke(cli, ["crop", str(raw), "--sources", "alpha,magic"])
    assert bad.exit_code == 2 and "unknown magic" in bad.output
