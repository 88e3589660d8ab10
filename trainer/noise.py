"""sd-scripts' noise and loss (REFERENCE §7), drawing every random number from the step's generator.

Noise: Gaussian, plus noise_offset (x per-channel N(0,1); x U(0,1) per batch with
noise_offset_random_strength), adaptive to the latents' mean when
adaptive_noise_scale is set, then multires (pyramid) noise, in sd-scripts' order. Timesteps are
uniform in [0, 1000). Loss: MSE per element against the noise (or v), times the alpha mask
where a subset sets alpha_mask, averaged per sample over C,H,W, x prior_loss_weight for
regularisation images, x the min-SNR weight (and the other v-prediction factors, in
sd-scripts' order), then the batch mean.
"""

from __future__ import annotations

from typing import Any

import torch
from torch.nn import functional as F

from curate.trainer.config import TrainConfig
from curate.trainer.data import Item, size_conditioning
from curate.trainer.model import Models, encode_conditioning


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
        if config.noise_offset_random_strength:  # sd-scripts: one uniform draw per batch, before the offset
            offset = torch.rand(1, generator=gen, device=gen.device).to(latents.device) * offset
        if config.adaptive_noise_scale:
            mean = latents.mean(dim=(2, 3), keepdim=True).abs()
            offset = (offset + config.adaptive_noise_scale * mean).clamp(min=0)
        noise = noise + offset * torch.randn((*latents.shape[:2], 1, 1), generator=gen, device=latents.device)
    if config.multires_noise_iterations:
        noise = pyramid_noise(noise, config.multires_noise_iterations, config.multires_noise_discount, gen)
    return noise


def prepare_schedule(scheduler: Any, zero_terminal_snr: bool) -> None:
    """Keep the SNR of every timestep (`all_snr`), then, when asked, rescale the betas to zero
    terminal SNR (arXiv 2305.08891). In sd-scripts' order: the SNR table comes from the schedule
    *before* the rescale, so the loss weights below never divide by the zero final SNR."""
    alphas = scheduler.alphas_cumprod
    scheduler.all_snr = alphas / (1.0 - alphas)
    if not zero_terminal_snr:
        return
    root = scheduler.alphas_cumprod.sqrt()
    first, last = root[0].clone(), root[-1].clone()
    root = (root - last) * first / (first - last)
    alphas_bar = root**2
    stepwise = torch.cat([alphas_bar[:1], alphas_bar[1:] / alphas_bar[:-1]])
    scheduler.betas = 1 - stepwise
    scheduler.alphas = stepwise
    scheduler.alphas_cumprod = torch.cumprod(stepwise, dim=0)


def _snr(models: Models, timesteps: torch.Tensor) -> torch.Tensor:
    scheduler = models.noise_scheduler
    if not hasattr(scheduler, "all_snr"):
        prepare_schedule(scheduler, False)
    snr: torch.Tensor = scheduler.all_snr.to(timesteps.device)[timesteps]
    return snr


def loss_weights(models: Models, timesteps: torch.Tensor, config: TrainConfig) -> torch.Tensor | None:
    """sd-scripts' post_process_loss factors, in its order: min-SNR, v loss scaled like eps,
    v-like loss, debiased estimation. None when no option is on."""
    snr = _snr(models, timesteps)
    capped = snr.clamp(max=1000)  # SNR at t=0 is huge: sd-scripts caps it for these two
    weight = None
    if config.min_snr_gamma:
        clipped = snr.clamp(max=config.min_snr_gamma)
        weight = clipped / (snr + 1) if models.v_parameterization else clipped / snr
    if config.scale_v_pred_loss_like_noise_pred:
        weight = (capped / (capped + 1)) * (1 if weight is None else weight)
    if config.v_pred_like_loss:
        # loss + loss / scale * v: the factor (1 + v / scale) on the loss so far
        factor = 1 + config.v_pred_like_loss / (capped / (capped + 1))
        weight = factor * (1 if weight is None else weight)
    if config.debiased_estimation_loss:
        debias = 1 / (capped + 1) if models.v_parameterization else 1 / capped.sqrt()
        weight = debias * (1 if weight is None else weight)
    return weight


def size_ids(batch: list[Item], flips: list[bool], device: torch.device) -> torch.Tensor:
    """SDXL's (B, 6) size numbers of a batch (curate.trainer.data.size_conditioning)."""
    sizes = [size_conditioning(item, flipped) for item, flipped in zip(batch, flips, strict=True)]
    return torch.tensor(sizes, device=device)


def default_time_ids(latents: torch.Tensor) -> torch.Tensor:
    """SDXL's size numbers for uncropped images of the latents' size: (h, w, 0, 0, h, w) x 8."""
    h, w = latents.shape[-2] * 8, latents.shape[-1] * 8
    return torch.tensor([[h, w, 0, 0, h, w]] * latents.shape[0], device=latents.device)


def predict(models: Models, noisy: torch.Tensor, timesteps: torch.Tensor, context: torch.Tensor,
            pooled: torch.Tensor | None, time_ids: torch.Tensor | None) -> torch.Tensor:
    """The UNet's output; SDXL's also takes the pooled embedding and the size numbers."""
    dtype = next(models.unet.parameters()).dtype
    if pooled is None:
        out: torch.Tensor = models.unet(noisy.to(dtype), timesteps, context.to(dtype)).sample
        return out
    ids = default_time_ids(noisy) if time_ids is None else time_ids
    added = {"text_embeds": pooled.to(dtype), "time_ids": ids.to(noisy.device, dtype)}
    out = models.unet(noisy.to(dtype), timesteps, context.to(dtype), added_cond_kwargs=added).sample
    return out


def masked_loss(loss: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """sd-scripts' apply_masked_loss: the per-element loss (B, C, h, w) times the alpha masks
    (B, H, W, 0..1 at pixel size) averaged down to the latents' size (area interpolation)."""
    mask = F.interpolate(masks.to(loss.dtype).unsqueeze(1), size=loss.shape[2:], mode="area")
    return loss * mask


def diffusion_loss(models: Models, latents: torch.Tensor, captions: list[str], weights: torch.Tensor,
                   config: TrainConfig, gen: torch.Generator,
                   time_ids: torch.Tensor | None = None, masks: torch.Tensor | None = None) -> torch.Tensor:
    """sd-scripts' loss for one batch of (scaled) latents. `time_ids` (B, 6) are SDXL's size
    numbers (curate.trainer.data.size_conditioning); None means uncropped images of the latents' size.
    `masks` (B, H, W) are alpha masks (subsets with alpha_mask) that weight the loss per pixel."""
    scheduler = models.noise_scheduler
    noise = make_noise(latents, config, gen)
    timesteps = torch.randint(0, scheduler.config.num_train_timesteps, (latents.shape[0],), generator=gen,
                              device=latents.device)
    noisy = scheduler.add_noise(latents, noise, timesteps)
    with torch.set_grad_enabled(config.train_text_encoder and torch.is_grad_enabled()):
        context, pooled = encode_conditioning(models, captions, config.clip_skip,
                                              max_token_length=config.max_token_length)
    pred = predict(models, noisy, timesteps, context, pooled, time_ids)
    target = scheduler.get_velocity(latents, noise, timesteps) if models.v_parameterization else noise
    loss = F.mse_loss(pred.float(), target.float(), reduction="none")
    if masks is not None:
        loss = masked_loss(loss, masks)
    loss = loss.mean(dim=(1, 2, 3)) * weights
    factors = loss_weights(models, timesteps, config)
    if factors is not None:
        loss = loss * factors
    return loss.mean()
