"""sd-scripts' noise and loss (REFERENCE §7), drawing every random number from the step's generator.

Noise: Gaussian, plus noise_offset (x per-channel N(0,1)), adaptive to the latents' mean when
adaptive_noise_scale is set, then multires (pyramid) noise, in sd-scripts' order. Timesteps are
uniform in [0, 1000). Loss: MSE per sample over C,H,W against the noise (or v), x
prior_loss_weight for regularisation images, x the min-SNR weight, then the batch mean.
"""

from __future__ import annotations

from typing import Any

import torch
from torch.nn import functional as F

from trainer.config import TrainConfig
from trainer.model import Models, encode_prompts


def pyramid_noise(noise: torch.Tensor, iterations: int, discount: float,
                  gen: torch.Generator) -> torch.Tensor:
    """sd-scripts' pyramid_noise_like: coarser and coarser noise (each level 2-4x smaller, weighted
    discount**i) upsampled and added, then rescaled to unit variance."""
    b, c, h, w = noise.shape
    upsample = torch.nn.Upsample(size=(h, w), mode="bilinear")
    for i in range(iterations):
        r = float(torch.rand((), generator=gen, device=gen.device)) * 2 + 2
        hn, wn = max(1, int(h / (r**i))), max(1, int(w / (r**i)))
        level = torch.randn((b, c, hn, wn), generator=gen, device=noise.device)
        noise = noise + upsample(level) * discount**i
        if hn == 1 or wn == 1:
            break
    return noise / noise.std()


def make_noise(latents: torch.Tensor, config: TrainConfig, gen: torch.Generator) -> torch.Tensor:
    noise = torch.randn(latents.shape, generator=gen, device=latents.device)
    if config.noise_offset:
        offset: Any = config.noise_offset
        if config.adaptive_noise_scale:
            mean = latents.mean(dim=(2, 3), keepdim=True).abs()
            offset = (offset + config.adaptive_noise_scale * mean).clamp(min=0)
        noise = noise + offset * torch.randn((*latents.shape[:2], 1, 1), generator=gen, device=latents.device)
    if config.multires_noise_iterations:
        noise = pyramid_noise(noise, config.multires_noise_iterations, config.multires_noise_discount, gen)
    return noise


def min_snr_weight(models: Models, timesteps: torch.Tensor, gamma: float) -> torch.Tensor:
    alphas = models.noise_scheduler.alphas_cumprod.to(timesteps.device)[timesteps]
    snr = alphas / (1 - alphas)
    clipped = snr.clamp(max=gamma)
    return clipped / (snr + 1) if models.v_parameterization else clipped / snr


def diffusion_loss(models: Models, latents: torch.Tensor, captions: list[str], weights: torch.Tensor,
                   config: TrainConfig, gen: torch.Generator) -> torch.Tensor:
    """sd-scripts' loss for one batch of (scaled) latents."""
    scheduler = models.noise_scheduler
    noise = make_noise(latents, config, gen)
    timesteps = torch.randint(0, scheduler.config.num_train_timesteps, (latents.shape[0],), generator=gen,
                              device=latents.device)
    noisy = scheduler.add_noise(latents, noise, timesteps)
    with torch.set_grad_enabled(config.train_text_encoder and torch.is_grad_enabled()):
        context = encode_prompts(models, captions, config.clip_skip, max_token_length=config.max_token_length)
    dtype = next(models.unet.parameters()).dtype
    pred = models.unet(noisy.to(dtype), timesteps, context.to(dtype)).sample
    target = scheduler.get_velocity(latents, noise, timesteps) if models.v_parameterization else noise
    loss = F.mse_loss(pred.float(), target.float(), reduction="none").mean(dim=(1, 2, 3)) * weights
    if config.min_snr_gamma:
        loss = loss * min_snr_weight(models, timesteps, config.min_snr_gamma)
    return loss.mean()
