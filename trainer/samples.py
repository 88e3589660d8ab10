"""Sample images during training, from a prompt file in sd-scripts' syntax.

Prompt files are read as sd-scripts' `train_util.load_prompts` reads them (commit 48d368f):
a text file has one prompt per line, blank lines and `#` comments skipped, options after
` --`: `--n` negative prompt, `--w` / `--h` size, `--d` seed, `--l` CFG scale, `--s` steps
(clamped to 1..1000), `--ss` sampler. A `.toml` file has a `[prompt]` table of defaults and
`[[prompt.subset]]` tables, one per image; a `.json` file is a list of lines or tables. Table
keys are sd-scripts' (`prompt`, `negative_prompt`, `width`, `height`, `seed`, `sample_steps`,
`scale`, `sample_sampler`). Defaults are sd-scripts': 512x512, 30 steps, scale 7.5; sizes are
rounded down to a multiple of 8, at least 64. sd-scripts silently drops an option it cannot
parse; here it is an error naming the file and line, since a typo would otherwise cost a run's
worth of useless samples. Options sd-scripts knows for other model families (`--g`, `--cn`,
`--ctr`, `--rcfg`, `--fs`) are accepted and ignored.

Generation reuses the loaded modules in a diffusers StableDiffusionPipeline (for SDXL a
StableDiffusionXLPipeline, given the pooled embeddings too), so the adapter
network, which hangs on those modules as forward hooks, is in every image. The prompts are
encoded with the training's own text encoding (clip_skip, long captions) and the latents
decoded here in the VAE's dtype, so a half-precision UNet works beside the float32 VAE. Each
sampler name maps to a diffusers scheduler on the training noise schedule with the model's
prediction type and, like sd-scripts' `get_my_scheduler`, `clip_sample` switched on where
the scheduler has it. Unlike sd-scripts, a prompt without `--d` gets a fixed seed from the
run's seed and its index, not a random one, so samples of successive steps are comparable.
Generation runs with dropout off and gives back the modules' train/eval modes and torch's
global random state as it found them.
"""

from __future__ import annotations

import contextlib
import inspect
import io
import json
import time
import tomllib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from curate.atomic import atomic_write_bytes
from curate.errors import CurateError
from curate.trainer.model import NOISE_SCHEDULE, Models, encode_conditioning

# sd-scripts' --sample_sampler choices -> (diffusers scheduler class, extra arguments)
SAMPLERS: dict[str, tuple[str, dict[str, Any]]] = {
    "ddim": ("DDIMScheduler", {}),
    "pndm": ("PNDMScheduler", {}),
    "lms": ("LMSDiscreteScheduler", {}),
    "euler": ("EulerDiscreteScheduler", {}),
    "euler_a": ("EulerAncestralDiscreteScheduler", {}),
    "heun": ("HeunDiscreteScheduler", {}),
    "dpm_2": ("KDPM2DiscreteScheduler", {}),
    "dpm_2_a": ("KDPM2AncestralDiscreteScheduler", {}),
    # diffusers refuses a zero final sigma for first-order DPM-Solver; sigma_min is its old ending
    "dpmsolver": ("DPMSolverMultistepScheduler", {"algorithm_type": "dpmsolver",
                                                  "final_sigmas_type": "sigma_min"}),
    "dpmsolver++": ("DPMSolverMultistepScheduler", {"algorithm_type": "dpmsolver++"}),
    "dpmsingle": ("DPMSolverSinglestepScheduler", {}),
}
for _name in ("lms", "euler", "euler_a", "dpm_2", "dpm_2_a"):
    SAMPLERS[f"k_{_name}"] = SAMPLERS[_name]

MIN_STEPS = {"pndm": 4}  # diffusers' PNDM runs Runge-Kutta warm-up steps first and fails below 4
IGNORED_OPTIONS = ("g", "cn", "ctr", "rcfg", "fs")  # sd-scripts options for Flux, SD3, ControlNet
SAMPLE_DIR = "sample"


@dataclass(frozen=True)
class SamplePrompt:
    prompt: str
    negative_prompt: str | None = None
    width: int = 512
    height: int = 512
    seed: int | None = None  # None: derived from the run's seed and `index`
    steps: int = 30
    scale: float = 7.5
    sampler: str | None = None  # None: the run's sample_sampler
    index: int = 0  # position in the file: the `_NN_` of the image's name


def check_sampler(name: str, where: str = "train.sample_sampler") -> str:
    if name.lower() not in SAMPLERS:
        raise CurateError(f"{where}: unknown sampler {name!r}; choose one of {', '.join(SAMPLERS)}")
    return name.lower()


def _rounded(size: int) -> int:
    return max(64, size - size % 8)  # sd-scripts: down to a multiple of 8, at least 64


def _option(key: str, value: str, where: str) -> tuple[str, Any]:
    """One `--key value` as a SamplePrompt field and value."""
    try:
        if key == "n":
            return "negative_prompt", value
        if key == "ss":
            return "sampler", check_sampler(value, where)
        if key in ("w", "h", "d", "s"):
            number = int(value)
            if number < 0:
                raise ValueError(value)
            if key == "s":
                return "steps", max(1, min(1000, number))
            return {"w": "width", "h": "height", "d": "seed"}[key], number
        if key == "l":
            return "scale", float(value)
    except ValueError:
        raise CurateError(f"{where}: --{key} {value!r} is not a valid value; write e.g. "
                          "--w 512 --h 768 --d 1 --l 7.5 --s 28") from None
    raise CurateError(f"{where}: unknown option --{key}; use --n --w --h --d --l --s or --ss")


def parse_line(line: str, where: str, index: int = 0) -> SamplePrompt:
    """A prompt line: `prompt --n negative --w 512 --h 768 --d 1 --l 7.5 --s 28 --ss euler_a`."""
    text, *options = line.strip().split(" --")
    fields: dict[str, Any] = {}
    for option in options:
        key, _, value = option.strip().partition(" ")
        key, value = key.lower(), value.strip()
        if key in IGNORED_OPTIONS:
            continue
        if not value:
            raise CurateError(f"{where}: option --{key} has no value")
        name, parsed = _option(key, value, where)
        fields[name] = parsed
    return _prompt(text.strip(), fields, index)


def _prompt(text: str, fields: dict[str, Any], index: int) -> SamplePrompt:
    sample = SamplePrompt(prompt=text, index=index, **fields)
    return replace(sample, width=_rounded(sample.width), height=_rounded(sample.height))


# table keys as sd-scripts' prompt dicts name them -> the option they stand for
TABLE_KEYS = {"negative_prompt": "n", "width": "w", "height": "h", "seed": "d", "sample_steps": "s",
              "scale": "l", "sample_sampler": "ss"}


def _from_table(table: Any, where: str, index: int) -> SamplePrompt:
    if isinstance(table, str):
        return parse_line(table, where, index)
    if not isinstance(table, dict) or not isinstance(table.get("prompt", ""), str):
        raise CurateError(f"{where}: a prompt must be a line of text or a table with a 'prompt' string")
    fields = {}
    for key, value in table.items():
        if key in ("prompt", "subset", "enum") or key in ("guidance_scale", "controlnet_image",
                                                            "cfg_trunc_ratio", "renorm_cfg", "flow_shift"):
            continue
        if key not in TABLE_KEYS:
            raise CurateError(f"{where}: unknown key {key!r}; use prompt, {', '.join(TABLE_KEYS)}")
        name, parsed = _option(TABLE_KEYS[key], str(value), where)
        fields[name] = parsed
    return _prompt(str(table.get("prompt", "")).strip(), fields, index)


def load_prompts(path: Path) -> list[SamplePrompt]:
    """The prompts of a .txt (or any other text), .toml or .json prompt file, in file order."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise CurateError(f"{path}: cannot read the sample prompt file ({exc.strerror})") from exc
    except UnicodeDecodeError as exc:
        raise CurateError(f"{path}: not UTF-8 ({exc}); re-save it as UTF-8") from exc
    suffix = path.suffix.lower()
    if suffix not in (".toml", ".json"):
        lines = [(number, line) for number, line in enumerate(text.splitlines(), 1)
                 if line.strip() and not line.strip().startswith("#")]
        return [parse_line(line, f"{path}:{number}", i) for i, (number, line) in enumerate(lines)]
    try:
        data = tomllib.loads(text) if suffix == ".toml" else json.loads(text)
    except (tomllib.TOMLDecodeError, json.JSONDecodeError) as exc:
        raise CurateError(f"{path}: not valid {suffix[1:].upper()} ({exc}); fix the file") from exc
    if suffix == ".toml":
        base = data.get("prompt")
        if not isinstance(base, dict) or not isinstance(base.get("subset"), list):
            raise CurateError(f"{path}: a TOML prompt file needs a [prompt] table with [[prompt.subset]] "
                              "entries, as sd-scripts reads it")
        tables: list[Any] = [{**base, **subset} if isinstance(subset, dict) else subset
                             for subset in base["subset"]]
        where = "prompt.subset"
    else:
        if not isinstance(data, list):
            raise CurateError(f"{path}: a JSON prompt file must be a list of prompts")
        tables, where = data, "entry"
    return [_from_table(table, f"{path}: {where} {i + 1}", i) for i, table in enumerate(tables)]


def due(step: int, epoch_end: bool, epoch: int, every_n_steps: int | None, every_n_epochs: int | None,
        at_first: bool = False) -> bool:
    """sd-scripts' rule: step 0 only with at_first (--sample_at_first); with every_n_epochs, at the end
    of every n-th epoch (1-based; every_n_steps is then ignored); else every n-th step inside epochs."""
    if step == 0:
        return at_first
    if every_n_epochs is not None:
        return epoch_end and epoch % every_n_epochs == 0
    return every_n_steps is not None and not epoch_end and step % every_n_steps == 0


def make_scheduler(sampler: str, v_parameterization: bool) -> Any:
    """sd-scripts' `get_my_scheduler`: the sampler on the training noise schedule."""
    import diffusers

    class_name, extra = SAMPLERS[check_sampler(sampler)]
    cls = getattr(diffusers, class_name)
    accepted = inspect.signature(cls.__init__).parameters
    schedule = {k: v for k, v in NOISE_SCHEDULE.items() if k in accepted and k != "clip_sample"}
    if "clip_sample" in accepted:
        schedule["clip_sample"] = True  # sd-scripts switches it on for every scheduler that has it
    prediction = "v_prediction" if v_parameterization else "epsilon"
    return cls(**schedule, **extra, prediction_type=prediction)


def sample_seed(base_seed: int, index: int) -> int:
    """The seed of prompt `index` when the file gives none: fixed for the run, so every step's
    sample of that prompt starts from the same noise."""
    return (base_seed * 1_000_003 + 7_919 * (index + 1)) % 2**32


def sample_name(output_name: str | None, step: int, epoch: int | None, index: int, seed: int | None) -> str:
    """sd-scripts' file name: `{name}_{e%06d epoch | %06d step}_{index:02d}_{timestamp}[_{seed}].png`."""
    stamp = time.strftime("%Y%m%d%H%M%S", time.localtime())
    number = f"e{epoch:06d}" if epoch is not None else f"{step:06d}"
    prefix = "" if output_name is None else f"{output_name}_"
    return f"{prefix}{number}_{index:02d}_{stamp}{'' if seed is None else f'_{seed}'}.png"


@contextlib.contextmanager
def _eval_mode(modules: Sequence[nn.Module]) -> Iterator[None]:
    """Everything in eval mode (no adapter dropout), then each submodule's own mode back."""
    modes = [(m, m.training) for module in modules for m in module.modules()]
    for module in modules:
        module.eval()
    try:
        yield
    finally:
        for module, training in modes:
            module.training = training


def _pipeline(models: Models) -> Any:
    from diffusers import DDIMScheduler, StableDiffusionPipeline, StableDiffusionXLPipeline

    # built with a scheduler the constructor accepts as is; the sampler is set per prompt after,
    # as sd-scripts does, so that its clip_sample survives the constructor's config repair
    scheduler = DDIMScheduler(**NOISE_SCHEDULE, steps_offset=1)
    if models.sdxl:
        pipeline = StableDiffusionXLPipeline(vae=models.vae, text_encoder=models.text_encoder,
                                             text_encoder_2=models.text_encoder_2, tokenizer=models.tokenizer,
                                             tokenizer_2=models.tokenizer_2, unet=models.unet,
                                             scheduler=scheduler, add_watermarker=False)
        pipeline.set_progress_bar_config(disable=True)
        return pipeline
    pipeline = StableDiffusionPipeline(vae=models.vae, text_encoder=models.text_encoder,
                                       tokenizer=models.tokenizer, unet=models.unet, scheduler=scheduler,
                                       safety_checker=None, feature_extractor=None,
                                       requires_safety_checker=False)
    pipeline.set_progress_bar_config(disable=True)
    return pipeline


def _render(pipeline: Any, models: Models, sample: SamplePrompt, seed: int, clip_skip: int | None,
            max_token_length: int) -> Any:
    """One PIL image for one prompt."""
    texts = [sample.prompt, sample.negative_prompt or ""]
    embeds, pooled = encode_conditioning(models, texts, clip_skip, max_token_length=max_token_length)
    generator = torch.Generator("cpu").manual_seed(seed)  # the same noise on any device
    # anything drawing from the global generators gets the prompt's seed too, as in sd-scripts
    torch.random.default_generator.manual_seed(seed)
    if embeds.device.type == "cuda":
        torch.cuda.manual_seed(seed)
    # SDXL: the pooled embeddings too; its size numbers are the image's, uncropped, as sd-scripts samples
    extra = {} if pooled is None else {"pooled_prompt_embeds": pooled[:1],
                                       "negative_pooled_prompt_embeds": pooled[1:]}
    latents = pipeline(prompt_embeds=embeds[:1], negative_prompt_embeds=embeds[1:], height=sample.height,
                       width=sample.width, num_inference_steps=sample.steps, guidance_scale=sample.scale,
                       generator=generator, output_type="latent", **extra).images
    vae = models.vae
    dtype = next(vae.parameters()).dtype
    image = vae.decode(latents.to(dtype) / models.vae_scale).sample
    return pipeline.image_processor.postprocess(image.float(), output_type="pil")[0]


def _check_steps(prompts: Sequence[SamplePrompt], sampler: str) -> None:
    """Refuse before any image is made, so that a bad prompt never leaves half a set."""
    for sample in prompts:
        name = sample.sampler or sampler
        if sample.steps < MIN_STEPS.get(name, 1):
            raise CurateError(f"sample prompt {sample.index + 1} ({sample.prompt[:40]!r}): {name} needs at "
                              f"least {MIN_STEPS[name]} steps; raise --s or choose another sampler")


def generate_samples(models: Models, prompts: Sequence[SamplePrompt], out_dir: Path, output_name: str | None,
                     step: int, epoch: int | None, sampler: str, device: torch.device, base_seed: int, *,
                     network: nn.Module | None = None, clip_skip: int | None = None,
                     max_token_length: int = 75) -> list[Path]:
    """Render every prompt with the model as it is now; write PNGs to `out_dir/sample/`.

    `epoch` is given for end-of-epoch samples (named `e000002`), None for step samples
    (`000500`). `network` is the adapter being trained: it is hooked into the modules already
    and only passed so that its dropout is off while sampling. `device` is the training device,
    whose RNG is forked too (the noise itself comes from a CPU generator, the same on any device).
    Returns the written paths.
    """
    _check_steps(prompts, check_sampler(sampler))
    pipeline = _pipeline(models)
    folder = out_dir / SAMPLE_DIR
    written = []
    modules = [models.unet, *models.text_encoders, models.vae, *([network] if network is not None else [])]
    forked = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=forked), _eval_mode(modules), torch.no_grad():
        for sample in prompts:
            seed = sample.seed if sample.seed is not None else sample_seed(base_seed, sample.index)
            pipeline.scheduler = make_scheduler(sample.sampler or sampler, models.v_parameterization)
            image = _render(pipeline, models, sample, seed, clip_skip, max_token_length)
            buffer = io.BytesIO()
            image.save(buffer, format="PNG")
            path = folder / sample_name(output_name, step, epoch, sample.index, sample.seed)
            atomic_write_bytes(path, buffer.getvalue())
            written.append(path)
    return written
