"""The training loop: a frozen SD model, an adapter network, sd-scripts' noise and loss (REFERENCE §7).

Each step: latents = VAE(pixels) sample x scaling factor; noise (plus noise_offset, adaptive
to the latents' mean when asked); timesteps uniform in [0, 1000); the UNet predicts the noise
(or v); loss = MSE per sample over C,H,W, x prior_loss_weight for regularisation images,
x min-SNR weight, then the mean. Every random draw of step k comes from generators seeded by
(seed, k), and each epoch's batch order from (seed, epoch), so a run stopped and resumed from
a state folder repeats exactly what an uninterrupted run does.
"""

from __future__ import annotations

import contextlib
import os
import random
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch.nn import functional as F

from buckets import resize_to_bucket
from curate.errors import CurateError
from trainer import checkpoint
from trainer.config import TrainConfig
from trainer.data import Dataset, Item, epoch_batches, load_dataset, process_caption, steps_per_epoch
from trainer.model import Models, encode_prompts, load_models
from trainer.networks import AdapterNetwork, LoRANetwork, create_network

WEIGHT_DTYPES = {"no": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
StepCallback = Callable[[int, int, float], None]


@dataclass
class TrainResult:
    output: Path
    steps: int
    epochs: int
    steps_per_epoch: int
    losses: list[float] = field(default_factory=list)
    saved: list[Path] = field(default_factory=list)
    seconds: float = 0.0
    resumed_from: int = 0
    device: str = "cpu"

    def as_dict(self) -> dict[str, Any]:
        done = self.steps - self.resumed_from
        return {"output": str(self.output), "steps": self.steps, "epochs": self.epochs,
                "steps_per_epoch": self.steps_per_epoch, "resumed_from": self.resumed_from,
                "first_loss": self.losses[0] if self.losses else None,
                "last_loss": self.losses[-1] if self.losses else None, "saved": [str(p) for p in self.saved],
                "seconds": round(self.seconds, 3), "device": self.device,
                "seconds_per_step": round(self.seconds / done, 4) if done else None}


def make_optimizer(config: TrainConfig, network: AdapterNetwork) -> torch.optim.Optimizer:
    groups = network.param_groups(config.unet_lr, config.text_encoder_lr)
    if config.optimizer == "prodigy":
        from prodigyopt import Prodigy

        # Prodigy adapts one step size for all groups; different learning rates break that
        rates = {g.get("lr", config.learning_rate) for g in groups}
        if len(rates) > 1:
            raise CurateError("prodigy needs one learning rate: leave unet_lr and text_encoder_lr unset "
                              "(learning_rate = 1.0 is the usual choice)")
        # Prodigy prints "Using decoupled weight decay" to stdout, which would corrupt --json output
        with contextlib.redirect_stdout(sys.stderr):
            return Prodigy(groups, lr=config.learning_rate, **config.optimizer_args)
    return torch.optim.AdamW(groups, lr=config.learning_rate, **config.optimizer_args)


def make_lr_scheduler(config: TrainConfig, optimizer: torch.optim.Optimizer, total_steps: int) -> Any:
    """The schedule, stepped once per optimiser step (so T_0 counts steps, as in sd-scripts)."""
    if config.lr_scheduler == "cosine_annealing_warm_restarts":
        return torch.optim.lr_scheduler.CosineAnnealingWarmRestarts(
            optimizer, T_0=config.T_0, T_mult=config.T_mult, eta_min=config.eta_min)
    from diffusers.optimization import get_scheduler

    name = config.lr_scheduler
    if name == "constant" and config.lr_warmup_steps:
        name = "constant_with_warmup"
    return get_scheduler(name, optimizer, num_warmup_steps=config.lr_warmup_steps,
                         num_training_steps=total_steps, num_cycles=config.lr_scheduler_num_cycles,
                         power=config.lr_scheduler_power)


def cpu_threads(config: TrainConfig, device: torch.device) -> int | None:
    """The intra-op thread count to train with on CPU (None: leave torch's setting alone)."""
    if device.type != "cpu" or config.threads == 0:
        return None
    if config.threads is not None:
        return config.threads
    return 1 if (os.cpu_count() or 1) <= 2 else None


def load_pixels(batch: list[Item], rng: random.Random, device: torch.device) -> torch.Tensor:
    """The batch's images resized and cropped into their bucket, in [-1, 1], NCHW."""
    arrays = []
    for item in batch:
        with Image.open(item.path) as image:
            image = resize_to_bucket(image.convert("RGB"), item.assignment)
        array = np.asarray(image, dtype=np.float32)
        if item.subset.flip_aug and rng.random() < 0.5:
            array = array[:, ::-1]
        arrays.append(array / 127.5 - 1.0)
    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous().to(device)


def _noise(latents: torch.Tensor, config: TrainConfig, gen: torch.Generator) -> torch.Tensor:
    noise = torch.randn(latents.shape, generator=gen, device=latents.device)
    if config.noise_offset:
        offset: Any = config.noise_offset
        if config.adaptive_noise_scale:
            mean = latents.mean(dim=(2, 3), keepdim=True).abs()
            offset = (offset + config.adaptive_noise_scale * mean).clamp(min=0)
        noise = noise + offset * torch.randn((*latents.shape[:2], 1, 1), generator=gen, device=latents.device)
    return noise


def diffusion_loss(models: Models, pixels: torch.Tensor, captions: list[str], weights: torch.Tensor,
                   config: TrainConfig, gen: torch.Generator) -> torch.Tensor:
    """sd-scripts' loss for one batch (REFERENCE §7)."""
    scheduler = models.noise_scheduler
    with torch.no_grad():
        latents = models.vae.encode(pixels).latent_dist.sample(gen) * models.vae_scale
    noise = _noise(latents, config, gen)
    timesteps = torch.randint(0, scheduler.config.num_train_timesteps, (latents.shape[0],), generator=gen,
                              device=latents.device)
    noisy = scheduler.add_noise(latents, noise, timesteps)
    with torch.set_grad_enabled(config.train_text_encoder and torch.is_grad_enabled()):
        context = encode_prompts(models, captions, config.clip_skip)
    dtype = next(models.unet.parameters()).dtype
    pred = models.unet(noisy.to(dtype), timesteps, context.to(dtype)).sample
    target = scheduler.get_velocity(latents, noise, timesteps) if models.v_parameterization else noise
    loss = F.mse_loss(pred.float(), target.float(), reduction="none").mean(dim=(1, 2, 3)) * weights
    if config.min_snr_gamma:
        alphas = scheduler.alphas_cumprod.to(latents.device)[timesteps]
        snr = alphas / (1 - alphas)
        clipped = snr.clamp(max=config.min_snr_gamma)
        loss = loss * (clipped / (snr + 1) if models.v_parameterization else clipped / snr)
    return loss.mean()


def step_seed(seed: int, step: int) -> int:
    return (seed * 1_000_003 + step) % (2**63)


def train_step(models: Models, network: AdapterNetwork, optimizer: torch.optim.Optimizer,
               lr_scheduler: Any, batch: list[Item], config: TrainConfig, step: int) -> float:
    """One optimisation step on one batch; every random draw seeded by (seed, step)."""
    device = next(models.unet.parameters()).device
    rng = random.Random(f"{config.seed}-step-{step}")
    captions = [process_caption(item.caption, item.subset, rng) for item in batch]
    pixels = load_pixels(batch, rng, device)
    weights = torch.tensor([config.prior_loss_weight if i.subset.is_reg else 1.0 for i in batch],
                           device=device)
    gen = torch.Generator(device=device).manual_seed(step_seed(config.seed, step))
    # adapter dropout draws from the global generator: fork it so the caller's stream is untouched
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(step_seed(config.seed + 1, step))
        loss = diffusion_loss(models, pixels, captions, weights, config, gen)
        loss.backward()
    if config.max_grad_norm > 0:
        torch.nn.utils.clip_grad_norm_(network.parameters(), config.max_grad_norm)
    optimizer.step()
    lr_scheduler.step()
    optimizer.zero_grad(set_to_none=True)
    if config.scale_weight_norms and isinstance(network, LoRANetwork):
        network.scale_weight_norms(config.scale_weight_norms)
    return float(loss.detach())


def dataset_overrides(config: TrainConfig) -> dict[str, Any]:
    names = ("resolution", "batch_size", "caption_extension", "shuffle_caption", "keep_tokens",
             "caption_dropout_rate", "caption_tag_dropout_rate", "enable_bucket", "min_bucket_reso",
             "max_bucket_reso", "bucket_reso_steps")
    return {name: getattr(config, name) for name in names}


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


@dataclass
class Run:
    """Everything a run holds between steps."""

    dataset: Dataset
    models: Models
    network: AdapterNetwork
    optimizer: torch.optim.Optimizer
    lr_scheduler: Any
    total_steps: int
    steps_per_epoch: int
    metadata: dict[str, Any]


def prepare(dataset_path: Path, model_path: Path, config: TrainConfig, device: torch.device) -> Run:
    dataset = load_dataset(dataset_path, dataset_overrides(config))
    models = load_models(model_path, device, WEIGHT_DTYPES[config.mixed_precision])
    with torch.random.fork_rng(devices=[]):  # the initial down projections come from the run's seed
        torch.manual_seed(config.seed)
        network = create_network(config.network, models.unet, [models.text_encoder],
                                 **config.network_options())
    network.to(device)
    network.apply_to()
    network.train()
    per_epoch = steps_per_epoch(dataset)
    total = config.max_train_epochs * per_epoch if config.max_train_epochs else config.max_train_steps
    optimizer = make_optimizer(config, network)
    metadata = checkpoint.training_metadata(config, dataset, network, model_path, time.time(), total)
    return Run(dataset, models, network, optimizer, make_lr_scheduler(config, optimizer, total), total,
               per_epoch, metadata)


def _save(run: Run, out: Path, stem: str, config: TrainConfig, step: int) -> list[Path]:
    epoch = -(-step // run.steps_per_epoch)
    paths = [checkpoint.save_network_file(out / f"{stem}.safetensors", run.network, config, run.metadata,
                                          step, epoch)]
    if config.save_state:
        paths.append(checkpoint.save_state(out / f"{stem}-state", run.network, run.optimizer,
                                           run.lr_scheduler, step, config))
    return paths


def _due(config: TrainConfig, step: int, per_epoch: int, total: int) -> str | None:
    """The file stem to save after `step`, if any (the final save is made by the caller)."""
    name = config.output_name
    if step >= total:
        return None
    epoch, into_epoch = divmod(step, per_epoch)
    if config.save_every_n_epochs and not into_epoch and epoch % config.save_every_n_epochs == 0:
        return checkpoint.epoch_name(name, epoch)
    if config.save_every_n_steps and step % config.save_every_n_steps == 0:
        return checkpoint.step_name(name, step)
    return None


def train(dataset_path: Path, model_path: Path, out: Path, config: TrainConfig, *, resume: Path | None = None,
          on_step: StepCallback | None = None, device: torch.device | None = None,
          stop_after: int | None = None) -> TrainResult:
    """Train `config.network` on the dataset; write NAME.safetensors (and intermediate saves) to `out`.

    `stop_after` ends the run early at that step, saving NAME-stepN.safetensors and its state
    folder to resume from (a scheduled pause: the LR schedule still spans the whole run).
    """
    config.check()
    device = device or default_device()
    threads, before = cpu_threads(config, device), torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        return _train(dataset_path, model_path, out, config, device, resume, on_step, stop_after)
    finally:
        torch.set_num_threads(before)


def _train(dataset_path: Path, model_path: Path, out: Path, config: TrainConfig, device: torch.device,
           resume: Path | None, on_step: StepCallback | None, stop_after: int | None) -> TrainResult:
    started = time.perf_counter()
    run = prepare(dataset_path, model_path, config, device)
    step = 0
    if resume is not None:
        step = checkpoint.load_state(resume, run.network, run.optimizer, run.lr_scheduler, config)
    result = TrainResult(out / f"{config.output_name}.safetensors", step, 0, run.steps_per_epoch,
                         resumed_from=step, device=str(device))
    out.mkdir(parents=True, exist_ok=True)
    batches: tuple[int, list[list[Item]]] = (-1, [])
    end = min(run.total_steps, stop_after or run.total_steps)
    while step < end:
        epoch, index = divmod(step, run.steps_per_epoch)
        if batches[0] != epoch:
            batches = (epoch, epoch_batches(run.dataset, epoch, config.seed))
        loss = train_step(run.models, run.network, run.optimizer, run.lr_scheduler, batches[1][index],
                          config, step)
        step += 1
        result.losses.append(loss)
        if on_step:
            on_step(step, run.total_steps, loss)
        stem = _due(config, step, run.steps_per_epoch, run.total_steps)
        if stem:
            result.saved += _save(run, out, stem, config, step)
    if step < run.total_steps:
        stem = checkpoint.step_name(config.output_name, step)
        result.output = out / f"{stem}.safetensors"
        result.saved += _save(run, out, stem, replace(config, save_state=True), step)
    else:
        result.saved += _save(run, out, config.output_name, config, step)
    run.network.remove()
    result.steps, result.epochs = step, -(-step // run.steps_per_epoch)
    result.seconds = time.perf_counter() - started
    return result
