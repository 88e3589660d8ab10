"""`curate caption`: the one entry point, for a workspace or a plain folder, and `show` (one
image with the current prompt, nothing stored)."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from curate.errors import CurateError
from curate.executor import LOCAL, Executor
from curate.folder import resolve_target
from curate.paths import display
from curate.stages.caption.backends import SERVER, family_hint, model_name, open_backend
from curate.stages.caption.config import CaptionConfig
from curate.stages.caption.folder import FolderSink, folder_items, image_item
from curate.stages.caption.items import Ask, Item, Job, run_items
from curate.stages.caption.model import CaptionModel, Identity, answers, remote_model
from curate.stages.caption.result import CaptionResult, ProgressFn
from curate.stages.caption.workspace import WorkspaceSink, input_sha, workspace_items
from curate.tagging.tokens import TokenCounter
from curate.tagging.vlm import prompts
from curate.tagging.vlm.backend import Captioner, Request, Result
from curate.tagging.vlm.checks import clean
from curate.workspace import Workspace


def caption(target: Path, config: CaptionConfig, *, dry_run: bool = False,
            on_progress: ProgressFn | None = None, backend: Captioner | None = None,
            executor: Executor = LOCAL) -> CaptionResult:
    """Caption every image of `target` (see workspace.py and folder.py for where captions go).
    `backend`: an already open captioner to use (and leave open); else the options' one is
    opened (not on a dry run) and closed at the end. A local model runs on `executor` (here, or
    once per Ray actor); a server is asked from here (network-bound, with its own concurrency)."""
    config.check()
    kind = config.backend()
    target, mode = resolve_target(target)
    result = CaptionResult(str(target), mode, model_name(config), kind,
                           prompts.label(config.preset, config.prompt), dry_run)
    opened = _open(config, kind, executor, backend, dry_run, result)
    try:
        job = make_job(config, opened.identity, result)
        ask = None if dry_run else opened.ask
        if mode == "workspace":
            with Workspace.open(target) as ws, ws.lock():
                items = workspace_items(ws, config.trigger, config.class_word, config.names, result)
                _prepare(job, items)
                run_items(job, items, ask, WorkspaceSink(ws, job.source, dry_run),
                          result, dry_run=dry_run, on_progress=on_progress)
        else:
            items = folder_items(target, config, result)
            _prepare(job, items)
            sink = FolderSink(job.source, dry_run)
            try:
                run_items(job, items, ask, sink, result, dry_run=dry_run, on_progress=on_progress)
            finally:
                sink.close()
    finally:
        if opened.close is not None:
            opened.close.close()
    return result


@dataclass
class _Opened:
    identity: Identity | None  # None: a dry run that loaded nothing (the family from the name)
    ask: Ask | None
    close: Captioner | None = None  # what this run opened and closes


def _open(config: CaptionConfig, kind: str, executor: Executor, backend: Captioner | None, dry_run: bool,
          result: CaptionResult) -> _Opened:
    """The backend as the run uses it: its identity (for the cache keys) and how to ask it."""
    if backend is None and dry_run:
        return _Opened(None, None)
    if backend is not None or kind == SERVER:
        captioner = backend or open_backend(config)
        if executor.remote and kind == SERVER:
            result.notes.append(f"the server at {config.api_base} is asked from this machine, not from "
                                f"{executor.describe()} (it is network-bound and has its own concurrency)")

        def ask(requests: Sequence[Request], progress: ProgressFn | None) -> Iterator[Result]:
            return captioner.caption(requests, batch_size=config.batch_size, on_progress=progress)
        return _Opened(Identity.of(captioner), ask, None if backend is not None else captioner)
    if executor.remote:  # loaded once per worker; keyed here without loading it
        model, identity = remote_model(config, executor)
        loaded = None
    else:
        loaded = open_backend(config)
        identity = Identity.of(loaded)
        model = CaptionModel(config, str(config.model), config.dtype, loaded=loaded)

    def on_device(device: str) -> None:
        result.device = device

    def ask_model(requests: Sequence[Request], progress: ProgressFn | None) -> Iterator[Result]:
        return answers(executor, model, requests, progress, on_device)
    return _Opened(identity, ask_model, loaded)


def make_job(config: CaptionConfig, identity: Identity | None, result: CaptionResult) -> Job:
    """The run's model identity (from the loaded backend when there is one), prompt and checks."""
    settings: dict[str, Any] = {"max_tokens": config.max_tokens, "temperature": config.temperature}
    if identity is not None:
        settings.update(identity.settings)
        result.model = identity.name
        result.device = identity.device
    family = identity.family if identity is not None else family_hint(config)
    revision = (identity.revision if identity is not None else "") or config.revision or ""
    counter = TokenCounter(config.tokenizer) if config.tokenizer else None
    no_names = config.preset == "no-names" and not config.prompt
    if family == prompts.FLORENCE and (note := prompts.florence_note(config.preset, config.prompt)):
        result.notes.append(note)
    source = f"vlm:{result.model}:{result.prompt}"
    return Job(config, result.model, revision, family, settings, source, counter, no_names)


def _prepare(job: Job, items: list[Item]) -> None:
    for item in items:  # every prompt before the first request: a bad template fails at once
        job.prepare(item)


@dataclass
class Shown:
    """`curate caption --show IMAGE`: what the model was asked and what it answered."""

    image: str
    prompt: str
    caption: str | None
    problem: str | None  # the failed check's reason, or why there is no answer

    def as_dict(self) -> dict[str, Any]:
        return {"image": self.image, "prompt": self.prompt, "caption": self.caption, "problem": self.problem}


def show(target: Path, image: Path, config: CaptionConfig, *, backend: Captioner | None = None) -> Shown:
    """Caption one image with the current prompt and checks; nothing is stored or cached. In a
    workspace an image it holds (by content, or as an imported file) gets its tags and trigger."""
    config.check()
    config.backend()
    target, mode = resolve_target(target)
    if not image.is_file():
        raise CurateError(f"{display(image)}: no such image file; name one to caption with --show")
    captioner = backend or open_backend(config)
    try:
        result = CaptionResult(str(target), mode, model_name(config), config.backend(), "", True)
        job = make_job(config, Identity.of(captioner), result)
        item = _show_item(target, mode, image.absolute(), config)
        job.prepare(item)
        answer = next(iter(captioner.caption([Request(item.path, item.prompt)], batch_size=1)), None)
    finally:
        if backend is None:
            captioner.close()
    if answer is None or answer.text is None:
        return Shown(item.shown, item.prompt, None, (answer.error if answer else None) or "no answer")
    text = clean(answer.text)
    return Shown(item.shown, item.prompt, text, job.judge(item, text))


def _show_item(target: Path, mode: str, image: Path, config: CaptionConfig) -> Item:
    sha = hashlib.sha256(image.read_bytes()).hexdigest()
    if mode == "workspace":
        with Workspace.open(target) as ws:
            scratch = CaptionResult("", mode, "", "", "", True)
            for item in workspace_items(ws, config.trigger, config.class_word, config.names, scratch):
                record = item.target
                sources = {str(target / o.source_path) for o in record.origins}
                if sha in (record.sha256, input_sha(record)) or str(image) in sources:
                    return item
    return image_item(image.parent, image.name, config, sha)
