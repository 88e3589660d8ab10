"""Buckets: identical to sd-scripts on its own table, sound on random sizes, useful reports.

`tests/data/sd_scripts_buckets.json` was computed by running sd-scripts' code
(`fixtures/bucket_table.py`, commit in the file); these tests never need sd-scripts.
"""

from __future__ import annotations

import base64
import io
import json
from pathlib import Path

import cv2
import numpy as np
import PIL
import pytest
from PIL import Image

from curate.buckets import (
    BucketConfig,
    UnbucketableImage,
    apply_fix,
    assign,
    bucket_report,
    bucket_resolutions,
    resize_to_bucket,
    sizes_after,
    suggest_fixes,
)
from curate.errors import CurateError
from fixtures.bucket_table import pattern

TABLE = json.loads((Path(__file__).parent / "data" / "sd_scripts_buckets.json").read_text(encoding="utf-8"))


def _config(fields: dict) -> BucketConfig:
    return BucketConfig(**{**fields, "resolution": tuple(fields["resolution"])})


def _name(entry: dict) -> str:
    c = entry["config"]
    mode = "fixed" if not c["enable_bucket"] else "noup" if c["bucket_no_upscale"] else "up"
    return "{}x{}-{}-{}-{}-{}".format(*c["resolution"], c["min_bucket_reso"], c["max_bucket_reso"],
                                      c["bucket_reso_steps"], mode)


@pytest.fixture(params=TABLE["configs"], ids=_name)
def entry(request: pytest.FixtureRequest) -> dict:
    return request.param


def test_table_covers_what_it_should() -> None:
    assert len(TABLE["sd_scripts_commit"]) == 40
    modes = {(e["config"]["enable_bucket"], e["config"]["bucket_no_upscale"]) for e in TABLE["configs"]}
    assert modes == {(True, False), (True, True), (False, False)}
    assert all(len(e["images"]) >= 60 for e in TABLE["configs"])


def test_resolutions_match_sd_scripts(entry: dict) -> None:
    c = entry["config"]
    got = bucket_resolutions(tuple(c["resolution"]), c["min_bucket_reso"], c["max_bucket_reso"],
                             c["bucket_reso_steps"])
    assert got == [tuple(r) for r in entry["resolutions"]]


def test_assignments_match_sd_scripts(entry: dict) -> None:
    config = _config(entry["config"])
    for image in entry["images"]:
        size = tuple(image["size"])
        if "crop" not in image:  # sd-scripts raised, or made a bucket with a zero side
            with pytest.raises(UnbucketableImage):
                assign(size, config)
            continue
        got = assign(size, config)
        expected = [image["bucket"], image["resized"], image["crop"], image["aspect_error"]]
        assert [list(got.bucket), list(got.resized), list(got.crop), got.aspect_error] == expected, size


def test_report_matches_sd_scripts_bucket_info(entry: dict) -> None:
    sizes = {"{}x{}".format(*e["size"]): tuple(e["size"]) for e in entry["images"]}
    report = bucket_report(sizes, _config(entry["config"]))
    assert [[*b.resolution, b.count] for b in report.buckets] == entry["dataset"]["buckets"]
    if "mean_img_ar_error" in entry["dataset"]:
        assert report.mean_aspect_error == pytest.approx(entry["dataset"]["mean_img_ar_error"], rel=1e-12)
    assert len(report.unbucketable) == sum("crop" not in e for e in entry["images"])


@pytest.mark.parametrize("case", TABLE["pixels"], ids=lambda c: "{}x{}-{}-{}".format(
    *c["size"], c["mode"], c["interpolation"] or "default"))
def test_resize_matches_sd_scripts_pixels(case: dict) -> None:
    assignment = assign(tuple(case["size"]), _config(case["config"]))
    assert [list(assignment.bucket), list(assignment.resized)] == [case["bucket"], case["resized"]]
    got = np.asarray(resize_to_bucket(pattern(tuple(case["size"]), case["mode"]), assignment,
                                      case["interpolation"]), dtype=np.int16)
    expected = np.asarray(Image.open(io.BytesIO(base64.b64decode(case["png"]))), dtype=np.int16)
    assert got.shape == expected.shape
    # Same filters from the same libraries: identical. A newer OpenCV/Pillow may round a value
    # differently; a wrong filter or crop offset moves these edge-dense pixels by far more than 1.
    same_libraries = TABLE["versions"] == {"numpy": np.__version__, "pillow": PIL.__version__,
                                           "opencv": cv2.__version__}
    assert np.abs(got - expected).max() <= (0 if same_libraries else 1)


PROPERTY_CONFIGS = [
    BucketConfig(),
    BucketConfig((768, 768)),
    BucketConfig((640, 896), 320, 1536, 32),
    BucketConfig((1024, 1024), 512, 2048, 64),
    BucketConfig((512, 768), 300, 1000, 64),  # limits off the step: sd-scripts rounds them
]


def _short(config: BucketConfig) -> str:
    return "{}x{}-{}-{}-{}".format(*config.resolution, config.min_bucket_reso, config.max_bucket_reso,
                                   config.bucket_reso_steps)


def _random_sizes(count: int, seed: int) -> list[tuple[int, int]]:
    rng = np.random.default_rng(seed)
    return [(int(w), int(h)) for w, h in rng.integers(64, 5000, size=(count, 2))]


@pytest.mark.parametrize("config", PROPERTY_CONFIGS, ids=_short)
def test_predefined_buckets_properties(config: BucketConfig) -> None:
    low, high = config.bucket_limits
    steps = config.bucket_reso_steps
    for size in _random_sizes(400, 1):
        a = assign(size, config)
        bw, bh = a.bucket
        assert bw % steps == 0 and bh % steps == 0
        assert low <= bw <= high and low <= bh <= high
        assert bw * bh <= config.max_area
        rw, rh = a.resized
        assert rw >= bw and rh >= bh and (rw == bw or rh == bh)  # covers, touching one side
        assert abs(rw / rh / (size[0] / size[1]) - 1) <= 1 / min(rw, rh)  # aspect kept up to rounding
        left, top, right, bottom = a.crop
        assert (right - left, bottom - top) == a.bucket
        assert (left, top) == ((rw - bw) // 2, (rh - bh) // 2)  # centred
        assert a.lost_fraction == pytest.approx(1 - bw * bh / (rw * rh))


@pytest.mark.parametrize("config", PROPERTY_CONFIGS[:3], ids=_short)
def test_no_upscale_properties(config: BucketConfig) -> None:
    config = BucketConfig(config.resolution, config.min_bucket_reso, config.max_bucket_reso,
                          config.bucket_reso_steps, bucket_no_upscale=True)
    for size in _random_sizes(400, 2):
        a = assign(size, config)
        assert a.bucket[0] % config.bucket_reso_steps == 0 and a.bucket[1] % config.bucket_reso_steps == 0
        assert a.resized[0] <= size[0] and a.resized[1] <= size[1]  # never enlarged
        assert a.bucket[0] <= a.resized[0] and a.bucket[1] <= a.resized[1]
        if size[0] * size[1] <= config.max_area:
            assert a.resized == size


def test_config_follows_sd_scripts_checks() -> None:
    assert BucketConfig((512, 768), 300, 1000, 64).bucket_limits == (256, 1024)
    assert BucketConfig(768).resolution == (768, 768)  # sd-scripts' "768"
    with pytest.raises(CurateError, match="min_bucket_reso 576"):
        BucketConfig((512, 512), min_bucket_reso=576)
    with pytest.raises(CurateError, match="max_bucket_reso 768"):
        BucketConfig((1024, 1024), max_bucket_reso=768)
    fixed = BucketConfig((512, 512), min_bucket_reso=576, enable_bucket=False)  # limits unused then
    assert fixed.resolutions() == [(512, 512)]
    assert BucketConfig(bucket_no_upscale=True).resolutions() == []


def test_unbucketable_images_say_why() -> None:
    no_upscale = BucketConfig(bucket_no_upscale=True)
    with pytest.raises(UnbucketableImage, match="below bucket_reso_steps"):
        assign((50, 50), no_upscale)
    with pytest.raises(UnbucketableImage, match="too extreme"):
        assign((10000, 100), no_upscale)
    assert assign((10000, 100), BucketConfig()).bucket == (1024, 256)  # predefined buckets: fine


def _scattered_set() -> dict[str, tuple[int, int]]:
    sizes = {f"portrait{i:02}": (832, 1248) for i in range(12)}
    sizes |= {f"landscape{i}": (1248, 832) for i in range(6)}
    sizes |= {"square": (1000, 1000), "tall": (700, 1000), "wide": (1920, 1080), "strip": (300, 1200),
              "tiny": (120, 90), "phone": (1080, 2340), "scan": (1023, 767)}
    return sizes


def test_report_counts_and_warns_on_a_scattered_set() -> None:
    report = bucket_report(_scattered_set(), BucketConfig(), batch_size=4)
    counts = {b.resolution: b.count for b in report.buckets}
    assert counts == {(256, 1024): 1, (320, 704): 1, (384, 640): 12, (448, 576): 1, (512, 512): 1,
                      (576, 448): 2, (640, 384): 7}
    assert {b.resolution for b in report.main_buckets} == {(384, 640), (640, 384)}
    assert report.sparse_share == pytest.approx(6 / 25)
    assert report.lost_fraction["square"] == 0.0
    assert report.lost_fraction["portrait00"] == pytest.approx(1 - 384 * 640 / (427 * 640))
    kinds = [w.split(":")[0] for w in report.warnings]
    assert kinds == ["scattered buckets", "upscaled"]  # "tiny" is enlarged 5x
    assert "6 of 25 images (24%, limit 20%)" in report.warnings[0]
    text = "\n".join(report.lines())
    assert "25 images in 7 buckets" in text and "512 x 512" in text and "sparse" in text
    # a batch size of 1 still counts one- and two-image buckets as sparse
    assert bucket_report(_scattered_set(), BucketConfig()).sparse_below == 3


def test_balanced_set_gives_no_warning() -> None:
    sizes = {f"p{i}": (832, 1248) for i in range(8)} | {f"l{i}": (1248, 832) for i in range(8)}
    report = bucket_report(sizes, BucketConfig(), batch_size=2)
    assert report.warnings == () and report.sparse_buckets == ()
    assert suggest_fixes(report) == []


def test_suggest_fixes_moves_images_into_main_buckets_within_the_limit() -> None:
    sizes = _scattered_set()
    config = BucketConfig()
    report = bucket_report(sizes, config, batch_size=4)
    fixes = suggest_fixes(report)
    main = {b.resolution for b in report.main_buckets}
    assert {f.key for f in fixes} == {"tall"}  # the others would lose more than 15%
    for fix in fixes:
        assert fix.target in main and fix.source not in main
        assert fix.lost_fraction <= 0.15
        moved = assign(fix.size, config)
        assert moved.bucket == fix.target
        width, height = sizes[fix.key]
        left, top = fix.crop_box[:2]
        assert (left, top) == ((width - fix.size[0]) // 2, (height - fix.size[1]) // 2)
        kept = fix.size[0] * fix.size[1] * (1 - moved.lost_fraction) / (width * height)
        assert fix.lost_fraction == pytest.approx(1 - kept)
    after = bucket_report(sizes_after(sizes, fixes), config, batch_size=4)
    assert after.sparse_share < report.sparse_share
    assert not any(w.startswith("scattered") for w in after.warnings)
    # a looser limit lets the phone screenshot move too
    assert "phone" in {f.key for f in suggest_fixes(report, max_loss=0.3)}


def test_suggest_fixes_with_no_upscale_buckets() -> None:
    config = BucketConfig((768, 768), bucket_no_upscale=True)
    # buckets follow the size here: 720x460 makes its own 704x448 bucket
    sizes = {f"a{i}": (640, 448) for i in range(5)} | {"b": (660, 470), "c": (720, 460)}
    report = bucket_report(sizes, config, batch_size=2)
    fixes = {f.key: f for f in suggest_fixes(report)}
    assert {b.resolution for b in report.main_buckets} == {(640, 448)}
    assert report.assignments["c"].bucket == (704, 448)
    assert fixes["c"].target == (640, 448) and assign(fixes["c"].size, config).bucket == (640, 448)
    assert fixes["c"].lost_fraction == pytest.approx(1 - 640 * 448 / (720 * 460))
    assert "b" not in fixes  # 660x470 already lands in 640x448


def _photo(name: str) -> Image.Image:
    import skimage.data

    return Image.fromarray(getattr(skimage.data, name)())


@pytest.mark.parametrize("name", ["astronaut", "coffee", "chelsea", "rocket", "camera", "hubble_deep_field"])
@pytest.mark.parametrize("config", [BucketConfig(), BucketConfig((640, 896), 320, 1536, 32),
                                    BucketConfig((768, 768), bucket_no_upscale=True),
                                    BucketConfig((512, 768), enable_bucket=False)],
                         ids=["512", "640x896-sdxl", "768-no-upscale", "512x768-fixed"])
def test_resize_to_bucket_on_photos(name: str, config: BucketConfig) -> None:
    photo = _photo(name)
    a = assign(photo.size, config)
    out = resize_to_bucket(photo, a)
    assert out.size == a.bucket and out.mode == photo.mode
    # an independent resize (bicubic) cropped at the same box differs by under 1 grey level on
    # average; the same crop 3 pixels off differs by 5-13 on these photos
    reference = photo.resize(a.resized, Image.Resampling.BICUBIC).crop(a.crop)
    diff = np.abs(np.asarray(out, dtype=np.float32) - np.asarray(reference, dtype=np.float32))
    assert diff.mean() < 2


def test_apply_fix_crops_the_original() -> None:
    photo = _photo("coffee")  # 600x400
    config = BucketConfig()
    report = bucket_report({"coffee": photo.size}, config)
    assert report.buckets[0].resolution == (640, 384)
    fixed = apply_fix(photo, (10, 20, 590, 380))
    assert fixed.size == (580, 360)
    assert np.array_equal(np.asarray(fixed), np.asarray(photo)[20:380, 10:590])
    assert resize_to_bucket(fixed, assign(fixed.size, config)).size == assign(fixed.size, config).bucket
    with pytest.raises(CurateError, match="does not fit"):
        apply_fix(photo, (0, 0, 601, 400))


def test_resize_rejects_a_mismatched_image_and_unknown_filters() -> None:
    a = assign((300, 200), BucketConfig())
    with pytest.raises(CurateError, match="assignment is for 300x200"):
        resize_to_bucket(pattern((200, 300)), a)
    with pytest.raises(CurateError, match="choose one of lanczos"):
        resize_to_bucket(pattern((300, 200)), a, "sinc")
    palette = pattern((300, 200)).convert("P")
    assert resize_to_bucket(palette, a).mode == "RGB"
