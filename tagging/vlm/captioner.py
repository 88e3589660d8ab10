"""LocalCaptioner: batched greedy generation with a transformers vision-language model.

A feeder thread decodes and preprocesses batch k+1 (PIL decode, resize, tokenise: the
processor's work, which releases the GIL in PIL and torch) while the model generates batch k;
the queue between them holds two batches, so memory stays flat. On the CPU the feeder needs a
core of its own: torch's intra-op threads are held to one fewer than the cores while captioning
(`feeder_core`). Prompts are built per family: Florence-2 takes its task token as the whole
prompt; chat models get one user message with the image and the prompt through the processor's
chat template. Only the new tokens are decoded.
"""

from __future__ import annotations

import contextlib
import os
import queue
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from PIL import Image

from curate.errors import CurateError
from curate.paths import first_line
from curate.tagging.vlm.backend import Progress, Request, Result

# Florence-2's caption tasks: preset name -> task token (a task token is accepted as itself)
FLORENCE_TASKS = {"short": "<CAPTION>", "detailed": "<DETAILED_CAPTION>", "more": "<MORE_DETAILED_CAPTION>"}
QUEUE_BATCHES = 2  # read-ahead: one batch being generated, two ready


def florence2_task(prompt: str) -> str:
    """The Florence-2 task token for a preset name or a task token; a free prompt is refused."""
    text = prompt.strip()
    if text in FLORENCE_TASKS.values():
        return text
    if text in FLORENCE_TASKS:
        return FLORENCE_TASKS[text]
    choices = ", ".join(f"{name} ({token})" for name, token in FLORENCE_TASKS.items())
    raise CurateError(f"Florence-2 takes a task, not a free prompt ({text[:60]!r}): use a preset, one of "
                      f"{choices}, or a chat model (Qwen2.5-VL, JoyCaption, SmolVLM) for your own prompt")


@dataclass
class _Batch:
    """One prepared batch: the processor's tensors for the readable images, errors for the rest."""

    indices: list[int]
    inputs: Any = None
    errors: list[Result] = field(default_factory=list)


class LocalCaptioner:
    """The Captioner protocol over a loaded transformers model and its processor."""

    def __init__(self, model: Any, processor: Any, *, name: str, revision: str, family: str,
                 device: str, dtype: str, max_new_tokens: int = 256) -> None:
        if max_new_tokens < 1:
            raise CurateError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
        self.model, self.processor = model, processor
        self.name, self.revision, self.family = name, revision, family
        self.device, self.dtype, self.max_new_tokens = device, dtype, max_new_tokens
        self.encoder_decoder = bool(getattr(model.config, "is_encoder_decoder", False))
        self.positions = position_limit(model.config)
        if not self.encoder_decoder:  # decoder-only models continue the prompt: pad on the left
            processor.tokenizer.padding_side = "left"
        self._chat_texts: dict[str, str] = {}

    def settings(self) -> dict[str, Any]:
        """What changes the text besides the model and prompt: greedy decoding, its length, and
        the dtype the weights run in (bfloat16 and float32 can pick different tokens)."""
        return {"do_sample": False, "num_beams": 1, "max_new_tokens": self.max_new_tokens,
                "dtype": self.dtype}

    def close(self) -> None:
        """Drop the model (and its GPU memory)."""
        self.model = None
        try:
            import torch

            if torch.cuda.is_available():
                torch.cuda.empty_cache()
        except ImportError:
            pass

    def prompt_text(self, prompt: str) -> str:
        """The text the processor gets with the image: Florence-2's task token, or the chat
        template rendered with the image and the prompt, ready for the answer."""
        if self.family == "florence2":
            return florence2_task(prompt)
        if prompt not in self._chat_texts:
            self._chat_texts[prompt] = self._render_chat(prompt)
        return self._chat_texts[prompt]

    def _render_chat(self, prompt: str) -> str:
        image_token = getattr(self.processor, "image_token", None) or "<image>"
        # most templates take a list content with an image entry; some (JoyCaption's) take a
        # string and place the image themselves
        for content in ([{"type": "image"}, {"type": "text", "text": prompt}], prompt):
            messages = [{"role": "user", "content": content}]
            try:
                text = self.processor.apply_chat_template(messages, add_generation_prompt=True,
                                                          tokenize=False)
            except Exception:  # jinja2's TemplateError, or a template that indexes the content
                continue
            if image_token in text:
                return text
        raise CurateError(f"{self.name}: its chat template does not place the image ({image_token}) in the "
                          "prompt; it is not an image-chat model, or its chat_template file is missing")

    def caption(self, requests: Sequence[Request], *, batch_size: int = 4,
                on_progress: Progress | None = None) -> Iterator[Result]:
        """One Result per request, in request order; an unreadable image is an error Result.
        A prompt Florence-2 cannot take raises CurateError before anything is generated."""
        if batch_size < 1:
            raise CurateError(f"batch size must be >= 1, got {batch_size}")
        if self.model is None:
            raise CurateError(f"{self.name}: the captioner was closed")
        texts = [self.prompt_text(request.prompt) for request in requests]  # a bad prompt fails first
        with feeder_core(self.device):
            yield from self._run(requests, texts, batch_size, on_progress)

    def _run(self, requests: Sequence[Request], texts: list[str], batch_size: int,
             on_progress: Progress | None) -> Iterator[Result]:
        batches: queue.Queue[_Batch | BaseException | None] = queue.Queue(QUEUE_BATCHES)
        stop = threading.Event()
        feeder = threading.Thread(target=self._feed, args=(requests, texts, batch_size, batches, stop),
                                  name="caption-feeder", daemon=True)
        feeder.start()
        ready: dict[int, Result] = {}  # finished, waiting for an earlier index
        next_index = 0
        try:
            while (batch := batches.get()) is not None:
                if isinstance(batch, BaseException):
                    raise batch
                found = list(batch.errors)
                if batch.inputs is not None:
                    found += self._generate(batch)
                ready.update((result.index, result) for result in found)
                while next_index in ready:
                    yield ready.pop(next_index)
                    next_index += 1
                if on_progress:
                    on_progress(next_index + len(ready), len(requests))
        finally:
            stop.set()
            while feeder.is_alive():  # unblock a feeder waiting on a full queue
                with contextlib.suppress(queue.Empty):
                    batches.get(timeout=0.05)
            feeder.join()

    def _feed(self, requests: Sequence[Request], texts: list[str], batch_size: int,
              batches: queue.Queue, stop: threading.Event) -> None:
        try:
            for start in range(0, len(requests), batch_size):
                if stop.is_set():
                    return
                span = range(start, min(start + batch_size, len(requests)))
                for batch in self._prepare(requests, texts, span):
                    batches.put(batch)
            batches.put(None)
        except BaseException as exc:  # handed to the consumer, which re-raises it
            batches.put(exc)

    def _prepare(self, requests: Sequence[Request], texts: list[str], span: range) -> list[_Batch]:
        """The batch for `span`: images decoded, processor run; when the processor refuses the
        batch, each image on its own, so one odd image fails alone."""
        batch = _Batch([])
        images = []
        for index in span:
            image = load_image(requests[index])
            if isinstance(image, str):
                batch.errors.append(Result(index, None, image))
            else:
                batch.indices.append(index)
                images.append(image)
        if not images:
            return [batch]
        try:
            batch.inputs = self._process(images, [texts[i] for i in batch.indices])
            return [batch]
        except Exception as exc:
            if len(images) == 1:
                path = requests[batch.indices[0]].path
                reason = f"{path}: the processor cannot take this image ({first_line(exc)})"
                return [_Batch([], errors=[*batch.errors, Result(batch.indices[0], None, reason)])]
        alone = [self._prepare(requests, texts, range(index, index + 1)) for index in batch.indices]
        return [_Batch([], errors=batch.errors)] + [part for parts in alone for part in parts]

    def _process(self, images: list[Image.Image], texts: list[str]) -> Any:
        if self.family == "smolvlm":  # Idefics3-style processors take one image list per prompt
            return self.processor(images=[[image] for image in images], text=texts, padding=True,
                                  return_tensors="pt")
        return self.processor(images=images, text=texts, padding=True, return_tensors="pt")

    def _generate(self, batch: _Batch) -> list[Result]:
        import torch

        inputs = batch.inputs.to(self.device)
        if "pixel_values" in inputs:  # the processor makes float32; the weights may be bf16
            inputs["pixel_values"] = inputs["pixel_values"].to(self.model.dtype)
        # past its last position a model with learned positions (Florence-2's BART) fails and
        # a rotary one rambles: the answer stops there
        used = 1 if self.encoder_decoder else inputs["input_ids"].shape[1]
        room = min(self.max_new_tokens, self.positions - used) if self.positions else self.max_new_tokens
        if room < 1:
            return [Result(index, None, f"the prompt fills the model's {self.positions} positions; use a "
                                        "shorter prompt") for index in batch.indices]
        try:
            with torch.inference_mode():
                output = self.model.generate(**inputs, do_sample=False, num_beams=1, max_new_tokens=room)
        except (RuntimeError, IndexError, ValueError) as exc:  # CUDA out of memory, a bad batch
            reason = (f"generation failed ({first_line(exc)}); try a smaller --batch-size or --max-tokens, "
                      "or another model")
            return [Result(index, None, reason) for index in batch.indices]
        # encoder-decoder models (Florence-2) return the answer only; decoder-only ones continue
        new = output if self.encoder_decoder else output[:, inputs["input_ids"].shape[1]:]
        texts = self.processor.batch_decode(new, skip_special_tokens=True)
        return [Result(index, text.strip()) for index, text in zip(batch.indices, texts, strict=True)]


def position_limit(config: Any) -> int | None:
    """The positions the text model has (its decoder's for an encoder-decoder), if it says."""
    for part in (getattr(config, "text_config", None), config):
        limit = getattr(part, "max_position_embeddings", None) if part is not None else None
        if isinstance(limit, int) and limit > 0:
            return limit
    return None


@contextlib.contextmanager
def feeder_core(device: str) -> Iterator[None]:
    """On the CPU, torch's intra-op threads held to one fewer than the cores (at least one) while
    the feeder thread decodes, restored after. With as many torch threads as cores, the feeder's
    thread is one too many: torch's OpenMP threads spin at their barriers waiting for a thread the
    feeder pushed off its core, and a generate step takes several times as long (measured on the
    2-core CI machine: tiny Qwen2.5-VL 0.32 s for 16 images with one thread, 1.2-1.7 s with two;
    docs/benchmarks.md, Captions). A GPU generates on the GPU: nothing to share there."""
    if not device.startswith("cpu"):
        yield
        return
    import torch

    before = torch.get_num_threads()
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    torch.set_num_threads(max(1, min(before, cores - 1)))
    try:
        yield
    finally:
        torch.set_num_threads(before)


def load_image(request: Request) -> Image.Image | str:
    """The request's image as RGB, or a one-line reason naming the file."""
    try:
        with Image.open(request.path) as image:
            image.load()
            return image.convert("RGB")
    except Exception as exc:  # decoders raise OSError, ValueError, SyntaxError, struct.error...
        return (f"{request.path}: cannot read image ({first_line(exc)}); "
                "re-download or replace it, or remove it")
