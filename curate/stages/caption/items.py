"""The per-image work of `curate caption`, the same for a workspace and a plain folder.

Each image becomes an Item (the file the model sees, its content sha256, its prompt and what
the leak check must look for). Its cache key covers everything that decides the model's answer:
the file's content, the model and its revision, the prompt and the generation settings. A
cached answer is not asked again; it is judged by the checks like a new one (the checks are
cheap, and a changed budget then applies without the model). Each answer is handed to the
target's Sink as it arrives, so a run stopped mid-way keeps what it received.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from curate.stages.caption.config import CaptionConfig
from curate.stages.caption.result import CaptionResult, ProgressFn
from curate.tagging.tokens import TokenCounter
from curate.tagging.vlm.backend import Request, Result
from curate.tagging.vlm.checks import Context, clean, first_failure
from curate.tagging.vlm.prompts import Values, prompt_for

KEY_VERSION = 1  # bump when what goes into a key changes


@dataclass
class Item:
    shown: str  # the image as the user knows it
    path: Path  # the file the model sees (a workspace image's leaf: crop, cut-out or original)
    sha256: str  # of that file's content
    values: Values
    names: tuple[str, ...] = ()  # names a no-names caption must not say, besides the trigger
    target: Any = None  # the Record (workspace) or the caption file (folder)
    existing: str | None = None  # folder, existing = append: the caption file's text
    prompt: str = ""
    key: str = ""


# the model's answers to these requests (each index once), calling progress(done, total) as it goes
Ask = Callable[[Sequence[Request], ProgressFn | None], Iterable[Result]]


class Sink(Protocol):
    """Where a target's captions go (workspace.py, folder.py)."""

    def cached(self, keys: Sequence[str]) -> dict[str, str]: ...
    def remember(self, key: str, text: str) -> None: ...
    def accept(self, item: Item, text: str) -> None: ...
    def reject(self, item: Item, reason: str) -> None: ...
    def fail(self, item: Item, reason: str) -> None: ...
    def flush(self) -> None: ...


@dataclass
class Job:
    """One run's fixed parts: model identity, prompt choice, checks."""

    config: CaptionConfig
    model: str
    revision: str
    family: str
    settings: dict[str, Any]
    source: str  # vlm:<model>:<prompt label>
    counter: TokenCounter | None = None
    no_names: bool = False
    stamp: str = field(default_factory=lambda: time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))

    def prepare(self, item: Item) -> Item:
        item.prompt = prompt_for(self.family, self.config.preset, self.config.prompt, item.values)
        item.key = cache_key(item.sha256, self.model, self.revision, item.prompt, self.settings)
        return item

    def judge(self, item: Item, text: str) -> str | None:
        ctx = Context(budget=self.config.budget, counter=self.counter, no_names=self.no_names,
                      trigger=item.values.trigger, names=item.names)
        return first_failure(text, ctx, self.config.checks)


def cache_key(sha256: str, model: str, revision: str, prompt: str, settings: dict[str, Any]) -> str:
    data = [KEY_VERSION, sha256, model, revision, prompt, settings]
    return hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()


def run_items(job: Job, items: Sequence[Item], ask: Ask | None, sink: Sink,
              result: CaptionResult, *, dry_run: bool = False, on_progress: ProgressFn | None = None) -> None:
    """Cached answers judged, the rest asked of the model (`ask`; none on a dry run) and judged
    as they come; the sink is flushed even when the run stops early (an interrupt, a dead server)."""
    cache = sink.cached([it.key for it in items])
    todo = []
    for item in items:
        text = cache.get(item.key)
        if text is None:
            todo.append(item)
        else:
            _judge(job, item, text, sink, result, cached=True)
    if dry_run or ask is None:
        result.planned = [(it.shown, it.prompt) for it in todo]
        result.count("would caption", len(todo))
        sink.flush()
        return
    started = time.perf_counter()
    try:
        requests = [Request(it.path, it.prompt) for it in todo]
        for answer in ask(requests, on_progress):
            item = todo[answer.index]
            if answer.text is None:
                reason = answer.error or "the model gave no answer"
                result.skipped.append((item.shown, reason))
                result.count("failed")
                sink.fail(item, reason)
                continue
            text = clean(answer.text)
            result.generated += 1
            sink.remember(item.key, text)
            _judge(job, item, text, sink, result, cached=False)
    finally:
        result.seconds += time.perf_counter() - started
        sink.flush()


def _judge(job: Job, item: Item, text: str, sink: Sink, result: CaptionResult, *, cached: bool) -> None:
    reason = job.judge(item, text)
    if reason is None:
        sink.accept(item, text)
        result.captions.append((item.shown, text))
        result.count("cached" if cached else "captioned")
    else:
        sink.reject(item, reason)
        result.rejected.append((item.shown, reason))
        result.count("cached, rejected" if cached else "rejected")
