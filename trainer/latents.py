"""Turning a batch of dataset items into scaled VAE latents: encoded each step, or cached.

Without caching, each step decodes, resizes and crops the images into their bucket (flip_aug
draws from the step's generator) and samples the VAE's latent distribution. With cache_latents
every image is encoded once before training, as sd-scripts does: one latent sample, plus one of
the mirrored image when its subset uses flip_aug. cache_latents_to_disk keeps them between runs in
sd-scripts' own file, `STEM_WWWWxHHHH_sd.npz` (SDXL: `_sdxl.npz`) beside the image (keys latents,
original_size, crop_ltrb, latents_flipped, and alpha_mask for an alpha_mask subset: the mask
at the bucket's pixel size, mirrored when the flipped latents are used), so either tool reuses
the other's cache; an SDXL
file's crop_ltrb is sd-scripts' (curate.trainer.data.crop_ltrb), which its SDXL training reads back.
curate adds the image's sha256 and trusts its own files only when it matches, so an edited image
is encoded again; sd-scripts' files carry no checksum and are trusted when newer than their image.
"""

from __future__ import annotations

import hashlib
import io
import os
import random
import zlib
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from curate.atomic import atomic_write_bytes
from curate.buckets import resize_to_bucket
from curate.errors import CurateError
from curate.paths import display
from curate.trainer.data import Dataset, Item, crop_ltrb
from curate.trainer.model import Models

Progress = Callable[[int, int], None]
# a cached image: its latents, those of the mirrored image (flip_aug) and its alpha mask (alpha_mask)
Entry = tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]


def load_pixels(batch: list[Item], rng: random.Random, device: torch.device,
                flips: list[bool] | None = None) -> torch.Tensor:
    """The batch's images resized and cropped into their bucket, in [-1, 1], NCHW. An image is
    mirrored when `flips` says so, else (flip_aug subsets) with probability 1/2 from `rng`."""
    return load_pixels_and_masks(batch, rng, device, flips)[0]


def load_pixels_and_masks(batch: list[Item], rng: random.Random, device: torch.device,
                          flips: list[bool] | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """`load_pixels`, and the batch's alpha masks (B, H, W in 0..1, mirrored with their images) when
    a subset of the batch sets alpha_mask; the other images' masks are ones, as sd-scripts fills them."""
    arrays, masks = [], []
    for k, item in enumerate(batch):
        array, mask = bucket_arrays(item)
        flip = flips[k] if flips is not None else item.subset.flip_aug and rng.random() < 0.5
        if flip:
            array, mask = array[:, ::-1], None if mask is None else mask[:, ::-1]
        arrays.append(array.astype(np.float32) / 127.5 - 1.0)
        masks.append(mask)
    pixels = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous().to(device)
    return pixels, stack_masks(masks, pixels.shape[-2:], device)


def stack_masks(masks: list[np.ndarray | torch.Tensor | None], size: tuple[int, ...],
                device: torch.device) -> torch.Tensor | None:
    """None when no image has a mask; else (B, H, W) with ones for the images without one."""
    if all(mask is None for mask in masks):
        return None
    rows = [torch.ones(tuple(size)) if m is None else torch.as_tensor(np.ascontiguousarray(m)) for m in masks]
    return torch.stack(rows).float().to(device)


def open_image(path: Path, alpha: bool) -> Image.Image:
    """The image as sd-scripts' load_image reads it: RGBA for an alpha_mask subset (an image
    without alpha gets an opaque one), else RGB (an RGBA image's alpha is dropped, not blended)."""
    with Image.open(path) as image:
        mode = "RGBA" if alpha else "RGB"
        return image.copy() if image.mode == mode else image.convert(mode)


def bucket_arrays(item: Item) -> tuple[np.ndarray, np.ndarray | None]:
    """The item's image in its bucket (H, W, 3 uint8) and, for an alpha_mask subset, its alpha
    resized with it, in 0..1 (sd-scripts resizes the RGBA image, then splits off the alpha).
    A file that no longer decodes stops the run with its name (the saves made so far stay, and a
    state folder resumes once the file is fixed)."""
    try:
        image = resize_to_bucket(open_image(item.path, item.subset.alpha_mask), item.assignment)
    except (OSError, SyntaxError, ValueError) as exc:
        raise CurateError(f"{display(item.path)}: cannot decode the image ({exc}); replace or remove it "
                          "(`curate check` lists unreadable images), then train again") from exc
    array = np.asarray(image)
    if not item.subset.alpha_mask:
        return array, None
    return array[:, :, :3], array[:, :, 3].astype(np.float32) / 255.0


def npz_path(item: Item, sdxl: bool = False) -> Path:
    """sd-scripts' cache file name; SDXL's VAE differs from SD's, so its files are `_sdxl.npz`."""
    w, h = item.assignment.bucket
    return item.path.with_name(f"{item.path.stem}_{w:04d}x{h:04d}_{'sdxl' if sdxl else 'sd'}.npz")


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


class LatentSource:
    """Scaled latents for a batch; `cache()` first to encode every image once."""

    def __init__(self, models: Models, to_disk: bool = False, seed: int = 0, write: bool = True) -> None:
        self.models = models
        self.to_disk = to_disk
        self.write = write  # only one process of a multi-process run writes cache files
        self.seed = seed
        self.cached: dict[Path, Entry] = {}

    @property
    def device(self) -> torch.device:
        return next(self.models.vae.parameters()).device

    def _encode(self, pixels: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        with torch.no_grad():
            latents: torch.Tensor = self.models.vae.encode(pixels).latent_dist.sample(gen)
        return latents

    def batch(self, batch: list[Item], rng: random.Random, gen: torch.Generator) -> torch.Tensor:
        return self.batch_with_masks(batch, rng, gen)[0]

    def batch_with_flips(self, batch: list[Item], rng: random.Random,
                         gen: torch.Generator) -> tuple[torch.Tensor, list[bool]]:
        """The latents and which images were mirrored (SDXL's crop numbers depend on it)."""
        latents, flips, _masks = self.batch_with_masks(batch, rng, gen)
        return latents, flips

    def batch_with_masks(self, batch: list[Item], rng: random.Random,
                         gen: torch.Generator) -> tuple[torch.Tensor, list[bool], torch.Tensor | None]:
        """The latents, which images were mirrored, and the alpha masks (None: no alpha_mask subset
        in the batch; see load_pixels_and_masks)."""
        if not self.cached:
            # drawn here in load_pixels' own order, so the stream is the same as its draws
            flips = [item.subset.flip_aug and rng.random() < 0.5 for item in batch]
            pixels, masks = load_pixels_and_masks(batch, rng, self.device, flips)
            return self._encode(pixels, gen) * self.models.vae_scale, flips, masks
        rows, flips, mask_rows = [], [], []
        for item in batch:
            plain, flipped, mask = self.cached[item.path]
            use_flip = flipped is not None and rng.random() < 0.5
            rows.append(flipped if use_flip and flipped is not None else plain)
            flips.append(use_flip)
            mask_rows.append(mask.flip(-1) if use_flip and mask is not None else mask)
        latents = torch.stack(rows).to(self.device) * self.models.vae_scale
        w, h = batch[0].assignment.bucket
        return latents, flips, stack_masks(mask_rows, (h, w), self.device)

    def cache(self, dataset: Dataset, progress: Progress | None = None) -> int:
        """Encode (or read from disk) every image of the dataset; returns how many were encoded."""
        unique = list({item.path: item for item in dataset.items}.values())
        encoded = 0
        for done, item in enumerate(unique, 1):
            sha = _sha256(item.path) if self.to_disk else ""
            entry = self._read(item, sha) if self.to_disk else None
            if entry is None:
                entry = self._encode_item(item)
                encoded += 1
                if self.to_disk and self.write:
                    self._write(item, sha, entry)
            self.cached[item.path] = entry
            if progress:
                progress(done, len(unique))
        return encoded

    def _encode_item(self, item: Item) -> Entry:
        # seeded by the image's name, so a cache rebuilt for one edited image leaves the others' draws
        # alone; fsencode: a name that is not UTF-8 has surrogates .encode() refuses (same bytes otherwise)
        name_seed = zlib.crc32(os.fsencode(item.path.name))
        gen = torch.Generator(device=self.device).manual_seed(self.seed ^ name_seed)
        pixels, masks = load_pixels_and_masks([item], random.Random(0), self.device, [False])
        plain = self._encode(pixels, gen)[0].cpu()
        mask = None if masks is None else masks[0].cpu()
        if not item.subset.flip_aug:
            return plain, None, mask
        return plain, self._encode(pixels.flip(-1), gen)[0].cpu(), mask

    def _read(self, item: Item, sha: str) -> Entry | None:
        path = npz_path(item, self.models.sdxl)
        if not path.is_file():
            return None
        try:
            with np.load(path) as npz:
                if "curate_sha256" in npz.files:
                    if str(npz["curate_sha256"]) != sha:
                        return None
                elif path.stat().st_mtime < item.path.stat().st_mtime:
                    return None  # sd-scripts' file carries no checksum: trust it only if newer than the image
                plain = torch.from_numpy(npz["latents"].astype(np.float32))
                flipped = torch.from_numpy(npz["latents_flipped"].astype(np.float32)) \
                    if "latents_flipped" in npz.files else None
                mask = torch.from_numpy(npz["alpha_mask"].astype(np.float32)) \
                    if "alpha_mask" in npz.files else None
        except (OSError, ValueError, KeyError):
            return None  # sd-scripts' own or a damaged file: encode again and replace it
        w, h = item.assignment.bucket
        stride = 2 ** (len(self.models.vae.config.block_out_channels) - 1)
        if plain.shape[-2:] != (h // stride, w // stride) or (item.subset.flip_aug and flipped is None):
            return None
        # made with or without the alpha channel: the latents differ too (the RGBA image is resized
        # as one), so a file of the other kind is encoded again
        if item.subset.alpha_mask != (mask is not None) or (mask is not None and mask.shape != (h, w)):
            return None
        return plain, flipped, mask

    def _write(self, item: Item, sha: str, entry: Entry) -> None:
        plain, flipped, mask = entry
        crop = crop_ltrb(item) if self.models.sdxl else item.assignment.crop
        arrays = {"latents": plain.numpy(), "original_size": np.array(item.assignment.size),
                  "crop_ltrb": np.array(crop), "curate_sha256": np.array(sha)}
        if flipped is not None:
            arrays["latents_flipped"] = flipped.numpy()
        if mask is not None:  # sd-scripts' key: (H, W) at the bucket's pixel size, 0..1
            arrays["alpha_mask"] = mask.float().numpy()
        buffer = io.BytesIO()
        np.savez(buffer, **arrays)
        atomic_write_bytes(npz_path(item, self.models.sdxl), buffer.getvalue())
