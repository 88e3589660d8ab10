"""The training loop: a frozen SD model, an adapter network, sd-scripts' noise and loss (REFERENCE §7).

One optimiser step takes gradient_accumulation_steps batches on each of the W launched
processes (trainer/distributed.py), averages the gradients, clips them and steps. Every random
draw of a batch comes from generators seeded by (seed, step, batch of the step, rank), and each
epoch's batch order from (seed, epoch), so a run stopped and resumed from a state folder repeats
exactly what an uninterrupted run does. The loss of each step is checked before the optimiser
moves: a NaN or infinite loss stops the run with the last good weights saved. Ctrl-C finishes
the current step, saves a resumable state and returns; a second Ctrl-C stops at once.
"""

from __future__ import annotations

import contextlib
import hashlib
import math
import os
import random
import signal
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

from curate.atomic import atomic_write_text
from curate.errors import CurateError
from curate.trainer import checkpoint
from curate.trainer.config import TrainConfig, to_toml
from curate.trainer.data import Dataset, Item, epoch_batches, load_dataset, process_caption, steps_per_epoch
from curate.trainer.distributed import Dist, init_distributed, rank_batches
from curate.trainer.latents import LatentSource, load_pixels
from curate.trainer.loading import loading
from curate.trainer.model import Models, load_models, prepare_text
from curate.trainer.networks import AdapterNetwork, LoRANetwork, create_network
from curate.trainer.noise import diffusion_loss, prepare_schedule, size_ids
from curate.trainer.optim import make_lr_scheduler, make_optimizer
from curate.trainer.watch import Watch

__all__ = ["Run", "TrainResult", "diffusion_loss", "epoch_batches", "load_pixels", "make_lr_scheduler",
           "prepare", "train", "train_step"]

WEIGHT_DTYPES = {"no": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
# (step, total steps, loss, {"loss/average", "lr/unet", "lr/d*lr/unet", ...} as TensorBoard logs them)
StepCallback = Callable[[int, int, float, dict[str, float]], None]


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
    processes: int = 1
    network_digests: list[str] = field(default_factory=list)  # per process: equal when the ranks agree
    latents_encoded: int = 0  # images the VAE encoded for the latent cache (0: all read from disk)
    samples: list[Path] = field(default_factory=list)  # sample images written during the run
    interrupted: bool = False  # Ctrl-C: `output` is the step save, its state folder beside it
    skipped: list[tuple[str, str]] = field(default_factory=list)  # dataset files left out, why

    def as_dict(self) -> dict[str, Any]:
        done = self.steps - self.resumed_from
        return {"output": str(self.output), "steps": self.steps, "epochs": self.epochs,
                "steps_per_epoch": self.steps_per_epoch, "resumed_from": self.resumed_from,
                "first_loss": self.losses[0] if self.losses else None,
                "last_loss": self.losses[-1] if self.losses else None, "saved": [str(p) for p in self.saved],
                "seconds": round(self.seconds, 3), "device": self.device, "processes": self.processes,
                "interrupted": self.interrupted, "network_digests": self.network_digests,
                "latents_encoded": self.latents_encoded, "samples": [str(p) for p in self.samples],
                "skipped": [{"file": f, "reason": r} for f, r in self.skipped],
                "seconds_per_step": round(self.seconds / done, 4) if done else None}


def cpu_threads(config: TrainConfig, device: torch.device) -> int | None:
    """The intra-op thread count to train with on CPU (None: leave torch's setting alone)."""
    if device.type != "cpu" or config.threads == 0:
        return None
    if config.threads is not None:
        return config.threads
    return 1 if (os.cpu_count() or 1) <= 2 else None


def step_seed(seed: int, step: int) -> int:
    return (seed * 1_000_003 + step) % (2**63)


def _batch_seed(seed: int, step: int, micro: int, rank: int) -> int:
    if micro == 0 and rank == 0:
        return step_seed(seed, step)
    return random.Random(f"{seed}-{step}-{micro}-{rank}").getrandbits(63)


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
    latents: LatentSource
    dist: Dist = field(default_factory=Dist)
    scaler: Any = None  # torch.amp.GradScaler for fp16 on CUDA
    paths: tuple[Path, Path] = (Path(), Path())  # the dataset and base model trained on

    @property
    def device(self) -> torch.device:
        return next(self.models.unet.parameters()).device


def _autocast(config: TrainConfig, device: torch.device) -> contextlib.AbstractContextManager[Any]:
    if config.mixed_precision == "no":
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=WEIGHT_DTYPES[config.mixed_precision])


def _batch_loss(run: Run, batch: list[Item], config: TrainConfig, seed: int, epoch: int = 1) -> torch.Tensor:
    device = run.device
    rng = random.Random(seed)
    captions = [process_caption(item.caption, item.subset, rng, epoch) for item in batch]
    weights = torch.tensor([config.prior_loss_weight if i.subset.is_reg else 1.0 for i in batch],
                           device=device)
    gen = torch.Generator(device=device).manual_seed(seed)
    latents, flips, masks = run.latents.batch_with_masks(batch, rng, gen)
    time_ids = size_ids(batch, flips, device) if run.models.sdxl else None
    with _autocast(config, device):
        return diffusion_loss(run.models, latents, captions, weights, config, gen, time_ids, masks)


def train_step(run: Run, batches: list[list[Item]], config: TrainConfig, step: int) -> float:
    """One optimisation step over this process's batches of the step. Returns the loss averaged
    over batches and processes; when it is not finite the weights are left untouched."""
    losses = []
    device = run.device
    for micro, batch in enumerate(batches):
        seed = _batch_seed(config.seed, step, micro, run.dist.rank)
        # adapter dropout draws from the global generator: fork it so the caller's stream is untouched
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            torch.manual_seed(step_seed(config.seed + 1, step) ^ micro ^ (run.dist.rank << 20))
            # sd-scripts' current_epoch counts from 1 (caption_dropout_every_n_epochs reads it)
            loss = _batch_loss(run, batch, config, seed, step // run.steps_per_epoch + 1) / len(batches)
            (run.scaler.scale(loss) if run.scaler else loss).backward()
        losses.append(float(loss.detach()) * len(batches))
    mean = run.dist.mean(sum(losses) / len(losses), device)
    if not math.isfinite(mean):
        run.optimizer.zero_grad(set_to_none=True)
        return mean
    if run.scaler:
        run.scaler.unscale_(run.optimizer)
    run.dist.average_gradients(run.network.parameters())
    if config.max_grad_norm > 0:
        torch.nn.utils.clip_grad_norm_(run.network.parameters(), config.max_grad_norm)
    if run.scaler:
        run.scaler.step(run.optimizer)
        run.scaler.update()
    else:
        run.optimizer.step()
    run.lr_scheduler.step()
    run.optimizer.zero_grad(set_to_none=True)
    if config.scale_weight_norms and isinstance(run.network, LoRANetwork):
        run.network.scale_weight_norms(config.scale_weight_norms)
    return mean


def dataset_overrides(config: TrainConfig) -> dict[str, Any]:
    names = ("resolution", "batch_size", "caption_extension", "shuffle_caption", "keep_tokens",
             "caption_dropout_rate", "caption_tag_dropout_rate", "caption_dropout_every_n_epochs",
             "enable_bucket", "min_bucket_reso", "max_bucket_reso", "bucket_reso_steps")
    return {name: getattr(config, name) for name in names}


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _load(model_path: Path, config: TrainConfig, device: torch.device) -> Models:
    if config.mixed_precision == "fp16" and device.type != "cuda":
        raise CurateError("mixed_precision fp16 needs a CUDA GPU; use bf16 or no on this machine")
    models = load_models(model_path, device, WEIGHT_DTYPES[config.mixed_precision],
                         model_config=config.model_config, allow_pickle=config.allow_pickle)
    if config.v_parameterization is not None:
        models.v_parameterization = config.v_parameterization
    prepare_schedule(models.noise_scheduler, config.zero_terminal_snr)
    if config.gradient_checkpointing:
        models.unet.enable_gradient_checkpointing()
        if config.train_text_encoder:
            for encoder in models.text_encoders:  # transformers 5 renamed the switch
                getattr(encoder, "activation_checkpointing_enable", encoder.gradient_checkpointing_enable)()
    return models


def plan_steps(dataset: Dataset, config: TrainConfig, dist: Dist) -> tuple[int, int]:
    """(optimiser steps per epoch, total steps): each process's share of the epoch's batches,
    grouped by gradient_accumulation_steps."""
    per_rank = -(-steps_per_epoch(dataset) // dist.world)
    per_epoch = -(-per_rank // config.gradient_accumulation_steps)
    total = config.max_train_epochs * per_epoch if config.max_train_epochs else config.max_train_steps
    return per_epoch, total


def prepare(dataset_path: Path, model_path: Path, config: TrainConfig, device: torch.device,
            dist: Dist | None = None) -> Run:
    dist = dist or Dist()
    reg = Path(config.reg_data_dir).expanduser() if config.reg_data_dir else None
    dataset = load_dataset(dataset_path, dataset_overrides(config), reg)
    models = _load(model_path, config, device)
    prepare_text(models, dataset, dataset_path, config)
    with torch.random.fork_rng(devices=[]):  # the initial down projections come from the run's seed
        torch.manual_seed(config.seed)
        network = create_network(config.network, models.unet, models.text_encoders,
                                 **config.network_options())
    network.to(device)
    network.apply_to()
    network.train()
    per_epoch, total = plan_steps(dataset, config, dist)
    optimizer = make_optimizer(config, network)
    # SD 2.x's OpenCLIP text encoder is 1024 wide, SD 1.x's CLIP-L 768
    v2 = not models.sdxl and getattr(models.text_encoder.config, "hidden_size", 768) == 1024
    metadata = checkpoint.training_metadata(config, dataset, network, model_path, time.time(), total, v2=v2,
                                            v_parameterization=models.v_parameterization, sdxl=models.sdxl,
                                            processes=dist.world)
    scaler = torch.amp.GradScaler("cuda") if config.mixed_precision == "fp16" else None
    latents = LatentSource(models, config.cache_latents_to_disk, config.seed, write=dist.is_main)
    return Run(dataset, models, network, optimizer, make_lr_scheduler(config, optimizer, total), total,
               per_epoch, metadata, latents, dist, scaler, (dataset_path.absolute(), model_path.absolute()))


def _save(run: Run, out: Path, stem: str, config: TrainConfig, step: int) -> list[Path]:
    """Rank 0 writes; the others wait, so no process runs ahead of a save it may read."""
    paths = []
    if run.dist.is_main:
        epoch = -(-step // run.steps_per_epoch)
        paths.append(checkpoint.save_network_file(out / f"{stem}.safetensors", run.network, config,
                                                  run.metadata, step, epoch))
        if config.save_state:
            paths.append(checkpoint.save_state(out / f"{stem}-state", run.network, run.optimizer,
                                               run.lr_scheduler, step, config, run.dist.world))
    run.dist.barrier()
    return paths


def _write_config(run: Run, out: Path, config: TrainConfig, resume: Path | None) -> Path:
    """The resolved settings beside the weights: `curate train --config` reads the file back."""
    header = (f"written by curate train at {time.strftime('%Y-%m-%d %H:%M:%S')}\n"
              f"dataset: {run.paths[0]}\nmodel: {run.paths[1]}\n"
              f"processes: {run.dist.world}; resumed from: {resume or 'no'}")
    path = out / f"{config.output_name}-config.toml"
    atomic_write_text(path, to_toml(config, header))
    return path


def network_digest(network: AdapterNetwork) -> str:
    """sha256 over the network's trained tensors, in name order (to compare processes' copies)."""
    digest = hashlib.sha256()
    for name, tensor in sorted(network.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().float().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


class _Interrupt:
    """Ctrl-C sets a flag the loop reads after each step; a second Ctrl-C raises at once."""

    def __init__(self) -> None:
        self.hit = False
        self._previous: Any = None

    def _handle(self, _signum: int, _frame: Any) -> None:
        if self.hit:
            raise KeyboardInterrupt
        self.hit = True

    @contextlib.contextmanager
    def installed(self) -> Iterator[_Interrupt]:
        if threading.current_thread() is not threading.main_thread():
            yield self  # signals reach the main thread only; a library caller elsewhere keeps its own
            return
        self._previous = signal.signal(signal.SIGINT, self._handle)
        try:
            yield self
        finally:
            signal.signal(signal.SIGINT, self._previous)


def train(dataset_path: Path, model_path: Path, out: Path, config: TrainConfig, *, resume: Path | None = None,
          on_step: StepCallback | None = None, device: torch.device | None = None,
          stop_after: int | None = None, on_cache: Callable[[int, int], None] | None = None) -> TrainResult:
    """Train `config.network` on the dataset; write NAME.safetensors (and intermediate saves) to `out`.

    `stop_after` ends the run early at that step, saving NAME-stepN.safetensors and its state
    folder to resume from (a scheduled pause: the LR schedule still spans the whole run). Under
    a multi-process launcher the processes train data-parallel and rank 0 writes the files.
    """
    config.check()
    dist = init_distributed()
    device = dist.device or device or default_device()
    threads, before = cpu_threads(config, device), torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        run = prepare(dataset_path, model_path, config, device, dist)
        encoded = 0
        if config.cache_latents or config.cache_latents_to_disk:
            encoded = run.latents.cache(run.dataset, on_cache)
        watch = Watch(config, out, dist.is_main)
        try:
            with _Interrupt().installed() as interrupt:
                result = _train(run, out, config, resume, on_step, stop_after, interrupt, watch)
        finally:
            watch.close()
        result.samples = watch.samples
        result.latents_encoded = encoded
        return result
    finally:
        torch.set_num_threads(before)
        dist.close()


def _epoch_plan(run: Run, config: TrainConfig, epoch: int) -> list[list[list[Item]]]:
    """This process's batches of the epoch, grouped into optimiser steps."""
    mine = rank_batches(epoch_batches(run.dataset, epoch, config.seed), run.dist)
    size = config.gradient_accumulation_steps
    return [mine[i:i + size] for i in range(0, len(mine), size)]


def _stop(run: Run, out: Path, config: TrainConfig, step: int, result: TrainResult) -> None:
    stem = checkpoint.step_name(config.output_name, step)
    result.output = out / f"{stem}.safetensors"
    result.saved += _save(run, out, stem, replace(config, save_state=True), step)


def _train(run: Run, out: Path, config: TrainConfig, resume: Path | None, on_step: StepCallback | None,
           stop_after: int | None, interrupt: _Interrupt, watch: Watch) -> TrainResult:
    from curate.trainer.saves import due, expired, remove_save

    started = time.perf_counter()
    step = 0
    if resume is not None:
        with loading(resume, "training state"):  # a state folder is user data: pickles, JSON, tensors
            step = checkpoint.load_state(resume, run.network, run.optimizer, run.lr_scheduler, config,
                                         run.dist.world)
    result = TrainResult(out / f"{config.output_name}.safetensors", step, 0, run.steps_per_epoch,
                         resumed_from=step, device=str(run.device), processes=run.dist.world,
                         skipped=list(run.dataset.skipped))
    out.mkdir(parents=True, exist_ok=True)
    if run.dist.is_main:
        result.saved.append(_write_config(run, out, config, resume))
    plan: tuple[int, list[list[list[Item]]]] = (-1, [])
    end = min(run.total_steps, stop_after or run.total_steps)
    while step < end:
        epoch, index = divmod(step, run.steps_per_epoch)
        if plan[0] != epoch:
            plan = (epoch, _epoch_plan(run, config, epoch))
        loss = train_step(run, plan[1][index], config, step)
        if not math.isfinite(loss):
            _stop(run, out, config, step, result)
            raise CurateError(f"loss became {loss} at step {step + 1}: training stopped. The last good "
                              f"weights are {result.output} (resume from its -state folder); lower the "
                              "learning rate or use mixed_precision bf16/no")
        step += 1
        result.losses.append(loss)
        watch.after_step(run, step, loss)
        if on_step:
            on_step(step, run.total_steps, loss, watch.values)
        stem = due(config, step, run.steps_per_epoch, run.total_steps)
        if stem:
            result.saved += _save(run, out, stem, config, step)
            if run.dist.is_main:
                for old in expired(config, step, run.steps_per_epoch):
                    remove_save(out, old)
        if run.dist.any(interrupt.hit, run.device) and step < run.total_steps:
            result.interrupted = True
            break
    if step < run.total_steps:
        _stop(run, out, config, step, result)
    else:
        result.saved += _save(run, out, config.output_name, config, step)
    result.network_digests = run.dist.gather(network_digest(run.network))
    if len(set(result.network_digests)) > 1:
        raise CurateError(f"the {run.dist.world} processes ended with different weights "
                          f"({', '.join(d[:12] for d in result.network_digests)}); please report this")
    run.network.remove()
    result.steps, result.epochs = step, -(-step // run.steps_per_epoch)
    result.seconds = time.perf_counter() - started
    return result
