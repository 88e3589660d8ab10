"""A local caption model on an executor: `CaptionModel` is loaded once per worker (in this
process for the local executor, once per actor on Ray) and captions the requests it is given;
`answers` feeds it and hands each Result back to the driver, which keeps the cache, the checks
and the sinks (the only writer).

The cache key must not depend on where the model runs, so on Ray the model's identity (name,
revision, family and the settings that change the text, dtype included) is found on the driver
WITHOUT loading the weights there (`remote_model`): the files are resolved (a folder's content
id, a Hub repo's commit), the family read from config.json, and dtype "auto" settled from what
the cluster has (GPUs: bfloat16, else float32) and passed to the workers explicitly. Each worker
checks that the model it loaded is the one the driver keyed, and refuses otherwise.

Requests travel in chunks of the run's batch size, so the model's generate batches are the same
images on every executor (padding within a batch can change a decoder-only model's answer).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from curate.errors import CurateError
from curate.executor import Executor
from curate.stages.caption.config import CaptionConfig
from curate.stages.caption.result import ProgressFn
from curate.tagging.vlm.backend import Captioner, Request, Result

CHUNKS_PER_CALL = 4  # generate batches per Ray actor call: the captioner's read-ahead stays busy


@dataclass(frozen=True)
class Identity:
    """What decides a model's text besides the prompt and the image (the cache key's parts)."""

    name: str
    revision: str
    family: str
    settings: dict[str, Any]
    device: str = ""

    @classmethod
    def of(cls, captioner: Captioner) -> Identity:
        return cls(captioner.name, captioner.revision, captioner.family, captioner.settings(),
                   str(getattr(captioner, "device", "") or ""))


@dataclass(frozen=True)
class CaptionOut:
    """One chunk's answers, in order: (text, error) per request, and where the model ran."""

    answers: tuple[tuple[str | None, str | None], ...]
    device: str


def local_settings(max_new_tokens: int, dtype: str) -> dict[str, Any]:
    """LocalCaptioner.settings() for these options, known before loading (greedy decoding; each
    worker checks its loaded captioner says the same)."""
    return {"do_sample": False, "num_beams": 1, "max_new_tokens": max_new_tokens, "dtype": dtype}


class CaptionModel:
    """The executor's Model for a local caption model (see the module doc). `loaded`: the
    captioner this process already opened (the local executor uses it; a Ray actor loads its own,
    from `spec` in `dtype`, and checks it against `expected`)."""

    def __init__(self, config: CaptionConfig, spec: str, dtype: str, expected: Identity | None = None,
                 loaded: Captioner | None = None) -> None:
        self.config, self.spec, self.dtype, self.expected, self.loaded = config, spec, dtype, expected, loaded

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "loaded": None}  # a loaded network does not travel

    def load(self) -> Callable[[Sequence[tuple[Request, ...]]], Iterator[CaptionOut]]:
        captioner = self.loaded or self._open()
        batch_size = self.config.batch_size

        def run(chunks: Sequence[tuple[Request, ...]]) -> Iterator[CaptionOut]:
            flat = [request for chunk in chunks for request in chunk]
            results = iter(captioner.caption(flat, batch_size=batch_size))  # in request order
            device = str(getattr(captioner, "device", "") or "")
            try:
                for chunk in chunks:
                    answers = tuple((r.text, r.error) for r in (next(results) for _ in chunk))
                    yield CaptionOut(answers, device)
            finally:
                close = getattr(results, "close", None)
                if close is not None:  # stops the captioner's read-ahead thread now
                    close()
        return run

    def _open(self) -> Captioner:
        from curate.tagging.vlm.local import load_local

        config = self.config
        captioner = load_local(self.spec, device=config.device, dtype=self.dtype,
                               revision=self.expected.revision if self.expected else config.revision,
                               max_new_tokens=config.max_tokens)
        if self.expected is not None:
            got = Identity.of(captioner)
            for part in ("name", "revision", "family", "settings"):
                if getattr(got, part) != getattr(self.expected, part):
                    raise CurateError(
                        f"{self.spec}: the model a worker loaded is not the one the driver keyed captions on "
                        f"({part} {getattr(got, part)!r}, expected {getattr(self.expected, part)!r}); every "
                        "worker must see the same model files (a shared folder, docs/ray.md)")
        return captioner


def remote_model(config: CaptionConfig, executor: Executor) -> tuple[CaptionModel, Identity]:
    """The model for Ray workers and its identity, found here without loading the weights."""
    from curate.tagging.vlm.local import FAMILIES, identify

    assert config.model is not None  # backend() checked
    files, model_type = identify(config.model, config.revision)
    path = Path(config.model).expanduser()
    # a folder by its absolute path (the workers' working directory is not ours); a Hub repo by
    # name, pinned to the commit resolved here
    spec = str(path.absolute()) if path.is_dir() else config.model
    dtype = config.dtype
    if dtype == "auto":
        on_gpu = config.device.startswith("cuda") or (config.device == "auto" and executor.gpus() > 0)
        dtype = "bfloat16" if on_gpu else "float32"
    identity = Identity(files.name, files.revision, FAMILIES[model_type][0],
                        local_settings(config.max_tokens, dtype))
    return CaptionModel(config, spec, dtype, expected=identity), identity


def answers(executor: Executor, model: CaptionModel, requests: Sequence[Request],
            on_progress: ProgressFn | None = None, on_device: Callable[[str], None] | None = None
            ) -> Iterator[Result]:
    """A Result per request, in order, as they come back; progress after the caller handled one."""
    size = model.config.batch_size
    chunks = [tuple(requests[i:i + size]) for i in range(0, len(requests), size)]
    index = 0
    for out in executor.map_model(model, chunks, batch_size=CHUNKS_PER_CALL):
        if on_device is not None and index == 0:
            on_device(out.device)
        for text, error in out.answers:
            yield Result(index, text, error)
            index += 1
            if on_progress:  # after the caller has written it: done means done
                on_progress(index, len(requests))
