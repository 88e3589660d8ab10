"""Options of `curate caption` (the `[caption]` table of curate.toml)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from curate.config import check_ranges, option
from curate.errors import CurateError
from curate.tagging.vlm.checks import BUDGETS, CHECKS
from curate.tagging.vlm.prompts import check_template

SECTION = "caption"


@dataclass(frozen=True)
class CaptionConfig:
    """Options of `curate caption`: a vision-language model (a local transformers model, or any
    OpenAI-compatible server) writes a sentence caption per image; checks refuse bad ones."""

    model: str | None = option(None, example="microsoft/Florence-2-large", help=(
        "A local model folder or a Hugging Face repo id (Florence-2, Qwen2-VL / Qwen2.5-VL, LLaVA "
        "models such as JoyCaption, SmolVLM), run through transformers."))
    revision: str | None = option(None, example="main", help="Local model: the Hub revision to load.")
    device: str = option("auto", help="Local model: \"auto\" (CUDA when it works, else the CPU), \"cpu\", "
                         "\"cuda\", \"cuda:1\"...")
    dtype: Literal["auto", "bfloat16", "float16", "float32"] = option("auto", help=(
        "Local model: weights' precision; auto is bf16/fp16 on CUDA, fp32 on the CPU."))
    api_base: str | None = option(None, example="http://127.0.0.1:8000/v1", help=(
        "An OpenAI-compatible server instead of a local model (vLLM, llama.cpp, Ollama, LM Studio, a "
        "hosted API): its base URL, up to /v1."))
    api_model: str | None = option(None, example="Qwen/Qwen2.5-VL-7B-Instruct", help=(
        "The model name the server knows (with api_base)."))
    api_key_env: str = option("OPENAI_API_KEY", help=(
        "The environment variable holding the server's API key; the key itself is never written "
        "anywhere."))
    concurrency: int = option(4, ge=1, le=256, help="Server: requests in flight at once.")
    timeout_s: float = option(120.0, gt=0, le=3600, help="Server: seconds to wait for one answer.")
    preset: Literal["short", "detailed", "hybrid", "no-names"] = option("detailed", help=(
        "What to ask: \"short\" (one sentence), \"detailed\" (a few sentences), \"hybrid\" (the image's "
        "tags given as hints) or \"no-names\" (describe without naming the character, so that the "
        "trigger word carries the identity)."))
    prompt: str | None = option(None, example="Describe {trigger} the {class} in one sentence.", help=(
        "Your own prompt instead of the preset; placeholders {tags}, {trigger}, {class}."))
    max_tokens: int = option(300, ge=1, le=8192, help="The longest answer, in the model's tokens.")
    temperature: float = option(0.0, ge=0, le=2, help=(
        "0: greedy, so a re-run gives the same text; more gives varied wording."))
    batch_size: int = option(4, ge=1, le=256, help="Local model: images per generate call.")
    checks: tuple[str, ...] = option(CHECKS, help=(
        "Checks a caption must pass to be stored: empty, refusal, repetition, budget, leak."))
    budget: Literal["none", "clip-75", "clip-150", "clip-225", "t5-256", "t5-512"] = option(
        "clip-225", help=(
            "The target trainer's token budget: CLIP 75/150/225 (SD 1.x/SDXL, sd-scripts' "
            "max_token_length), T5 512 (FLUX) or 256 (SD3); a longer caption is refused."))
    tokenizer: str | None = option(None, example="../models/sdxl", help=(
        "A CLIP tokenizer folder (or a model folder with tokenizer/) to count CLIP tokens exactly; "
        "unset: the base model of `curate run`, else a lower-bound estimate."))
    names: tuple[str, ...] = option((), help=(
        "no-names: names that must not appear in a caption, besides the trigger word and the image's "
        "character tags."))
    trigger: str | None = option(None, example="sks", help=(
        "{trigger}, and the word a no-names caption must not say; a workspace uses the one "
        "`curate captions trigger` set when this is unset."))
    class_word: str | None = option(None, example="woman", help=(
        "{class}; a workspace uses its class word when this is unset."))
    existing: Literal["skip", "append", "overwrite"] = option("skip", help=(
        "Plain folders: an image that already has a caption file: keep it (skip), add the sentence "
        "after it (append), or replace it (overwrite)."))
    # sd-scripts' default caption_extension, so the tags' .txt beside it is left alone
    caption_ext: str = option(".caption", help="Plain folders: the caption file beside each image.")

    def backend(self) -> str:
        """"local" or "server": which kind of backend the options name."""
        if self.model and self.api_base:
            raise CurateError(f"{SECTION}: both model ({self.model}) and api_base ({self.api_base}) are "
                              "set: a run uses one backend; unset one of them")
        if self.api_base:
            if not self.api_model:
                raise CurateError(f"{SECTION}.api_base is set but api_model is not: name the model the "
                                  "server runs (--api-model NAME)")
            return "server"
        if self.model:
            return "local"
        raise CurateError(f"{SECTION}: no model: give a local model (--model FOLDER_OR_REPO) or a "
                          "server (--api-base URL --api-model NAME)")

    @property
    def configured(self) -> bool:
        return bool(self.model or self.api_base)

    def check(self) -> None:
        check_ranges(self, SECTION)
        unknown = sorted(set(self.checks) - set(CHECKS))
        if unknown:
            raise CurateError(f"{SECTION}.checks: unknown check(s) {', '.join(unknown)}; "
                              f"checks: {', '.join(CHECKS)}")
        if self.budget not in BUDGETS:
            raise CurateError(f"{SECTION}.budget = {self.budget!r}: one of {', '.join(BUDGETS)}")
        if self.prompt is not None:
            check_template(self.prompt, f"{SECTION}.prompt")
        if not self.caption_ext.startswith(".") or "/" in self.caption_ext or len(self.caption_ext) < 2:
            raise CurateError(f"{SECTION}.caption_ext = {self.caption_ext!r}: must look like .caption")
        if self.api_key_env and not self.api_key_env.replace("_", "").isalnum():
            raise CurateError(f"{SECTION}.api_key_env = {self.api_key_env!r}: the NAME of an environment "
                              "variable (such as OPENAI_API_KEY), not the key itself")
