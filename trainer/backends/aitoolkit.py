"""The ai-toolkit backend: the same TrainConfig as an ostris/ai-toolkit job (`python run.py JOB`).

ai-toolkit trains the model families the builtin trainer does not (FLUX.1/FLUX.2, Qwen-Image,
Z-Image, Wan, SD3, Chroma, Lumina 2) from one job file: `job: extension`, a `config.name`, and
one `sd_trainer` process with `network`, `save`, `datasets`, `train`, `model` and `sample`
tables, read by its toolkit/config_modules.py classes (`NetworkConfig(**network)`, ...). Those
classes take every key with `kwargs.get`, so a misspelled key is ignored without a word: this
module writes only keys they read, which tests/test_trainer_aitoolkit.py checks against
ai-toolkit's own source when a checkout is at hand.

The plan reads the Kohya dataset with curate.kohya (dataset.toml or `N_name` folders): each
subset becomes one `datasets` entry (folder_path, num_repeats, caption_ext, keep_tokens,
shuffle_tokens, alpha_mask, is_reg, class tokens as `default_caption` for an image without a
caption file, as sd-scripts uses them). ai-toolkit counts steps, not epochs: max_train_epochs
becomes steps from the dataset's size. The family comes from the base model: a diffusers folder's
model_index.json, or a Hub repo id ai-toolkit downloads itself (known ids only). Every set
TrainConfig key that ai-toolkit cannot express becomes a warning in the plan.
"""

from __future__ import annotations

import json
import math
import subprocess
from pathlib import Path
from typing import Any

from curate import kohya
from curate.atomic import atomic_write_text
from curate.errors import CurateError
from curate.trainer.backends import Plan, RunResult, StepCallback, changed_settings
from curate.trainer.backends.captions import tag_captions
from curate.trainer.config import TrainConfig

NAME = "aitoolkit"
JOB_FILE = "ai-toolkit-job.yaml"
# model_index.json `_class_name` -> ai-toolkit `model.arch` (its ModelArch names and the
# `arch = "..."` of extensions_built_in/diffusion_models/*)
PIPELINES = {
    "FluxPipeline": "flux", "Flux2Pipeline": "flux2", "QwenImagePipeline": "qwen_image",
    "ZImagePipeline": "zimage", "WanPipeline": "wan21", "StableDiffusion3Pipeline": "sd3",
    "ChromaPipeline": "chroma", "Lumina2Pipeline": "lumina2", "Lumina2Text2ImgPipeline": "lumina2",
    "StableDiffusionXLPipeline": "sdxl", "StableDiffusionPipeline": "sd1",
}
REPOS = {  # Hub ids ai-toolkit's example configs train, lower case
    "black-forest-labs/flux.1-dev": "flux", "black-forest-labs/flux.1-schnell": "flux",
    "black-forest-labs/flux.2-dev": "flux2", "qwen/qwen-image": "qwen_image",
    "tongyi-mai/z-image-turbo": "zimage", "tongyi-mai/z-image": "zimage",
    "wan-ai/wan2.1-t2v-1.3b-diffusers": "wan21", "wan-ai/wan2.1-t2v-14b-diffusers": "wan21",
    "stabilityai/stable-diffusion-3.5-large": "sd3", "stabilityai/stable-diffusion-3.5-medium": "sd3",
    "lodestones/chroma": "chroma", "alpha-vllm/lumina-image-2.0": "lumina2",
    "stabilityai/stable-diffusion-xl-base-1.0": "sdxl",
}
FLOW = frozenset({"flux", "flux2", "qwen_image", "zimage", "wan21", "sd3", "chroma", "lumina2"})
OPTIMIZERS = {"adamw": "adamw", "adamw8bit": "adamw8bit", "prodigy": "prodigy",
              # "dadaptation" is ai-toolkit's DAdaptAdam: its "dadaptationadam" builds DAdaptLion
              # (toolkit/optimizer.py), so the older name is the faithful one
              "dadaptadam": "dadaptation"}
PRECISION = {"no": "fp32", "fp16": "fp16", "bf16": "bf16", "float": "float32"}
SAVE_DTYPE = {"fp16": "float16", "bf16": "bf16", "float": "float32"}
# read below; the rest of TrainConfig warns when set (unknown_settings)
HANDLED = frozenset({
    "network", "network_dim", "network_alpha", "network_dropout", "conv_dim", "conv_alpha", "train_unet",
    "train_text_encoder", "learning_rate", "unet_lr", "text_encoder_lr", "optimizer", "optimizer_args",
    "lr_scheduler", "lr_warmup_steps", "max_grad_norm", "gradient_accumulation_steps",
    "gradient_checkpointing", "max_train_steps", "max_train_epochs", "seed", "noise_offset",
    "min_snr_gamma", "cache_latents", "cache_latents_to_disk", "output_name", "save_every_n_steps",
    "save_last_n_steps", "save_precision", "mixed_precision", "sample_prompts", "sample_every_n_steps",
    "resolution", "batch_size", "caption_extension", "shuffle_caption", "keep_tokens",
    "caption_dropout_rate", "enable_bucket", "min_bucket_reso", "max_bucket_reso", "bucket_reso_steps",
    "version", "threads", "backend", "model_config", "allow_pickle", "logging_dir"})


def model_arch(model: Path) -> tuple[str, str]:
    """ai-toolkit's arch for the base model, and its `name_or_path`."""
    text = str(model)
    if not model.exists():
        arch = REPOS.get(text.lower())
        if arch is None:
            known = ", ".join(sorted({v for v in REPOS.values()}))
            raise CurateError(f"{text}: not a folder here nor a Hub repo ai-toolkit is known to train; "
                              f"pass a diffusers folder of one of {known}, or one of its repo ids "
                              f"(e.g. black-forest-labs/FLUX.1-dev)")
        return arch, text
    index = model / "model_index.json"
    if not index.is_file():
        raise CurateError(f"{model}: ai-toolkit loads diffusers folders (with model_index.json) or Hub "
                          "repos; convert a single-file checkpoint first or name the repo id")
    try:
        name = json.loads(index.read_text(encoding="utf-8")).get("_class_name", "")
    except (OSError, ValueError, AttributeError) as exc:
        raise CurateError(f"{index}: cannot be read ({exc}); re-download the model") from exc
    if name not in PIPELINES:
        raise CurateError(f"{model}: a {name or 'unnamed'} pipeline, which this backend does not map to an "
                          f"ai-toolkit model; known: {', '.join(sorted(PIPELINES))}")
    arch = PIPELINES[name]
    if arch == "sd1" and (model / "unet" / "config.json").is_file():
        unet = json.loads((model / "unet" / "config.json").read_text(encoding="utf-8"))
        arch = "sd2" if unet.get("cross_attention_dim") == 1024 else "sd1"
    return arch, str(model.absolute())


def read_dataset(dataset: Path) -> kohya.DatasetConfig:
    toml = dataset if dataset.is_file() else dataset / kohya.DATASET_TOML
    if toml.is_file():
        data = kohya.read_toml(toml)
        if data.unreadable:
            raise CurateError(f"{toml}: {data.problems[0].problem}; {data.problems[0].fix}")
    elif dataset.is_dir():
        data = kohya.read_project(dataset)
    else:
        raise CurateError(f"{dataset}: no such dataset folder or dataset.toml")
    if not any(not s.is_reg for s in data.subsets):
        raise CurateError(f"{dataset}: no training images (a dataset.toml or N_name subfolders, e.g. 10_sks)")
    return data


def datasets(data: kohya.DatasetConfig, config: TrainConfig, cache: bool) -> list[dict[str, Any]]:
    """One ai-toolkit `datasets` entry per Kohya subset (its DatasetConfig keys)."""
    entries = []
    for subset in data.subsets:
        settings = next(d.settings for d in data.datasets if subset in d.subsets)
        resolution = config.resolution or settings.get("resolution", 512)
        ext = config.caption_extension or subset.read_extension()
        entry: dict[str, Any] = {
            "folder_path": str(subset.image_dir), "caption_ext": ext.lstrip("."),
            "num_repeats": subset.num_repeats, "resolution": _sides(resolution),
            "shuffle_tokens": bool(_pick(config.shuffle_caption, subset.shuffle_caption)),
            "keep_tokens": int(_pick(config.keep_tokens, subset.keep_tokens)),
            "caption_dropout_rate": float(_pick(config.caption_dropout_rate, subset.caption_dropout_rate)),
            "cache_latents_to_disk": cache, "is_reg": subset.is_reg, "alpha_mask": subset.alpha_mask}
        if subset.class_tokens:
            entry["default_caption"] = subset.class_tokens
        entries.append(entry)
    return entries


def _pick(config_value: Any, subset_value: Any) -> Any:
    return subset_value if config_value is None else config_value


def _sides(resolution: Any) -> list[int]:
    """ai-toolkit buckets around one side length per entry; sd-scripts' [w, h] -> its mean."""
    if isinstance(resolution, list | tuple):
        return [int(math.sqrt(resolution[0] * resolution[1]))]
    return [int(resolution)]


def steps(data: kohya.DatasetConfig, config: TrainConfig, batch: int, notes: list[str]) -> int:
    if not config.max_train_epochs:
        return config.max_train_steps
    images = sum(_count(s.image_dir) * s.num_repeats for s in data.subsets if not s.is_reg)
    per_epoch = max(1, math.ceil(images / batch))
    notes.append(f"max_train_epochs {config.max_train_epochs} = {per_epoch * config.max_train_epochs} steps "
                 f"({images} images x repeats, batch {batch}); ai-toolkit counts steps")
    return per_epoch * config.max_train_epochs


def _count(folder: Path) -> int:
    try:
        return sum(1 for p in folder.iterdir() if p.is_file() and kohya.sd_image(p.name))
    except OSError:
        return 0


def network(config: TrainConfig) -> dict[str, Any]:
    if config.network not in ("lora", "lokr"):
        raise CurateError(f"network {config.network!r}: ai-toolkit trains lora and lokr networks "
                          "(toolkit/config_modules.py NetworkType); use --backend builtin or kohya for it")
    net: dict[str, Any] = {"type": config.network, "linear": config.network_dim,
                           "linear_alpha": config.network_alpha}
    if config.conv_dim:  # sd-scripts' unset conv_alpha is 1.0 (networks/lora.py)
        net["conv"] = config.conv_dim
        net["conv_alpha"] = config.conv_alpha if config.conv_alpha is not None else 1.0
    if config.network_dropout:
        net["dropout"] = config.network_dropout
    return net


def schedule(config: TrainConfig, warnings: list[str]) -> tuple[str, dict[str, Any]]:
    """sd-scripts' lr_scheduler as ai-toolkit's (toolkit/scheduler.py); its own total_iters = steps."""
    name, warmup = config.lr_scheduler, config.lr_warmup_steps
    if name == "constant":
        return ("constant_with_warmup", {"num_warmup_steps": warmup}) if warmup else ("constant", {})
    if name == "constant_with_warmup":
        return "constant_with_warmup", {"num_warmup_steps": warmup}
    if warmup:
        warnings.append(f"lr_warmup_steps = {warmup}: ai-toolkit's {name} schedule has no warm-up; "
                        "it starts at the full learning rate")
    if name == "cosine":
        return "cosine", {}
    if name == "linear":  # torch's LinearLR decays to 0 only with these (its defaults rise to 1)
        return "linear", {"start_factor": 1.0, "end_factor": 0.0}
    warnings.append(f"lr_scheduler = {name!r} has no ai-toolkit equivalent: cosine is used")
    return "cosine", {}


def job(data: kohya.DatasetConfig, arch: str, name_or_path: str, out: Path, config: TrainConfig,
        plan: Plan) -> dict[str, Any]:
    """The ai-toolkit job (its example configs' shape, config/examples/train_lora_*.yaml)."""
    flow = arch in FLOW
    batch = config.batch_size or int(data.first.setting("batch_size") or 1)
    scheduler, scheduler_params = schedule(config, plan.warnings)
    train: dict[str, Any] = {
        "batch_size": batch, "steps": steps(data, config, batch, plan.notes),
        "gradient_accumulation_steps": config.gradient_accumulation_steps,
        "train_unet": config.train_unet, "train_text_encoder": config.train_text_encoder and not flow,
        "gradient_checkpointing": config.gradient_checkpointing or flow,
        "noise_scheduler": "flowmatch" if flow else "ddpm",
        "optimizer": OPTIMIZERS.get(config.optimizer, config.optimizer),
        "optimizer_params": dict(config.optimizer_args), "lr": config.learning_rate,
        "lr_scheduler": scheduler, "lr_scheduler_params": scheduler_params,
        "max_grad_norm": config.max_grad_norm, "dtype": PRECISION.get(config.mixed_precision, "bf16"),
        "noise_offset": config.noise_offset}
    for key in ("unet_lr", "text_encoder_lr", "min_snr_gamma"):
        if getattr(config, key) is not None:
            train[key] = getattr(config, key)
    if flow and config.train_text_encoder:
        plan.notes.append(f"{arch}: the text encoder is not trained (ai-toolkit trains the transformer only)")
    sample: dict[str, Any] = {"sampler": "flowmatch" if flow else "ddpm", "prompts": []}
    if config.sample_prompts and config.sample_every_n_steps:
        sample.update(prompts=_prompts(Path(config.sample_prompts)), sample_every=config.sample_every_n_steps)
    else:
        train["disable_sampling"] = True
    save = {"dtype": SAVE_DTYPE.get(config.save_precision, "float16"),
            "save_every": config.save_every_n_steps or train["steps"]}
    if config.save_last_n_steps and config.save_every_n_steps:
        save["max_step_saves_to_keep"] = max(1, config.save_last_n_steps // config.save_every_n_steps)
    process: dict[str, Any] = {
        "type": "sd_trainer", "training_folder": str(out), "training_seed": config.seed,
        "network": network(config), "save": save,
        "datasets": datasets(data, config, config.cache_latents or config.cache_latents_to_disk),
        "train": train, "model": {"name_or_path": name_or_path, "arch": arch, "quantize": False},
        "sample": sample}
    if config.logging_dir:
        process["log_dir"] = config.logging_dir
    return {"job": "extension", "config": {"name": config.output_name, "process": [process]},
            "meta": {"name": "[name]", "written_by": "curate train --backend aitoolkit"}}


def _prompts(path: Path) -> list[str]:
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise CurateError(f"{path}: cannot read the sample prompts ({exc})") from exc
    return [line.split(" --")[0].strip() for line in lines if line.strip() and not line.startswith("#")]


def unknown_settings(config: TrainConfig) -> list[str]:
    return [f"train.{name} = {value!r} has no ai-toolkit setting: ai-toolkit trains without it"
            for name, value in changed_settings(config, HANDLED)]


def dump(data: dict[str, Any]) -> str:
    try:
        import yaml
    except ImportError:  # ai-toolkit reads .json jobs too (toolkit/config.py); YAML is its habit
        return json.dumps(data, indent=2)
    return "# Written by `curate train --backend aitoolkit`: run it with `python run.py THIS_FILE`\n" + \
        yaml.safe_dump(data, sort_keys=False, allow_unicode=True)


def plan(dataset: Path, model: Path, out: Path, config: TrainConfig, *, resume: Path | None = None,
         tool: Path | None = None) -> Plan:
    """Write the ai-toolkit job file into `out` and build its command (nothing is trained)."""
    config.check()
    dataset, out = dataset.absolute(), out.absolute()
    arch, name_or_path = model_arch(model)
    if tool is not None and not (tool / "run.py").is_file():
        raise CurateError(f"{tool}: no run.py here; the tool folder must be an ostris/ai-toolkit checkout")
    result = Plan(NAME, dataset, model, out, config, resume=resume, tool=tool)
    if resume is not None:
        result.warnings.append("ai-toolkit resumes by itself from the newest save in its training folder; "
                               f"--resume {resume} is not passed")
    data = read_dataset(dataset)
    content = job(data, arch, name_or_path, out, config, result)
    result.warnings += unknown_settings(config)
    if arch in FLOW and tag_captions(data):
        result.warnings.append(f"{arch} trains on sentences, and these captions read as tags: set "
                               "[captions] format = \"nl\" or \"hybrid\" (after `curate caption`) and run "
                               "`curate layout`")
    text = dump(content)
    path = out / (JOB_FILE if text.startswith("#") else JOB_FILE.replace(".yaml", ".json"))
    script = str(tool / "run.py") if tool else "run.py"
    result.command = ["python", script, str(path)]
    atomic_write_text(path, text)  # last: a refused plan leaves nothing behind
    result.files.append(path)
    result.notes.insert(0, f"wrote {path} (model {arch}: {name_or_path})")
    if tool is None:
        result.notes.append("run it in your ai-toolkit folder, in its Python environment "
                            "(or pass the checkout as the tool to have curate run it)")
    return result


def run(plan: Plan, *, on_step: StepCallback | None = None) -> RunResult:
    """Run the job in the ai-toolkit folder with its own Python (venv/ or .venv/ there)."""
    if plan.tool is None or plan.command is None:
        raise CurateError("the aitoolkit backend needs the ai-toolkit checkout to run it; or print the "
                          "command with --print-command")
    python = next((str(plan.tool / env / "bin" / "python") for env in ("venv", ".venv")
                   if (plan.tool / env / "bin" / "python").is_file()), "python")
    code = subprocess.call([python, *plan.command[1:]], cwd=plan.tool)
    if code:
        raise CurateError(f"ai-toolkit exited with code {code} (its output is above); fix what it reports "
                          "and re-run")
    output = plan.out / plan.config.output_name / f"{plan.config.output_name}.safetensors"
    return RunResult(NAME, output, f"ai-toolkit trained {plan.config.network} (exited 0)",
                     {"command": plan.command, "returncode": code, "files": [str(p) for p in plan.files]})
