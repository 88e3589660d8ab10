"""alpha_mask (issue 17, item 1): a subset with `alpha_mask = true` weights the loss by the
image's alpha as sd-scripts' apply_masked_loss does, encoded each step or from the latent cache
(in memory or sd-scripts' npz with its `alpha_mask` key); without it an RGBA image trains as RGB.

sd-scripts' apply_masked_loss and load_image run from their pinned source
(tests/data/sd_scripts_parity.json, see tests/test_trainer_parity.py).
"""

from __future__ import annotations

import json
import random
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("diffusers")

import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

from curate.trainer import loop  # noqa: E402
from curate.trainer.config import TrainConfig  # noqa: E402
from curate.trainer.data import load_dataset  # noqa: E402
from curate.trainer.latents import (  # noqa: E402
    LatentSource,
    bucket_arrays,
    load_pixels_and_masks,
    npz_path,
    open_image,
)
from curate.trainer.noise import masked_loss  # noqa: E402

PARITY = json.loads((Path(__file__).parent / "data" / "sd_scripts_parity.json").read_text(encoding="utf-8"))
CONFIG = TrainConfig(resolution=64, min_bucket_reso=64, max_bucket_reso=128, network_dim=2, batch_size=2,
                     threads=1, seed=3)
CPU = torch.device("cpu")

pytestmark = pytest.mark.usefixtures("one_thread")


def sd_scripts(name: str) -> Any:
    scope: dict[str, Any] = {"torch": torch, "Image": Image, "np": np}
    exec(PARITY[name], scope)
    return scope[name]


@pytest.mark.parametrize(("loss_shape", "mask_size"), [((2, 4, 8, 8), (64, 64)), ((3, 4, 6, 10), (48, 80)),
                                                       ((1, 4, 5, 7), (40, 56))])
def test_masked_loss_is_apply_masked_loss(loss_shape: tuple[int, ...], mask_size: tuple[int, int]) -> None:
    gen = torch.Generator().manual_seed(len(loss_shape) + mask_size[1])
    loss = torch.rand(loss_shape, generator=gen)
    masks = torch.rand((loss_shape[0], *mask_size), generator=gen)
    masks[0, :, : mask_size[1] // 2] = 0.0  # a transparent half
    theirs = sd_scripts("apply_masked_loss")(loss, {"alpha_masks": masks})
    assert torch.allclose(masked_loss(loss, masks), theirs, rtol=0, atol=1e-7)
    assert float(masked_loss(loss, masks)[0, :, :, : loss_shape[3] // 2].abs().max()) == 0.0


def _rgba(path: Path, size: tuple[int, int] = (64, 64), seed: int = 0) -> Path:
    """Noise in every pixel (so a transparent half still holds colours), the right half transparent."""
    rng = np.random.default_rng(seed)
    array = rng.integers(0, 256, (size[1], size[0], 4), dtype=np.uint8)
    array[:, :, 3] = 255
    array[:, size[0] // 2:, 3] = 0
    array[: size[1] // 4, : size[0] // 2, 3] = 128  # some partial alpha on the kept side
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array, "RGBA").save(path)
    return path


def _dataset(root: Path, alpha_mask: bool, flip_aug: bool = False, count: int = 2) -> Path:
    for k in range(count):
        _rgba(root / "img" / f"{k}.png", seed=k)
        (root / "img" / f"{k}.txt").write_text(f"sks, {k}", encoding="utf-8")
    (root / "dataset.toml").write_text(
        '[general]\ncaption_extension = ".txt"\n[[datasets]]\nresolution = 64\nbatch_size = 2\n'
        'min_bucket_reso = 64\nmax_bucket_reso = 256\n'
        f'[[datasets.subsets]]\nimage_dir = "{root / "img"}"\nnum_repeats = 1\n'
        f'alpha_mask = {str(alpha_mask).lower()}\nflip_aug = {str(flip_aug).lower()}\n', encoding="utf-8")
    return root


@pytest.mark.filterwarnings("ignore:Palette images")  # Pillow's, for sd-scripts and curate alike
def test_images_load_as_sd_scripts_load_image(tmp_path: Path) -> None:
    """RGBA for an alpha_mask subset (opaque alpha added to RGB, L and palette images), RGB
    otherwise (an RGBA image's alpha dropped, not blended)."""
    load_image = sd_scripts("load_image")
    rgba = _rgba(tmp_path / "a.png")
    Image.new("RGB", (40, 30), (10, 200, 30)).save(tmp_path / "rgb.png")
    Image.new("L", (40, 30), 77).save(tmp_path / "grey.png")
    palette = Image.new("P", (40, 30), 3)
    palette.info["transparency"] = 3
    palette.save(tmp_path / "palette.png")
    for path in (rgba, tmp_path / "rgb.png", tmp_path / "grey.png", tmp_path / "palette.png"):
        for alpha in (True, False):
            ours = np.asarray(open_image(path, alpha))
            assert np.array_equal(ours, load_image(str(path), alpha)), (path, alpha)


def test_bucket_masks_are_the_resized_alpha(tmp_path: Path) -> None:
    """The alpha is resized with the RGBA image (one resize, as sd-scripts does), then split off."""
    from curate.buckets import resize_to_bucket

    _rgba(tmp_path / "img" / "0.png", size=(150, 90))
    (tmp_path / "dataset.toml").write_text(
        '[[datasets]]\nresolution = 64\nmin_bucket_reso = 64\nmax_bucket_reso = 256\n'
        f'[[datasets.subsets]]\nimage_dir = "{tmp_path / "img"}"\n'
        'alpha_mask = true\n', encoding="utf-8")
    (item,) = load_dataset(tmp_path / "dataset.toml").items
    pixels, mask = bucket_arrays(item)
    resized = np.asarray(resize_to_bucket(Image.open(item.path).convert("RGBA"), item.assignment))
    assert mask is not None and mask.shape == pixels.shape[:2] == resized.shape[:2]
    assert np.array_equal(pixels, resized[:, :, :3]) and np.allclose(mask, resized[:, :, 3] / 255.0)
    plain = load_dataset(tmp_path / "dataset.toml", {"alpha_mask": False}).items[0]
    assert bucket_arrays(plain)[1] is None


def _bumped(run: loop.Run) -> Any:
    """A hook adding 100 to the UNet's prediction in the right (transparent) half of the latents."""
    def hook(_module: Any, _args: Any, output: Any) -> Any:
        bump = torch.zeros_like(output.sample)
        bump[..., bump.shape[-1] // 2:] = 100.0
        output.sample = output.sample + bump
        return output
    return run.models.unet.register_forward_hook(hook)


def _loss_and_grads(run: loop.Run, bumped: bool) -> tuple[float, list[torch.Tensor]]:
    batch = loop.epoch_batches(run.dataset, 0, CONFIG.seed)[0]
    handle = _bumped(run) if bumped else None
    try:
        run.network.zero_grad(set_to_none=True)
        loss = loop._batch_loss(run, batch, CONFIG, seed=11)
        loss.backward()
    finally:
        if handle is not None:
            handle.remove()
    return float(loss.detach()), [p.grad.clone() for p in run.network.parameters() if p.grad is not None]


@pytest.mark.parametrize("cache", ["none", "memory", "disk"])
def test_transparent_half_changes_nothing(tiny_sd: Path, tmp_path: Path, cache: str) -> None:
    run = loop.prepare(_dataset(tmp_path / "masked", alpha_mask=True), tiny_sd, CONFIG, CPU)
    if cache != "none":
        run.latents = LatentSource(run.models, to_disk=cache == "disk", seed=1)
        assert run.latents.cache(run.dataset) == 2
    loss, grads = _loss_and_grads(run, bumped=False)
    bumped_loss, bumped_grads = _loss_and_grads(run, bumped=True)
    assert grads and any(float(g.abs().max()) > 0 for g in grads)
    assert bumped_loss == pytest.approx(loss, rel=1e-6, abs=1e-7)
    assert all(torch.allclose(a, b, atol=1e-7) for a, b in zip(grads, bumped_grads, strict=True))
    # the same images without alpha_mask train as RGB: the right half counts
    plain = loop.prepare(_dataset(tmp_path / "plain", alpha_mask=False), tiny_sd, CONFIG, CPU)
    assert _loss_and_grads(plain, bumped=True)[0] > 100 * _loss_and_grads(plain, bumped=False)[0]


def test_disk_cache_carries_the_mask(tiny_sd: Path, tmp_path: Path) -> None:
    run = loop.prepare(_dataset(tmp_path, alpha_mask=True), tiny_sd, CONFIG, CPU)
    first = LatentSource(run.models, to_disk=True, seed=1)
    first.cache(run.dataset)
    item = run.dataset.items[0]
    with np.load(npz_path(item)) as npz:
        saved = npz["alpha_mask"]
    assert saved.shape == (64, 64) and saved.dtype == np.float32  # sd-scripts' key and layout: (H, W)
    assert np.array_equal(saved, bucket_arrays(item)[1])
    again = LatentSource(run.models, to_disk=True, seed=1)
    assert again.cache(run.dataset) == 0  # read back, not encoded
    assert torch.equal(again.cached[item.path][2], first.cached[item.path][2])
    # a file written without the mask (alpha_mask was off) is not used for a masked subset
    plain = load_dataset(tmp_path, {"alpha_mask": False})
    LatentSource(run.models, to_disk=True, seed=1).cache(plain)
    assert LatentSource(run.models, to_disk=True, seed=1).cache(run.dataset) == 2


def test_masks_are_mirrored_with_their_images(tiny_sd: Path, tmp_path: Path) -> None:
    run = loop.prepare(_dataset(tmp_path, alpha_mask=True, flip_aug=True), tiny_sd, CONFIG, CPU)
    batch = list(run.dataset.items)
    _pixels, masks = load_pixels_and_masks(batch, random.Random(0), CPU, [True, False])
    assert masks is not None
    expected = [torch.from_numpy(bucket_arrays(item)[1].copy()) for item in batch]
    assert torch.equal(masks[0], expected[0].flip(-1)) and torch.equal(masks[1], expected[1])
    source = LatentSource(run.models, seed=1)
    source.cache(run.dataset)
    seen = set()
    for seed in range(12):
        _latents, flips, cached_masks = source.batch_with_masks(batch, random.Random(seed), torch.Generator())
        assert cached_masks is not None
        for k, flipped in enumerate(flips):
            assert torch.equal(cached_masks[k], expected[k].flip(-1) if flipped else expected[k])
            seen.add(flipped)
    assert seen == {True, False}


def test_a_mixed_batch_fills_ones(tiny_sd: Path, tmp_path: Path) -> None:
    """An item of a subset without alpha_mask beside masked ones gets a mask of ones, as sd-scripts
    fills the batch's missing masks."""
    run = loop.prepare(_dataset(tmp_path, alpha_mask=True), tiny_sd, CONFIG, CPU)
    masked = run.dataset.items[0]
    plain = replace(masked, subset=replace(masked.subset, alpha_mask=False))
    _pixels, masks = load_pixels_and_masks([masked, plain], random.Random(0), CPU, [False, False])
    assert masks is not None and torch.equal(masks[1], torch.ones(64, 64))
    assert float(masks[0, :, 32:].max()) == 0.0
