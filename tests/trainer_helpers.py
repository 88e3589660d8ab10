"""Measures shared by the trainer tests."""

from __future__ import annotations

import random
from typing import Any

import torch

from curate.trainer import loop
from curate.trainer.config import TrainConfig


def eval_loss(run: loop.Run, config: TrainConfig) -> float:
    """Mean loss over fixed noise draws, the same for every network: a fair before/after measure."""
    run.network.eval()
    batch = loop.epoch_batches(run.dataset, 0, 0)[0]
    pixels = loop.load_pixels(batch, random.Random(0), torch.device("cpu"))
    total = 0.0
    with torch.no_grad():
        latents = run.models.vae.encode(pixels).latent_dist.mean * run.models.vae_scale
        for k in range(8):
            gen = torch.Generator().manual_seed(k)
            total += float(loop.diffusion_loss(run.models, latents, [i.caption for i in batch],
                                               torch.ones(len(batch)), config, gen))
    return total / 8


def unet_and_text_outputs(unet: Any, text_encoder: Any) -> tuple[Any, Any]:
    """An SD 1.x text encoder's context and the UNet's prediction for fixed random inputs."""
    gen = torch.Generator().manual_seed(0)
    latents = torch.randn(2, 4, 8, 8, generator=gen)
    ids = torch.randint(0, 500, (2, 77), generator=gen)
    with torch.no_grad():
        context = text_encoder(ids).last_hidden_state
        return context, unet(latents, torch.tensor([10, 700]), context).sample
