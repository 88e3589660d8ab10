"""`curate filter`: measures and verdicts on real photos and their generated bad copies, face
detection on real faces, and the stage on workspaces and plain folders.

Thresholds are QualityConfig's defaults, the ones bench/filter_quality.py chose
(docs/benchmarks.md); these tests check their verdicts on a slice of the same fixtures.
"""

from __future__ import annotations

import io
import json
import xml.etree.ElementTree as ET
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from curate.cli import cli
from curate.errors import CurateError
from curate.record import REJECTED
from curate.stages.ingest import ImportConfig, import_sources
from curate.stages.quality.cascade import group_rectangles, load_cascade
from curate.stages.quality.config import QualityConfig
from curate.stages.quality.faces import DETECTORS, find_faces
from curate.stages.quality.judge import judge
from curate.stages.quality.run import quality_filter
from curate.stages.quality.score import measure_image
from curate.workspace import Workspace
from fixtures.quality import Case, render, source, variants
from fixtures.scrape import write
from tests.conftest import tree_state

DEFAULTS = QualityConfig()
NO_FACES = replace(DEFAULTS, skip=("text", "border_face"))
VARIANTS = {v.name: v for v in variants()}
# The astronaut portrait's face, as OpenCV's detectMultiScale finds it with this cascade.
ASTRONAUT_FACE = (169, 62, 107, 107)


def case(name: str, variant: str) -> tuple[Case, Image.Image]:
    found, data = render(name, VARIANTS[variant], source(name))
    return found, Image.open(io.BytesIO(data))


def failed(image: Image.Image, config: QualityConfig) -> set[str]:
    return {check for check, _ in judge(measure_image(image, config.detector), config)}


@pytest.mark.parametrize("name", ["astronaut", "coffee", "camera"])
@pytest.mark.parametrize("variant", ["orig", "blur2", "lowres4", "half", "small", "dark", "bright", "grey",
                                     "sepia", "q6", "q85", "strip5", "crop2", "corner_credit"])
def test_each_copy_fails_exactly_its_checks(name: str, variant: str) -> None:
    truth, image = case(name, variant)
    got = failed(image, NO_FACES) - truth.ignore
    assert got == set(truth.expect) - {"text", "border_face"}, truth


def test_text_check_is_opt_in_and_catches_tiled_watermarks() -> None:
    _, marked = case("chelsea", "tiled_text")
    _, credit = case("chelsea", "corner_credit")
    assert "text" not in failed(marked, NO_FACES)
    with_text = replace(NO_FACES, skip=("border_face",))
    assert "text" in failed(marked, with_text)
    assert "text" not in failed(credit, with_text)  # a small corner signature is not text-heavy


def test_blur_is_judged_at_the_same_scale_whatever_the_size() -> None:
    import cv2

    photo = source("astronaut")
    big = photo.resize((2048, 2048), Image.Resampling.LANCZOS)  # 4x upscale: sharp once shrunk
    native = cv2.Laplacian(np.asarray(big.convert("L")), cv2.CV_64F).var()
    assert native < DEFAULTS.min_sharpness  # measured at its own size it would read as blurry
    scores = measure_image(big, "none")
    assert scores["sharpness"] > max(DEFAULTS.min_sharpness, 0.5 * measure_image(photo, "none")["sharpness"])
    assert scores["fine_detail"] > DEFAULTS.min_fine_detail


def test_faces_found_on_real_photos(tmp_path: Path) -> None:
    faces = find_faces(np.asarray(source("astronaut")), "frontal")
    best = max(faces, key=lambda f: f.score)
    assert _iou(best.box, ASTRONAUT_FACE) > 0.6 and best.score >= DEFAULTS.face_neighbors
    # a user's own LBP cascade file (e.g. lbpcascade_animeface.xml) runs the same way
    mine = tmp_path / "my_cascade.xml"
    mine.write_bytes(DETECTORS["frontal"].read_bytes())
    assert [f.box for f in find_faces(np.asarray(source("astronaut")), str(mine))] == [f.box for f in faces]
    for name in ("coffee", "chelsea", "rocket"):  # no person: nothing strong enough to count
        assert all(f.score < DEFAULTS.face_neighbors for f in find_faces(np.asarray(source(name)), "frontal"))


@pytest.mark.parametrize("name", ["astronaut", "coffee"])
def test_another_face_at_the_border_is_rejected_inside_is_not(name: str) -> None:
    _, border = case(name, "face_border")
    _, inside = case(name, "face_inside")
    assert "border_face" in failed(border, DEFAULTS)
    assert "border_face" not in failed(inside, DEFAULTS)
    reason = dict(judge(measure_image(border, "frontal"), DEFAULTS))["border_face"]
    assert reason.startswith("another person's face at the border")


def test_the_subject_close_up_is_not_another_person() -> None:
    head = source("astronaut").crop((140, 30, 300, 190))  # the face fills the frame and touches it
    assert "border_face" not in failed(head, DEFAULTS)


def test_group_rectangles_as_opencv() -> None:
    cluster = [(100, 100, 50, 50), (102, 98, 52, 52), (98, 101, 49, 49), (101, 100, 50, 50)]
    grouped = group_rectangles([*cluster, (300, 300, 40, 40)], threshold=3)
    assert grouped == [((100, 100, 50, 50), 4)]  # averaged, rounded; the lone box is dropped
    assert group_rectangles(cluster, threshold=4) == []  # a cluster needs more than threshold


def test_cascade_files_that_cannot_run_say_why(tmp_path: Path) -> None:
    haar = ET.parse(DETECTORS["frontal"]).getroot()
    haar.find("cascade/featureType").text = "HAAR"  # type: ignore[union-attr]
    ET.ElementTree(haar).write(tmp_path / "haar.xml")
    with pytest.raises(CurateError, match="only LBP cascades"):
        load_cascade(tmp_path / "haar.xml")
    write(tmp_path / "junk.xml", "<opencv_storage><x/></opencv_storage>")
    with pytest.raises(CurateError, match="no <cascade>"):
        load_cascade(tmp_path / "junk.xml")
    write(tmp_path / "junk.onnx", b"not a model")
    with pytest.raises(CurateError, match="YuNet"):
        find_faces(np.zeros((64, 64, 3), np.uint8), str(tmp_path / "junk.onnx"))
    with pytest.raises(CurateError, match="frontal, none"):
        replace(DEFAULTS, faces="nope").check()
    with pytest.raises(CurateError, match="unknown check"):
        replace(DEFAULTS, skip=("blurry",)).check()


def _iou(a: tuple[int, int, int, int], b: tuple[int, int, int, int]) -> float:
    x0, y0 = max(a[0], b[0]), max(a[1], b[1])
    x1, y1 = min(a[0] + a[2], b[0] + b[2]), min(a[1] + a[3], b[1] + b[3])
    inter = max(0, x1 - x0) * max(0, y1 - y0)
    return inter / (a[2] * a[3] + b[2] * b[3] - inter)


# -- the stage -------------------------------------------------------------------------------

def build_raw(root: Path) -> Path:
    """Five copies of the astronaut: good, blurred, dark, grey, small; captions beside two."""
    for variant in ("orig", "blur2", "dark", "grey", "small"):
        found, data = render("astronaut", VARIANTS[variant], source("astronaut"))
        write(root / "sub" / found.file, data)
    write(root / "sub/astronaut__orig.txt", "1girl, spacesuit\n")
    write(root / "sub/astronaut__blur2.txt", "blurry\n")
    return root


def test_workspace_rejects_with_reasons_and_rejudges_from_stored_scores(tmp_path: Path) -> None:
    ws = tmp_path / "ws"
    import_sources(ws, [build_raw(tmp_path / "raw")], ImportConfig(workers=1))
    config = replace(NO_FACES, workers=1)
    dry = quality_filter(ws, config, dry_run=True)
    assert len(dry.rejected) == 4 and dry.measured == 5
    with Workspace.open(ws) as w:
        assert not w.manifest.decisions(stage="quality") and len(w.active_records()) == 5
    result = quality_filter(ws, config)
    reasons = {Path(it.shown).name: [c for c, _ in it.failures] for it in result.rejected}
    assert reasons == {"astronaut__blur2.png": ["blur"], "astronaut__dark.png": ["blur", "dark"],
                       "astronaut__grey.png": ["monochrome"], "astronaut__small.png": ["small"]}
    with Workspace.open(ws) as w:
        rows = w.manifest.decisions(stage="quality", verdict=REJECTED)
        assert len(rows) == 4 and any("too dark" in r["reason"] and "blurry" in r["reason"] for r in rows)
        assert [Path(r.origins[0].source_path).name for r in w.active_records()] == ["astronaut__orig.png"]
    # other thresholds: no image is read again, and this run's verdicts replace the last ones
    again = quality_filter(ws, replace(config, skip=("text", "border_face", "blur", "monochrome")))
    assert again.measured == 0 and len(again.rejected) == 2
    with Workspace.open(ws) as w:
        assert len(w.manifest.decisions(stage="quality")) == 2 and len(w.active_records()) == 3


def test_folder_report_and_out_copy_leave_the_source_alone(tmp_path: Path) -> None:
    raw = build_raw(tmp_path / "raw")
    before = tree_state(raw)
    report = quality_filter(raw, replace(NO_FACES, workers=1))
    assert report.mode == "folder" and len(report.rejected) == 4 and report.copied == []
    dry = quality_filter(raw, NO_FACES, out=tmp_path / "clean", dry_run=True)
    assert dry.copied == ["sub/astronaut__orig.png"]
    assert not (tmp_path / "clean").exists()
    quality_filter(raw, NO_FACES, out=tmp_path / "clean")
    assert sorted(p.relative_to(tmp_path / "clean").as_posix() for p in (tmp_path / "clean").rglob("*")
                  if p.is_file()) == ["sub/astronaut__orig.png", "sub/astronaut__orig.txt"]
    assert tree_state(raw) == before
    with pytest.raises(CurateError, match="never written to"):
        quality_filter(raw, NO_FACES, out=raw / "clean")
    with pytest.raises(CurateError, match="--out is for plain folders"):
        import_sources(tmp_path / "ws", [raw], ImportConfig(workers=1))
        quality_filter(tmp_path / "ws", NO_FACES, out=tmp_path / "x")


def test_cli_dry_run_json_and_settings(tmp_path: Path) -> None:
    raw = build_raw(tmp_path / "raw")
    runner = CliRunner()
    done = runner.invoke(cli, ["filter", str(raw), "--dry-run", "--json", "--skip", "border_face",
                               "--set", "filter.min_side=600", "--workers", "1"])
    assert done.exit_code == 0, done.output
    data = json.loads(done.output)
    assert data["counts"]["rejected"] == 5 and data["counts"]["small"] == 5  # 512 px is now too small
    assert data["config"]["min_side"] == 600 and data["config"]["skip"] == ["border_face"]
    text = runner.invoke(cli, ["filter", str(raw), "--skip", "border_face", "--skip", "text",
                               "--workers", "1"])
    assert text.exit_code == 0, text.output
    assert "rejected: sub/astronaut__grey.png: greyscale or monochrome" in text.output
    assert "add --out DIR to copy the 1 images that pass" in text.output
    bad = runner.invoke(cli, ["filter", str(raw), "--set", "quality.colour=3"])
    assert bad.exit_code == 2 and "unknown option(s) colour" in bad.output
