"""Benchmark `curate train`'s step against a plain diffusers-style LoRA training loop, in one run.

    python bench/train_bench.py --resolution 128 --batch-size 4 --steps 30 --rounds 3

Both sides train the tiny SD-shaped model (`fixtures.tiny_sd`) on the same 8 captioned
images, same batch, resolution, rank/alpha, AdamW (lr 1e-4, weight decay 0.01), constant LR,
grad-norm clip 1.0, UNet only, float32, the same CPU thread count. The baseline is written
the way diffusers' examples/text_to_image/train_text_to_image_lora.py trains: each image
decoded, resized, centre-cropped and its caption tokenised when the batch is drawn (the script's
`with_transform`), peft `LoraConfig` added to the UNet with `unet.add_adapter`, VAE latents x
scaling factor, noise, uniform timesteps, `add_noise`, MSE on the noise, backward, clip,
step. It runs twice: on the same layers curate's LoRA adapts (every Linear / 1x1 conv in the
Transformer2DModel blocks: the like-for-like comparison the ratio is taken on) and on the
script's own `to_q/to_k/to_v/to_out.0`. Each variant runs in a fresh process, rounds
alternating, so peak RSS (`resource.getrusage`) is its own; step time is the median over all
rounds after warm-up steps. Prints a markdown table.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import platform
import random
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

try:
    import fixtures  # noqa: F401  (run with PYTHONPATH=.)
except ImportError:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

PHOTOS = ("astronaut", "coffee", "chelsea", "rocket")
DIFFUSERS_TARGETS = ["to_k", "to_q", "to_v", "to_out.0"]  # train_text_to_image_lora.py
VARIANTS = ("curate", "peft-same-layers", "peft-attention-only")


def rss_mib() -> float:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def peak_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def build_inputs(root: Path) -> tuple[Path, Path]:
    """The tiny model and 8 captioned 256 px images (4 photos, 2 crops each) in `root`."""
    import skimage.data
    from PIL import Image

    from fixtures.tiny_sd import build_tiny_sd

    model = build_tiny_sd(root / "model")
    folder = root / "data" / "1_sks"
    folder.mkdir(parents=True)
    for name in PHOTOS:
        image = Image.fromarray(getattr(skimage.data, name)()).convert("RGB")
        side = min(image.size)
        for i, box in enumerate(((0, 0, side, side), (image.width - side, image.height - side, *image.size))):
            image.crop(box).resize((256, 256)).save(folder / f"{name}{i}.png")
            (folder / f"{name}{i}.txt").write_text(f"sks, {name}, photo", encoding="utf-8")
    return model, root / "data"


def timed_steps(step: Any, steps: int, warmup: int) -> tuple[list[float], float, float]:
    """Run `step(k)` warmup + steps times; (timed step seconds, RSS before, peak RSS after)."""
    before = rss_mib()
    times = []
    for k in range(warmup + steps):
        started = time.perf_counter()
        step(k)
        if k >= warmup:
            times.append(time.perf_counter() - started)
    return times, before, peak_mib()


def run_curate(args: argparse.Namespace, model: Path, data: Path) -> Any:
    import torch

    from curate.trainer import loop
    from curate.trainer.config import TrainConfig
    from curate.trainer.data import epoch_batches

    config = TrainConfig(resolution=args.resolution, batch_size=args.batch_size, enable_bucket=False,
                         network_dim=args.rank, network_alpha=float(args.rank), train_text_encoder=False,
                         optimizer="adamw", learning_rate=1e-4, lr_scheduler="constant",
                         max_train_steps=args.steps + args.warmup, seed=1)
    run = loop.prepare(data, model, config, torch.device("cpu"))
    batches = [b for epoch in range(args.steps + args.warmup) for b in epoch_batches(run.dataset, epoch, 1)]

    def step(k: int) -> None:
        loop.train_step(run, [batches[k]], config, k)

    return step, sum(p.numel() for p in run.network.parameters())


def curate_layer_names(unet: Any) -> list[str]:
    """The UNet module paths curate's LoRA adapts, for the like-for-like peft baseline."""
    from curate.trainer.networks import create_network

    network = create_network("lora", unet, [], dim=4, train_text_encoder=False)
    ids = {id(adapter.layer) for adapter in network.adapters()}
    return [name for name, module in unet.named_modules() if id(module) in ids]


def load_pixels(images: list[Any], resolution: int) -> Any:
    """diffusers' train transforms without torchvision: resize, centre crop, [-1, 1], NCHW."""
    import numpy as np
    import torch
    from PIL import Image

    arrays = []
    for image in images:
        scale = resolution / min(image.size)
        resized = image.resize((round(image.width * scale), round(image.height * scale)), Image.BILINEAR)
        left, top = (resized.width - resolution) // 2, (resized.height - resolution) // 2
        crop = resized.crop((left, top, left + resolution, top + resolution))
        arrays.append(np.asarray(crop, dtype=np.float32) / 127.5 - 1.0)
    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()


def run_diffusers(args: argparse.Namespace, model: Path, data: Path, same_layers: bool) -> Any:
    import torch
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from peft import LoraConfig
    from PIL import Image
    from torch.nn import functional as F
    from transformers import CLIPTextModel, CLIPTokenizer

    unet = UNet2DConditionModel.from_pretrained(model / "unet")
    vae = AutoencoderKL.from_pretrained(model / "vae")
    text_encoder = CLIPTextModel.from_pretrained(model / "text_encoder")
    tokenizer = CLIPTokenizer.from_pretrained(model / "tokenizer")
    noise_scheduler = DDPMScheduler.from_pretrained(model / "scheduler")
    for module in (unet, vae, text_encoder):
        module.requires_grad_(False)
    targets = curate_layer_names(unet) if same_layers else DIFFUSERS_TARGETS
    unet.add_adapter(LoraConfig(r=args.rank, lora_alpha=args.rank, init_lora_weights="gaussian",
                                target_modules=targets))
    params = [p for p in unet.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-4, betas=(0.9, 0.999), weight_decay=1e-2, eps=1e-8)
    lr_scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda _: 1.0)
    files = sorted((data / "1_sks").glob("*.png"))
    captions = [f.with_suffix(".txt").read_text(encoding="utf-8") for f in files]
    order = random.Random(1)
    unet.train()

    def step(_k: int) -> None:
        # the script's dataset decodes and transforms each image, and tokenises its caption, on access
        batch = order.sample(range(len(files)), args.batch_size)
        pixels = load_pixels([Image.open(files[i]).convert("RGB") for i in batch], args.resolution)
        ids = tokenizer([captions[i] for i in batch], padding="max_length", truncation=True,
                        max_length=tokenizer.model_max_length, return_tensors="pt").input_ids
        latents = vae.encode(pixels).latent_dist.sample() * vae.config.scaling_factor
        noise = torch.randn_like(latents)
        timesteps = torch.randint(0, noise_scheduler.config.num_train_timesteps, (latents.shape[0],))
        noisy = noise_scheduler.add_noise(latents, noise, timesteps)
        encoder_hidden_states = text_encoder(ids, return_dict=False)[0]
        pred = unet(noisy, timesteps, encoder_hidden_states, return_dict=False)[0]
        loss = F.mse_loss(pred.float(), noise.float(), reduction="mean")
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        lr_scheduler.step()
        optimizer.zero_grad()

    return step, sum(p.numel() for p in params)


def child(variant: str, args: argparse.Namespace, model: Path, data: Path, queue: Any) -> None:
    import torch
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()

    from curate.trainer.config import TrainConfig
    from curate.trainer.loop import cpu_threads

    threads = cpu_threads(TrainConfig(threads=args.threads), torch.device("cpu"))
    if threads:
        torch.set_num_threads(threads)
    torch.manual_seed(1)
    if variant == "curate":
        step, params = run_curate(args, model, data)
    else:
        step, params = run_diffusers(args, model, data, same_layers=variant == "peft-same-layers")
    times, before, peak = timed_steps(step, args.steps, args.warmup)
    queue.put({"times": times, "rss_before": before, "peak": peak, "params": params,
               "threads": torch.get_num_threads()})


def measure(args: argparse.Namespace, model: Path, data: Path) -> dict[str, dict[str, Any]]:
    """Every variant in its own fresh process, `rounds` times, alternating."""
    context = multiprocessing.get_context("spawn")
    results: dict[str, dict[str, Any]] = {v: {"times": [], "peaks": [], "growth": []} for v in VARIANTS}
    for _ in range(args.rounds):
        for variant in VARIANTS:
            queue = context.Queue()
            process = context.Process(target=child, args=(variant, args, model, data, queue))
            process.start()
            out = queue.get()
            process.join()
            entry = results[variant]
            entry["times"] += out["times"]
            entry["peaks"].append(out["peak"])
            entry["growth"].append(out["peak"] - out["rss_before"])
            entry["params"], entry["threads"] = out["params"], out["threads"]
    return results


def report(args: argparse.Namespace, results: dict[str, dict[str, Any]]) -> None:
    import torch

    base = results["peft-same-layers"]
    base_step, base_peak = statistics.median(base["times"]), statistics.median(base["peaks"])
    print(f"tiny SD (fixtures.tiny_sd), {args.resolution} px, batch {args.batch_size}, rank {args.rank}, "
          f"{args.steps} timed steps after {args.warmup} warm-up x {args.rounds} rounds, "
          f"{base['threads']} thread(s); {platform.processor() or platform.machine()}, "
          f"nproc {os.cpu_count()}, Python {platform.python_version()}, torch {torch.__version__}\n")
    print("| loop | trained params | step (median) | step ratio | peak RSS | RSS growth in steps | "
          "peak ratio |")
    print("|---|---|---|---|---|---|---|")
    for variant in VARIANTS:
        entry = results[variant]
        step, peak = statistics.median(entry["times"]), statistics.median(entry["peaks"])
        print(f"| {variant} | {entry['params']:,} | {step * 1000:.1f} ms | {step / base_step:.3f} | "
              f"{peak:.0f} MiB | {statistics.median(entry['growth']):.0f} MiB | {peak / base_peak:.3f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--resolution", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--rank", type=int, default=4)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None, help="default: curate's (1 on <= 2 cores)")
    args = parser.parse_args()
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        model, data = build_inputs(Path(tmp))
        results = measure(args, model, data)
    report(args, results)
    print(f"\n(bench ran {time.perf_counter() - started:.0f} s)")


if __name__ == "__main__":
    main()
