"""The tag stage's model for an executor: the tagger loaded once (in this process, or once per
Ray actor), then `compose.tag_items`, the per-image step, over the items it is given.

Both sinks (workspace annotations, caption files beside the images) iterate `tagged`: each
item with its `Tagged`, in the items' order, as results arrive, so the driver writes as it goes.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from curate.executor import Executor
from curate.stages.tag.compose import Item, Tagged, tag_items
from curate.stages.tag.config import TagConfig
from curate.stages.tag.result import ProgressFn, TagResult
from curate.tagging.engine import Tagger
from curate.tagging.model import ModelFiles, TagInfo

ITEMS_PER_BATCH = 4  # model batches per Ray actor call: the tagger's read-ahead stays busy


@dataclass(frozen=True)
class TagOut:
    tagged: Tagged
    providers: tuple[str, ...]  # where the actor's session runs (the first result's say it)
    provider_note: str | None


class TagModel:
    """`load` gives the per-image step over a list of Items (see the module doc). `loaded`: the
    tagger this process already opened (the local executor uses it; a Ray actor loads its own)."""

    def __init__(self, files: ModelFiles, providers: Sequence[str] | None, config: TagConfig,
                 loaded: tuple[Tagger, list[TagInfo]] | None = None) -> None:
        self.files, self.providers, self.config, self.loaded = files, providers, config, loaded

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "loaded": None}  # an onnxruntime session does not travel

    def load(self) -> Callable[[Sequence[Item]], Iterator[TagOut]]:
        from curate.tagging.engine import load_tagger

        tagger, tags = self.loaded or load_tagger(self.files, providers=list(self.providers or ()) or None)

        def run(items: Sequence[Item]) -> Iterator[TagOut]:
            where = tuple(tagger.providers)
            for done in tag_items(tagger, tags, items, self.config):
                yield TagOut(done, where, tagger.provider_note)
        return run


def tagged(executor: Executor, model: TagModel, items: Sequence[Item], result: TagResult,
           on_progress: ProgressFn | None = None) -> Iterator[tuple[Item, Tagged]]:
    """Each item with its Tagged, in order; where the model ran goes into `result`."""
    batch = max(1, model.config.batch_size) * ITEMS_PER_BATCH
    outs = executor.map_model(model, items, batch_size=batch)
    for done, (item, out) in enumerate(zip(items, outs, strict=True), 1):
        if not result.providers:
            result.providers, result.provider_note = list(out.providers), out.provider_note
        yield item, out.tagged
        if on_progress:  # after the caller has written it: done means done
            on_progress(done, len(items))
