"""`curate bg`: GrabCut on real photos pasted on plain backgrounds (known subject box), fills
and masks, folders with --out and workspaces (re-runs cut from the same file), and the rembg
path with a tiny u2net-style ONNX model (fixtures/tiny_seg.py), offline."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from curate.cli import cli
from curate.errors import CurateError
from curate.stages.background import BgConfig, remove_backgrounds
from curate.stages.background.config import parse_fill
from curate.stages.ingest import ImportConfig, import_sources
from curate.workspace import Workspace
from fixtures.scrape import photo, png, write
from fixtures.tiny_seg import build

BOX = (90, 70, 140, 160)  # x, y, w, h of the photo in the scene
GRABCUT = BgConfig(method="grabcut")


def scene(name: str = "chelsea") -> Image.Image:
    """A real photo (downscaled) on a plain, slightly noisy light background."""
    rng = np.random.default_rng(0)
    canvas = np.clip(rng.normal(225, 4, (300, 320, 3)), 0, 255).astype(np.uint8)
    x, y, w, h = BOX
    canvas[y:y + h, x:x + w] = np.asarray(photo(name).convert("RGB").resize((w, h), Image.Resampling.LANCZOS))
    return Image.fromarray(canvas)


def truth() -> np.ndarray:
    mask = np.zeros((300, 320), bool)
    x, y, w, h = BOX
    mask[y:y + h, x:x + w] = True
    return mask


def iou(alpha: np.ndarray) -> float:
    got, want = alpha >= 128, truth()
    return float((got & want).sum() / (got | want).sum())


@pytest.fixture()
def raw(tmp_path: Path) -> Path:
    folder = tmp_path / "raw"
    write(folder / "cat.jpg", png(scene("chelsea")))  # PNG bytes: lossless scene
    write(folder / "cat.txt", "sks cat")
    write(folder / "sub" / "cup.png", png(scene("coffee")))
    return folder


def test_fill_parsing() -> None:
    assert parse_fill("transparent") is None
    assert parse_fill("white") == (255, 255, 255)
    assert parse_fill("#FF8000") == (255, 128, 0)
    with pytest.raises(CurateError, match="RRGGBB"):
        parse_fill("#12")


def test_grabcut_folder_white_fill(raw: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    result = remove_backgrounds(raw, BgConfig(method="grabcut", fill="white"), out=out)
    assert result.counts()["cut"] == 2 and "grabcut" in result.device
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()) == [
        "cat.png", "cat.txt", "sub/cup.png"]
    for name in ("cat.png", "sub/cup.png"):
        image = np.asarray(Image.open(out / name))
        assert image.shape == (300, 320, 4)
        assert iou(image[:, :, 3]) > 0.85, name
        background = image[:, :, 3] == 0
        assert background.mean() > 0.5 and (image[background][:, :3] == 255).all()
    assert (out / "cat.txt").read_text() == "sks cat"
    assert json.dumps(result.as_dict())


def test_transparent_fill_and_mask_only(raw: Path, tmp_path: Path) -> None:
    remove_backgrounds(raw, GRABCUT, out=tmp_path / "cut")
    cut = np.asarray(Image.open(tmp_path / "cut" / "cat.png"))
    assert (cut[cut[:, :, 3] == 0][:, :3] == 0).all()
    remove_backgrounds(raw, BgConfig(method="grabcut", mask_only=True), out=tmp_path / "masks")
    mask = Image.open(tmp_path / "masks" / "cat.png")
    assert mask.mode == "L" and np.array_equal(np.asarray(mask), cut[:, :, 3])
    assert not (tmp_path / "masks" / "cat.txt").exists()


def test_report_only_writes_nothing(raw: Path) -> None:
    before = sorted(raw.rglob("*"))
    result = remove_backgrounds(raw, GRABCUT)
    assert result.out is None and len(result.done) == 2 and sorted(raw.rglob("*")) == before


def test_workspace_stores_cutouts_and_reruns_from_source(raw: Path, tmp_path: Path) -> None:
    ws_root = tmp_path / "ws"
    import_sources(ws_root, [raw], ImportConfig(workers=1))
    with Workspace.open(ws_root) as ws:
        originals = {r.sha256: r.path for r in ws.records()}
    remove_backgrounds(ws_root, BgConfig(method="grabcut", fill="#00FF00"))
    with Workspace.open(ws_root) as ws:
        first = {r.sha256: r for r in ws.records()}
    for sha, record in first.items():
        assert record.path != originals[sha] and record.mode == "RGBA" and record.format == "PNG"
        assert [(link["kind"], link["parent"]) for link in record.extra["chain"]] == [("cutout", sha)]
        assert iou(np.asarray(Image.open(record.path))[:, :, 3]) > 0.85
        assert [d.verdict for d in record.decisions if d.stage == "bg"] == ["cut"]
    remove_backgrounds(ws_root, BgConfig(method="grabcut", fill="#00FF00"))
    with Workspace.open(ws_root) as ws:
        again = {r.sha256: r for r in ws.records()}
        rows = ws.manifest.rows("SELECT parent_sha256 FROM derived WHERE kind = 'cutout'")
    assert {s: r.path for s, r in again.items()} == {s: r.path for s, r in first.items()}
    assert all(len([d for d in r.decisions if d.stage == "bg"]) == 1 for r in again.values())
    assert sorted(r["parent_sha256"] for r in rows) == sorted(originals)  # cut from the originals
    with pytest.raises(CurateError, match="plain folders"):
        remove_backgrounds(ws_root, BgConfig(method="grabcut", mask_only=True))


def test_cli_grabcut_json(raw: Path, tmp_path: Path) -> None:
    res = CliRunner().invoke(cli, ["bg", str(raw), "--out", str(tmp_path / "o"), "--method", "grabcut",
                                   "--fill", "white", "--json"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.output)["counts"]["cut"] == 2


def test_rembg_custom_model_outside_model_home(raw: Path, tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("rembg")
    monkeypatch.setenv("U2NET_HOME", str(tmp_path / "home"))
    model = build(tmp_path / "elsewhere" / "tiny_seg.onnx")
    result = remove_backgrounds(raw, BgConfig(model_path=str(model)), out=tmp_path / "out")
    assert result.device.startswith("rembg: u2net_custom on ") and len(result.done) == 2
    for name in ("cat.png", "sub/cup.png"):
        assert iou(np.asarray(Image.open(tmp_path / "out" / name))[:, :, 3]) > 0.85, name
    assert not (tmp_path / "home").exists()  # nothing moved or copied into the model home
    assert build(tmp_path / "again.onnx").read_bytes() == model.read_bytes()


def test_rembg_missing_model_offline(raw: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("rembg")
    monkeypatch.setenv("U2NET_HOME", str(tmp_path / "home"))
    res = CliRunner().invoke(cli, ["bg", str(raw), "--model", "isnet-anime", "--no-download"])
    assert res.exit_code == 2
    assert "isnet-anime.onnx" in res.output and str(tmp_path / "home") in res.output
    with pytest.raises(CurateError, match="no model 'nope'"):
        remove_backgrounds(raw, BgConfig(model="nope"))


def test_bg_after_crop_cuts_the_original_and_next_crop_crops_the_cut_out(raw: Path, tmp_path: Path) -> None:
    """bg works on the original; its new cut-out makes the crop made before it stale, and the
    next crop run crops the cut-out (alpha kept), as the chain original -> cut-out -> crop."""
    from curate.stages.crop.config import CropConfig
    from curate.stages.crop.run import crop_images

    ws_root = tmp_path / "ws"
    import_sources(ws_root, [raw], ImportConfig(workers=1))
    crop = CropConfig(sources=("saliency",), size=128, format="png", workers=1)
    crop_images(ws_root, crop)
    remove_backgrounds(ws_root, GRABCUT)
    with Workspace.open(ws_root) as ws:
        cut = {r.sha256: r for r in ws.records()}
    for sha, record in cut.items():
        assert [(link["kind"], link["parent"]) for link in record.extra["chain"]] == [("cutout", sha)]
        assert "crop" not in record.extra and record.mode == "RGBA"
    crop_images(ws_root, crop)
    with Workspace.open(ws_root) as ws:
        for record in ws.records():
            cutout, cropped = record.extra["chain"]
            assert (cutout["kind"], cutout["parent"]) == ("cutout", record.sha256)
            assert (cropped["kind"], cropped["parent"]) == ("crop", cutout["sha256"])
            assert (record.width, record.height) == (128, 128) and record.mode == "RGBA"
            assert record.extra["crop"]["original"] == cut[record.sha256].path


def test_grabcut_seeds_from_the_subject_box_not_the_centre() -> None:
    """A small subject in a corner: the centre box would cut through it, the subject box holds it."""
    from curate.stages.background.masks import grabcut_mask

    rng = np.random.default_rng(1)
    canvas = np.clip(rng.normal(225, 4, (400, 600, 3)), 0, 255).astype(np.uint8)
    canvas[20:140, 20:140] = np.asarray(photo("coffee").convert("RGB").resize((120, 120)))
    want = np.zeros((400, 600), bool)
    want[20:140, 20:140] = True

    def overlap(seed: str) -> float:
        got = grabcut_mask(canvas, BgConfig(method="grabcut", seed=seed)) >= 128  # type: ignore[arg-type]
        return float((got & want).sum() / (got | want).sum())

    assert overlap("subject") > 0.8
    assert overlap("centre") < 0.5


def test_rembg_alpha_matting_refines_edges(raw: Path, tmp_path: Path,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """--alpha-matting runs rembg's pymatting step: soft alpha at the edges, same subject."""
    pytest.importorskip("rembg")
    monkeypatch.setenv("U2NET_HOME", str(tmp_path / "home"))
    model = build(tmp_path / "m" / "tiny_seg.onnx")
    plain = remove_backgrounds(raw, BgConfig(model_path=str(model)), out=tmp_path / "plain")
    matting = BgConfig(model_path=str(model), alpha_matting=True)
    matted = remove_backgrounds(raw, matting, out=tmp_path / "mat")
    assert len(plain.done) == len(matted.done) == 2
    a = np.asarray(Image.open(tmp_path / "plain" / "cat.png"))[:, :, 3]
    b = np.asarray(Image.open(tmp_path / "mat" / "cat.png"))[:, :, 3]
    assert iou(b) > 0.8 and not np.array_equal(a, b)
