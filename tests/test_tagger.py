"""WD14-style tagging: model files, preprocessing, the threaded engine, and tag selection.

The models are tiny SmilingWolf-layout taggers built in-process (`fixtures.tiny_tagger`), one
with a dynamic batch (v3 style) and one fixed at batch 1 (v2 style); the images are
scikit-image's real photos. Nothing is downloaded.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import skimage.data
from PIL import Image, ImageOps

from curate.errors import CurateError
from curate.tagging.engine import CPU, CUDA, Tagger, available_providers, doctor, load_tagger
from curate.tagging.model import TagInfo, read_tags, resolve_model
from curate.tagging.preprocess import flatten_on_white, preprocess
from curate.tagging.select import SelectConfig, format_tag, mcut_threshold, select_tags
from fixtures.tiny_tagger import build_tiny_tagger

SIZE = 448
ORIENTATION = 0x0112


@pytest.fixture(scope="session")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("taggers")
    return {"dynamic": build_tiny_tagger(root / "v3"),
            "fixed": build_tiny_tagger(root / "v2", dynamic_batch=False)}


@pytest.fixture(scope="session")
def photos(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("photos")
    paths = {name: root / f"{name}{ext}" for name, ext in
             [("astronaut", ".png"), ("chelsea", ".jpg"), ("coffee", ".jpg"), ("logo", ".png"),
              ("portrait", ".png"), ("cutout", ".png"), ("rotated", ".jpg"), ("truncated", ".jpg"),
              ("text", ".jpg")]}
    Image.fromarray(skimage.data.astronaut()).save(paths["astronaut"])
    Image.fromarray(skimage.data.chelsea()).save(paths["chelsea"], quality=92)  # 451x300
    Image.fromarray(skimage.data.coffee()).save(paths["coffee"], quality=92)  # 600x400
    paths["logo"].write_bytes((Path(skimage.data.__file__).parent / "logo.png").read_bytes())  # RGBA
    Image.fromarray(skimage.data.astronaut()[40:390, 150:350]).save(paths["portrait"])  # 200x350
    cutout(skimage.data.chelsea()).save(paths["cutout"])
    exif = Image.Exif()
    exif[ORIENTATION] = 6  # stored sideways: viewers turn it 90 degrees clockwise
    Image.fromarray(skimage.data.chelsea()).save(paths["rotated"], quality=92, exif=exif)
    paths["truncated"].write_bytes(paths["coffee"].read_bytes()[:3000])
    paths["text"].write_text("<html>403 Forbidden</html>\n")
    return paths


def cutout(rgb: np.ndarray) -> Image.Image:
    """The photo as a background-removed PNG: a feathered ellipse of alpha, black where clear."""
    height, width, _ = rgb.shape
    y, x = np.mgrid[0:height, 0:width]
    r = np.hypot((x - width / 2) / (width * 0.4), (y - height / 2) / (height * 0.4))
    alpha = np.clip((1.2 - r) / 0.4, 0, 1) * 255
    rgba = np.dstack([rgb * (alpha[..., None] > 0), alpha]).astype(np.uint8)
    return Image.fromarray(rgba, "RGBA")


@pytest.fixture(scope="session")
def taggers(models: dict[str, Path]) -> dict[str, Tagger]:
    return {kind: Tagger(path / "model.onnx", providers=[CPU], workers=2) for kind, path in models.items()}


GOOD = ("astronaut", "chelsea", "coffee", "logo", "portrait", "cutout", "rotated")


# --- the fixture model -------------------------------------------------------------------------


def test_tiny_tagger_is_byte_identical_and_in_smilingwolf_layout(tmp_path: Path, models: dict) -> None:
    again = build_tiny_tagger(tmp_path / "again")
    for name in ("model.onnx", "selected_tags.csv"):
        assert (again / name).read_bytes() == (models["dynamic"] / name).read_bytes()
    lines = (again / "selected_tags.csv").read_text().splitlines()
    assert lines[0] == "tag_id,name,category,count"
    assert [line.split(",")[1:3] for line in lines[1:5]] == [
        ["general", "9"], ["sensitive", "9"], ["questionable", "9"], ["explicit", "9"]]
    tags = read_tags(again / "selected_tags.csv")
    assert {"^_^", "hatsune_miku_(cosplay)"} <= {t.name for t in tags if t.category == 0}
    assert [t.category for t in tags] == sorted((t.category for t in tags), key=[9, 0, 4].index)


def test_v3_and_v2_input_layouts(taggers: dict[str, Tagger]) -> None:
    v3, v2 = taggers["dynamic"], taggers["fixed"]
    assert (v3.input_name, v3.input_size, v3.fixed_batch) == ("input", SIZE, False)
    assert (v2.input_name, v2.input_size, v2.batch_limit) == ("input_1:0", SIZE, 1)
    assert v3.num_tags == v2.num_tags == 47


# --- preprocessing -----------------------------------------------------------------------------


def hand_preprocessed(rgb: np.ndarray) -> np.ndarray:
    """REFERENCE §2 with explicit numpy steps: white centred square, PIL bicubic, BGR."""
    height, width, _ = rgb.shape
    side = max(height, width)
    square = np.full((side, side, 3), 255, np.uint8)
    top, left = (side - height) // 2, (side - width) // 2
    square[top:top + height, left:left + width] = rgb
    resized = np.asarray(Image.fromarray(square).resize((SIZE, SIZE), Image.Resampling.BICUBIC))
    return resized.astype(np.float32)[:, :, [2, 1, 0]]


@pytest.mark.parametrize("name", ["chelsea", "portrait", "astronaut"])
def test_preprocess_equals_hand_computed_tensor(photos: dict[str, Path], name: str) -> None:
    with Image.open(photos[name]) as im:
        rgb = np.asarray(im.convert("RGB"))
        out = preprocess(im, SIZE)
    expected = hand_preprocessed(rgb)
    assert out.dtype == np.float32 and out.shape == (SIZE, SIZE, 3) and out.flags.c_contiguous
    assert np.array_equal(out, expected)
    if name == "chelsea":  # 451x300 landscape: white bands top and bottom, the cat between
        assert (out[0] == 255).all() and (out[-1] == 255).all()
        assert not (out[SIZE // 2] == 255).all()
    if name == "portrait":  # 200x350 portrait: white bands left and right
        assert (out[:, 0] == 255).all() and (out[:, -1] == 255).all()
    if name == "astronaut":  # 512x512: no padding; BGR is RGB reversed
        assert not (out[0] == 255).all()
        rgb_out = np.asarray(Image.fromarray(rgb).resize((SIZE, SIZE), Image.Resampling.BICUBIC))
        assert np.array_equal(out[100, 200], rgb_out[100, 200, ::-1].astype(np.float32))


def test_transparency_is_composited_on_white(photos: dict[str, Path]) -> None:
    with Image.open(photos["cutout"]) as im:
        assert im.mode == "RGBA"
        rgba = np.asarray(im).astype(np.float64)
        flat = np.asarray(flatten_on_white(im)).astype(np.float64)
        out = preprocess(im, SIZE)
    alpha = rgba[..., 3:] / 255.0
    expected = rgba[..., :3] * alpha + 255.0 * (1.0 - alpha)
    assert np.abs(flat - expected).max() <= 1.0  # PIL composites in fixed point
    clear, opaque = rgba[..., 3] == 0, rgba[..., 3] == 255
    assert clear.any() and opaque.any()
    assert (flat[clear] == 255).all() and np.array_equal(flat[opaque], rgba[..., :3][opaque])
    assert (out[0, 0] == 255).all()  # a clear corner (black under alpha 0) reads as white
    assert np.array_equal(out, hand_preprocessed(flat.astype(np.uint8)))


def test_exif_orientation_is_applied_before_padding(photos: dict[str, Path]) -> None:
    with Image.open(photos["rotated"]) as im:
        assert im.size == (451, 300)
        upright = ImageOps.exif_transpose(im)
        out = preprocess(im, SIZE)
    assert upright.size == (300, 451)
    assert np.array_equal(out, hand_preprocessed(np.asarray(upright)))
    assert (out[:, 0] == 255).all() and not (out[0] == 255).all()  # padded left/right, not top


def test_square_image_of_input_size_is_not_resampled() -> None:
    rgb = np.asarray(Image.fromarray(skimage.data.astronaut()).resize((SIZE, SIZE)))
    out = preprocess(Image.fromarray(rgb), SIZE)
    assert np.array_equal(out, rgb[:, :, ::-1].astype(np.float32))


# --- the engine --------------------------------------------------------------------------------


def test_predict_equals_direct_session_run(taggers: dict[str, Tagger], photos: dict[str, Path]) -> None:
    tagger = taggers["dynamic"]
    paths = [photos[name] for name in GOOD]
    results = list(tagger.predict(paths, batch_size=4))
    assert [index for index, _, _ in results] == list(range(len(paths)))
    for (_, probs, error), path in zip(results, paths, strict=True):
        assert error is None
        with Image.open(path) as im:
            batch = preprocess(im, SIZE)[None]
        direct = tagger.session.run(None, {"input": batch})[0][0]
        np.testing.assert_allclose(probs, direct, rtol=0, atol=1e-6)
        assert probs.shape == (47,) and ((probs > 0) & (probs < 1)).all()
    tagged = {tuple(np.flatnonzero(probs > 0.35)) for _, probs, _ in results}
    assert len(tagged) == len(paths)  # each photo gets its own set of tags


def test_fixed_batch_model_gives_the_same_probabilities(taggers: dict[str, Tagger], photos: dict) -> None:
    paths = [photos[name] for name in GOOD]
    dynamic = [probs for _, probs, _ in taggers["dynamic"].predict(paths, batch_size=8)]
    # batch_size=8 asked of a batch-1 model: fed one at a time, or onnxruntime would refuse
    fixed = [probs for _, probs, _ in taggers["fixed"].predict(paths, batch_size=8)]
    np.testing.assert_allclose(np.stack(fixed), np.stack(dynamic), rtol=0, atol=1e-6)


def test_unreadable_files_become_errors_and_the_run_goes_on(taggers: dict[str, Tagger], photos: dict) -> None:
    names = ["astronaut", "truncated", "chelsea", "text", "coffee", "missing"]
    paths = [photos.get(name, photos["astronaut"].parent / "missing.jpg") for name in names]
    progress: list[tuple[int, int]] = []
    results = list(taggers["dynamic"].predict(paths, batch_size=2, on_progress=lambda *a: progress.append(a)))
    assert [index for index, _, _ in results] == list(range(6))
    for (_, probs, error), name, path in zip(results, names, paths, strict=True):
        if name in ("truncated", "text", "missing"):
            assert probs is None and error is not None
            assert str(path) in error and "cannot read image" in error and "\n" not in error
        else:
            assert error is None and probs is not None
    assert progress == [(i, 6) for i in range(1, 7)]


def test_order_is_kept_across_batches_and_early_stop_is_clean(taggers: dict, photos: dict) -> None:
    cycle = ["astronaut", "text", "chelsea", "coffee", "truncated", "logo", "portrait"]
    paths = [photos[cycle[i % len(cycle)]] for i in range(23)]
    results = list(taggers["dynamic"].predict(paths, batch_size=3))
    assert [index for index, _, _ in results] == list(range(23))
    assert [error is not None for _, _, error in results] == [cycle[i % 7] in ("text", "truncated")
                                                              for i in range(23)]
    first = results[0][1]
    assert all(np.allclose(probs, first, atol=1e-6) for i, probs, _ in results if i % 7 == 0)
    stream = taggers["dynamic"].predict(paths, batch_size=3)
    assert next(stream)[0] == 0
    stream.close()  # must not hang on the decode pool


def test_default_providers_use_cuda_or_say_why_not(models: dict[str, Path]) -> None:
    tagger = Tagger(models["dynamic"] / "model.onnx")
    if CUDA not in available_providers():
        assert tagger.providers == [CPU] and tagger.provider_note is None
    elif CUDA in tagger.providers:
        assert tagger.provider_note is None
    else:  # onnxruntime-gpu without usable CUDA (as on CPU-only CI): one line, never silent
        assert tagger.providers == [CPU]
        assert tagger.provider_note.startswith("CUDA") and "running on CPU" in tagger.provider_note
        assert "\n" not in tagger.provider_note
    with pytest.raises(CurateError, match="NoSuchExecutionProvider"):
        Tagger(models["dynamic"] / "model.onnx", providers=["NoSuchExecutionProvider"])


def test_doctor_lines() -> None:
    lines = doctor()
    checks = [check for check, _, _ in lines]
    assert checks == ["onnxruntime", "execution providers", "CUDA", "huggingface_hub"]
    assert all(isinstance(ok, bool) and detail and "\n" not in detail for _, ok, detail in lines)


# --- model files -------------------------------------------------------------------------------


def test_resolve_local_folder_and_missing_files(tmp_path: Path, models: dict[str, Path]) -> None:
    files = resolve_model(str(models["dynamic"]))
    assert files.model_path == models["dynamic"] / "model.onnx"
    assert files.tags_path == models["dynamic"] / "selected_tags.csv"
    assert resolve_model(str(models["dynamic"] / "model.onnx")) == files
    half = tmp_path / "half"
    half.mkdir()
    (half / "model.onnx").write_bytes((models["dynamic"] / "model.onnx").read_bytes())
    with pytest.raises(CurateError, match=r"missing selected_tags\.csv;") as err:
        resolve_model(str(half))
    assert "missing model.onnx" not in str(err.value)
    with pytest.raises(CurateError, match=r"missing model\.onnx and selected_tags\.csv"):
        resolve_model(str(tmp_path / "half" / ".."))
    with pytest.raises(CurateError, match="not a tagger folder"):
        resolve_model(str(tmp_path / "no" / "such" / "dir"))


def test_offline_hub_id_says_what_to_download_and_where(tmp_path: Path) -> None:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf")}
    code = ("import sys; from curate.tagging.model import resolve_model\n"
            "try: resolve_model('SmilingWolf/wd-swinv2-tagger-v3')\n"
            "except Exception as e: print(type(e).__name__, e); sys.exit(0)\n"
            "sys.exit('resolved while offline')")
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60,
                          cwd=Path(__file__).resolve().parents[1], check=True)
    out = done.stdout.strip()
    assert out.startswith("CurateError ") and "\n" not in out
    for name in ("model.onnx", "selected_tags.csv"):
        assert f"https://huggingface.co/SmilingWolf/wd-swinv2-tagger-v3/resolve/main/{name}" in out
    assert "--model FOLDER" in out


def test_read_tags_rejects_other_csvs(tmp_path: Path) -> None:
    bad = tmp_path / "selected_tags.csv"
    bad.write_text("id,tag\n1,long_hair\n")
    with pytest.raises(CurateError, match=r"not a WD14 tag list.*expected tag_id,name,category,count"):
        read_tags(bad)
    bad.write_text("tag_id,name,category,count\n1,long_hair,general,10\n")
    with pytest.raises(CurateError, match="line 2: category 'general' is not a number"):
        read_tags(bad)


def test_mismatched_or_broken_model_files(tmp_path: Path, models: dict[str, Path]) -> None:
    mixed = tmp_path / "mixed"
    mixed.mkdir()
    (mixed / "model.onnx").write_bytes((models["dynamic"] / "model.onnx").read_bytes())
    (mixed / "selected_tags.csv").write_text("tag_id,name,category,count\n1,solo,0,5\n")
    with pytest.raises(CurateError, match=r"47 outputs but selected_tags\.csv lists 1 tags"):
        load_tagger(resolve_model(str(mixed)), providers=[CPU])
    (mixed / "model.onnx").write_bytes(b"<html>rate limited</html>")
    with pytest.raises(CurateError, match="onnxruntime cannot load this model"):
        Tagger(mixed / "model.onnx", providers=[CPU])


# --- selecting tags ----------------------------------------------------------------------------

RATING_NAMES = ("general", "sensitive", "questionable", "explicit")
GENERAL_NAMES = ("1girl", "long_hair", "short_hair", "smile", "^_^", "hatsune_miku_(cosplay)")
TAGS = ([TagInfo(name, 9) for name in RATING_NAMES] + [TagInfo(name, 0) for name in GENERAL_NAMES]
        + [TagInfo("hatsune_miku", 4), TagInfo("kagamine_rin", 4)])
DEFAULTS = SelectConfig()


def probs(ratings: tuple[float, ...] = (0.1, 0.7, 0.2, 0.05),
          general: tuple[float, ...] = (0.9, 0.36, 0.35, 0.6, 0.5, 0.1),
          characters: tuple[float, ...] = (0.9, 0.6)) -> np.ndarray:
    """Probabilities in TAGS order: ratings, general, characters."""
    return np.array([*ratings, *general, *characters], dtype=np.float64)


def names(config: SelectConfig = DEFAULTS, p: np.ndarray | None = None) -> list[str]:
    return [tag.name for tag in select_tags(probs() if p is None else p, TAGS, config)]


def test_thresholds_general_and_character_defaults() -> None:
    # general above 0.35 (strictly: 0.35 itself is out); characters above 0.85 only
    assert names() == ["1girl", "smile", "^_^", "long_hair", "hatsune_miku"]
    assert names(SelectConfig(threshold=0.55, character_threshold=0.5)) == [
        "1girl", "smile", "hatsune_miku", "kagamine_rin"]


def test_mcut_hand_computed() -> None:
    # sorted: 0.9 0.85 0.3 0.25 0.1; gaps 0.05 0.55 0.05 0.15 -> t=1 -> (0.85 + 0.3) / 2
    assert mcut_threshold(np.array([0.3, 0.9, 0.1, 0.85, 0.25])) == pytest.approx(0.575)
    assert mcut_threshold(np.array([0.4])) == 0.0
    config = SelectConfig(mcut=True)
    # general: 0.9 | 0.6 0.5 0.36 0.35 0.1 -> widest gap after 0.9; characters 0.9 | 0.6
    assert names(config) == ["1girl", "hatsune_miku"]
    low = probs(characters=(0.12, 0.05))  # MCut says 0.085; the 0.15 floor keeps both out
    assert names(config, low) == ["1girl"]


def test_rating_drop_keep_first() -> None:
    assert "sensitive" not in names()
    assert names(SelectConfig(rating="keep"))[-1] == "sensitive"
    assert names(SelectConfig(rating="first"))[0] == "sensitive"
    scored = select_tags(probs(), TAGS, SelectConfig(rating="first"))
    assert (scored[0].category, scored[0].confidence) == ("rating", pytest.approx(0.7))
    with pytest.raises(ValueError, match="rating must be one of"):
        SelectConfig(rating="last")  # type: ignore[arg-type]


def test_order_confidence_and_characters_first() -> None:
    scored = select_tags(probs(), TAGS, SelectConfig(character_first=True, rating="first"))
    assert [t.name for t in scored] == ["sensitive", "hatsune_miku", "1girl", "smile", "^_^", "long_hair"]
    confidences = [t.confidence for t in scored if t.category == "general"]
    assert confidences == sorted(confidences, reverse=True)


def test_undesired_replace_and_max_tags() -> None:
    assert names(SelectConfig(undesired=("Long Hair", "smile"))) == ["1girl", "^_^", "hatsune_miku"]
    # the sd-scripts bug: --tag_replacement does nothing for CSV models; here it works
    assert names(SelectConfig(replace=(("1girl", "solo_female"), ("^_^", "")))) == [
        "solo_female", "smile", "long_hair", "hatsune_miku"]
    # replacing one tag by another that is present lists it once, at the first place
    assert names(SelectConfig(threshold=0.3, replace=(("short hair", "long_hair"),))) == [
        "1girl", "smile", "^_^", "long_hair", "hatsune_miku"]
    assert names(SelectConfig(max_tags=2, rating="keep", character_threshold=0.5)) == [
        "1girl", "smile", "hatsune_miku", "kagamine_rin", "sensitive"]


def test_format_tag_kaomoji_and_escape() -> None:
    assert format_tag("long_hair") == "long hair"
    assert format_tag("^_^") == "^_^" and format_tag(">_<") == ">_<"
    assert format_tag("hatsune_miku_(cosplay)") == "hatsune miku (cosplay)"
    assert format_tag("hatsune_miku_(cosplay)", escape=True) == r"hatsune miku \(cosplay\)"
    scored = select_tags(probs(general=(0, 0, 0, 0, 0.9, 0.8)), TAGS, SelectConfig())
    assert [format_tag(t.name) for t in scored] == ["^_^", "hatsune miku (cosplay)", "hatsune miku"]


def test_real_photo_character_between_thresholds(taggers: dict, photos: dict, models: dict) -> None:
    """On the astronaut photo the tiny model gives kagamine_rin ~0.48: above the general
    threshold, below the character one, so it appears only when the character threshold drops."""
    tags = read_tags(models["dynamic"] / "selected_tags.csv")
    (_, p, _), = taggers["dynamic"].predict([photos["astronaut"]])
    rin = p[[t.name for t in tags].index("kagamine_rin")]
    assert 0.35 < rin < 0.85
    assert "kagamine_rin" not in [t.name for t in select_tags(p, tags, SelectConfig())]
    chosen = select_tags(p, tags, SelectConfig(character_threshold=0.35, character_first=True))
    assert chosen[0].name == "kagamine_rin" and chosen[0].category == "character"
