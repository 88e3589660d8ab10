"""Perceptual hashing of files: bounds on how far copies drift and how far photos stay apart."""

from __future__ import annotations

import hashlib
import itertools
import subprocess
import sys
from pathlib import Path

import imagehash
import numpy as np
import pytest
from PIL import Image
from skimage import data

from curate.stages.dedupe.hashing import (
    DECODE_MODES,
    METHODS,
    FileHash,
    hash_bits,
    hash_file,
    hash_files,
    hash_key,
    prepare,
)

# Bundled with scikit-image (no download); chosen so every two are > 20 bits apart in phash.
PHOTOS = ("astronaut", "coffee", "chelsea", "camera", "rocket", "coins", "horse",
          "hubble_deep_field", "immunohistochemistry")
COPY_MAX_DISTANCE = 6
DIFFERENT_MIN_DISTANCE = 21


def distance(a: int | None, b: int | None) -> int:
    assert a is not None and b is not None
    return (a ^ b).bit_count()


def photo(name: str) -> Image.Image:
    pixels = getattr(data, name)()
    if pixels.dtype == bool:
        pixels = pixels.astype(np.uint8) * 255
    return Image.fromarray(pixels).convert("RGB")


@pytest.fixture(scope="module")
def photos(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("photos")
    paths = {}
    for name in PHOTOS:
        paths[name] = folder / f"{name}.png"
        photo(name).save(paths[name])
    return paths


@pytest.mark.parametrize("decode", DECODE_MODES)
@pytest.mark.parametrize("name", PHOTOS)
def test_resized_and_recompressed_copies_stay_close(name: str, decode: str, tmp_path: Path) -> None:
    image = photo(name)
    w, h = image.size
    copies = {
        "q40.jpg": image,
        "half.png": image.resize((w // 2, h // 2), Image.Resampling.LANCZOS),
        "three_quarters.jpg": image.resize((w * 3 // 4, h * 3 // 4), Image.Resampling.BILINEAR),
    }
    original = tmp_path / "original.png"
    image.save(original)
    reference = hash_file(original, decode=decode).value
    for suffix, copy in copies.items():
        path = tmp_path / f"copy_{suffix}"
        copy.save(path, **({"quality": 40} if suffix.endswith(".jpg") else {}))
        assert distance(hash_file(path, decode=decode).value, reference) <= COPY_MAX_DISTANCE, suffix


@pytest.mark.parametrize("decode", DECODE_MODES)
def test_different_photos_are_far_apart(photos: dict[str, Path], decode: str) -> None:
    hashes = {name: hash_file(path, decode=decode).value for name, path in photos.items()}
    for a, b in itertools.combinations(PHOTOS, 2):
        assert distance(hashes[a], hashes[b]) >= DIFFERENT_MIN_DISTANCE, (a, b)


def test_value_is_the_number_imagehash_prints(photos: dict[str, Path]) -> None:
    for method, size in [("phash", 8), ("dhash", 16), ("colorhash", 3)]:
        with Image.open(photos["coffee"]) as image:
            expected = METHODS[method](prepare(image, "full"), size)
        got = hash_file(photos["coffee"], method, size, decode="full").value
        assert got == int(str(expected), 16)
        assert got is not None and got.bit_length() <= hash_bits(method, size)


@pytest.mark.parametrize("method", METHODS)
def test_every_method_hashes(photos: dict[str, Path], method: str) -> None:
    result = hash_file(photos["astronaut"], method, 8)
    assert result.error is None and isinstance(result.value, int)


def test_corrupt_and_missing_files_give_a_reason(photos: dict[str, Path], tmp_path: Path) -> None:
    truncated = tmp_path / "truncated.jpg"
    photo("astronaut").save(truncated, quality=90)
    truncated.write_bytes(truncated.read_bytes()[:3000])
    text = tmp_path / "page.jpg"
    text.write_text("<html>404 not found</html>")
    for path in (truncated, text, tmp_path / "missing.png"):
        result = hash_file(path)
        assert result.value is None and result.mirrored is None
        assert result.error and path.name in result.error and "\n" not in result.error


def test_transparency_is_composited_on_white(tmp_path: Path) -> None:
    rgba = photo("chelsea").convert("RGBA")
    alpha = np.zeros((rgba.height, rgba.width), np.uint8)
    alpha[40:-40, 60:-60] = 255  # a cut-out: transparent border, as background removal leaves
    rgba.putalpha(Image.fromarray(alpha))
    black_under = Image.composite(rgba, Image.new("RGBA", rgba.size, (0, 0, 0, 0)), rgba)
    black_under.save(tmp_path / "cutout.png")  # transparent pixels hold black, as is common
    white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
    Image.alpha_composite(white, rgba).convert("RGB").save(tmp_path / "on_white.png")
    black_under.convert("RGB").save(tmp_path / "alpha_dropped.png")
    for decode in DECODE_MODES:
        cutout = hash_file(tmp_path / "cutout.png", decode=decode).value
        assert cutout == hash_file(tmp_path / "on_white.png", decode=decode).value
        assert distance(cutout, hash_file(tmp_path / "alpha_dropped.png", decode=decode).value) > 6


def test_flip_invariant_gives_the_mirror_hash(photos: dict[str, Path], tmp_path: Path) -> None:
    mirror = tmp_path / "mirror.png"
    photo("astronaut").transpose(Image.Transpose.FLIP_LEFT_RIGHT).save(mirror)
    original = hash_file(photos["astronaut"], flip_invariant=True)
    flipped = hash_file(mirror)
    assert original.mirrored is not None and flipped.mirrored is None
    assert distance(original.value, flipped.value) > 20
    assert distance(original.mirrored, flipped.value) <= 2


def test_hash_files_matches_hash_file_in_order(photos: dict[str, Path], tmp_path: Path) -> None:
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n nothing else")
    paths = [*photos.values(), broken] * 8  # enough files for two worker processes
    results = hash_files(paths, "dhash", workers=2, flip_invariant=True)
    expected = {p: hash_file(p, "dhash", flip_invariant=True) for p in set(paths)}
    assert results == [expected[p] for p in paths]
    assert all(isinstance(r, FileHash) for r in results)
    assert sum(r.value is None for r in results) == 8


def test_keys_and_validation() -> None:
    assert hash_key() == "phash-8-draft-luma"
    assert hash_key("colorhash", 8) == "colorhash-8-draft"
    assert hash_key("dhash", 16, "full") == "dhash-16-full"
    assert hash_bits("phash", 16) == 256 and hash_bits("colorhash", 3) == 42
    with pytest.raises(ValueError, match="phash, dhash, whash, ahash, colorhash"):
        hash_key("md5")
    with pytest.raises(ValueError, match="draft, full"):
        hash_file("x.png", decode="fast")
    with pytest.raises(ValueError, match="power-of-two"):
        hash_key("whash", 6)


def test_imagehash_agrees_on_distance(photos: dict[str, Path]) -> None:
    a = hash_file(photos["coffee"], decode="full").value
    b = hash_file(photos["rocket"], decode="full").value
    assert a is not None and b is not None
    assert imagehash.hex_to_hash(f"{a:016x}") - imagehash.hex_to_hash(f"{b:016x}") == distance(a, b)


def test_pool_forks_when_single_threaded_and_uses_the_forkserver_beside_a_thread() -> None:
    """A lone thread forks (workers start with the parent's imports); with a progress bar's
    thread alive the pool starts from the forkserver, which cannot copy a held lock."""
    import threading

    from curate.executor import MIN_ITEMS_PER_WORKER, _context, pool_map

    if sys.platform != "linux":
        pytest.skip("curate forks on Linux only")
    items = list(range(MIN_ITEMS_PER_WORKER * 4))
    expected = [abs(x - 7) for x in items]
    if threading.active_count() == 1:
        assert _context(()).get_start_method() == "fork"
    assert list(pool_map(abs, [x - 7 for x in items], workers=2)) == expected
    stop = threading.Event()
    thread = threading.Thread(target=stop.wait)
    thread.start()
    try:
        assert _context(()).get_start_method() == "forkserver"
        assert list(pool_map(abs, [x - 7 for x in items], workers=2)) == expected
    finally:
        stop.set()
        thread.join()


def test_pool_workers_start_with_what_imagehash_imports_late() -> None:
    """imagehash imports scipy.fftpack on its first phash; a forked pool's workers get it from
    the parent (imported once, before the fork) instead of each importing it."""
    if sys.platform != "linux":
        pytest.skip("curate forks on Linux only")
    code = (
        "import sys\n"
        "from curate.executor import MIN_ITEMS_PER_WORKER, pool_map\n"
        "from curate.stages.dedupe.hashing import preload_modules\n"
        "def imported(name):\n"
        "    return name in sys.modules\n"
        "names = ['scipy.fftpack'] * (MIN_ITEMS_PER_WORKER * 4)\n"
        "assert not imported('scipy.fftpack')\n"
        "print(set(pool_map(imported, names, 2, preload=preload_modules('dhash'))))\n"
        "print(set(pool_map(imported, names, 2, preload=preload_modules('phash'))))\n"
    )
    assert run_python(code).split() == ["{False}", "{True}"]  # dhash needs no scipy; phash's workers have it


def run_python(code: str) -> str:
    """What `python -c code` prints, in a fresh interpreter (imports as a user's run has them)."""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert out.returncode == 0, out.stderr
    return out.stdout


def test_grey_hashes_decode_colour_jpegs_to_luma_and_colorhash_keeps_colour(tmp_path: Path) -> None:
    """Draft decoding hands libjpeg a grey target for the grey-level hashes (skipping chroma
    work); the luma is the Y that Pillow's RGB -> L approximates, so hashes barely move."""
    path = tmp_path / "coffee.jpg"
    photo("coffee").save(path, quality=90)
    with Image.open(path) as image:
        assert prepare(image, "draft", 64, luma=True).mode == "L"
    with Image.open(path) as image:
        assert prepare(image, "draft", 64).mode == "RGB"
    luma, rgb = hash_file(path, "phash"), hash_file(path, "colorhash")
    with Image.open(path) as image:
        image.draft(None, (64, 64))
        via_rgb = int(str(imagehash.phash(image.convert("RGB"))), 16)
    assert luma.value is not None and bin(luma.value ^ via_rgb).count("1") <= 2
    assert rgb.value is not None and hash_key("colorhash") == "colorhash-8-draft"


def test_probe_reads_the_whole_file_and_refuses_oversized_ones(tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    from curate.stages.dedupe import scan

    path = tmp_path / "astronaut.jpg"
    photo("astronaut").save(path, quality=90)
    probe = scan.probe_file(str(path), "phash", 8, "draft", False)
    assert probe.error is None and probe.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    monkeypatch.setattr(scan, "MAX_FILE_BYTES", path.stat().st_size - 1)
    assert "larger than" in (scan.probe_file(str(path), "phash", 8, "draft", False).error or "")
