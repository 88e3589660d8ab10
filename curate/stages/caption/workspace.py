"""`curate caption WS`: each sentence a Text annotation of its image, each refusal a decision.

The model sees each active image's leaf (its crop, cut-out or the original). A caption that
passes the checks becomes the image's Text with source `vlm:<model>:<prompt>` and replaces the
texts earlier runs with other models or prompts left (one model sentence per image); one that
fails is a `caption-rejected` decision naming the check, and no text. The image stays in the
dataset either way (a missing sentence falls back to tags at layout, with a warning) so that it
can be re-tried or captioned by hand. An image whose caption was edited by hand, or that has a
sentence the user wrote, is not captioned: user edits win. Everything is committed in short
transactions as answers arrive, with the cache rows, so a killed run keeps what it received.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

from curate.manifest import USER_TEXT
from curate.record import CAPTION_REJECTED, CAPTIONED, CHARACTER, Record
from curate.stage_run import shown
from curate.stages.caption.items import Item
from curate.stages.caption.result import CaptionResult
from curate.stages.guard import FAILED
from curate.tagging.vlm.prompts import Values, hint_tags
from curate.workspace import Workspace

STAGE = "caption"
COMMIT_EVERY_S = 0.5
VLM = "vlm:"  # the source prefix of every model sentence
HINT_LEAVE_OUT = ("meta", "artist", "rating")  # not what the picture shows


def workspace_items(ws: Workspace, trigger: str | None, class_word: str | None, names: Sequence[str],
                    result: CaptionResult) -> list[Item]:
    """An Item per active image, except those whose caption the user wrote."""
    items = []
    for record in ws.active_records():
        if record.user_caption is not None or any(t.source == USER_TEXT for t in record.texts):
            result.count("kept (your own caption)")
            continue
        word = trigger or record.trigger
        values = Values(hint_tags(_caption_tags(record), word), word, class_word or record.class_tokens)
        characters = tuple(t.name for t in record.tags if t.category == CHARACTER)
        items.append(Item(shown(record), record.path, input_sha(record), values,
                          tuple(names) + characters, record))
    return items


def input_sha(record: Record) -> str:
    """The content the model sees: the leaf of the image's derived chain."""
    return str(record.extra.get("leaf") or record.sha256)


def _caption_tags(record: Record) -> list[str]:
    """The image's kept tags in caption order (placed ones first, by rank), for hints."""
    kept = [(i, t) for i, t in enumerate(record.tags) if not t.removed and t.category not in HINT_LEAVE_OUT]
    kept.sort(key=lambda it: (it[1].rank is None, it[1].rank or 0, it[1].category != CHARACTER, it[0]))
    return [t.name for _, t in kept]


class WorkspaceSink:
    """Texts, decisions and cache rows, written in short transactions (see the module doc)."""

    def __init__(self, ws: Workspace, source: str, dry_run: bool) -> None:
        self.ws, self.source, self.dry_run = ws, source, dry_run
        self.texts: list[tuple[str, str | None]] = []  # (image, text); None: drop this source's text
        self.cache: list[tuple[str, str, str, str]] = []
        self.decisions: list[tuple[str | None, str, str, str, str]] = []
        self.last = time.monotonic()

    def cached(self, keys: Sequence[str]) -> dict[str, str]:
        return self.ws.manifest.cached_captions(keys)

    def remember(self, key: str, text: str) -> None:
        self.cache.append((key, text, self.source, time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())))

    def accept(self, item: Item, text: str) -> None:
        record: Record = item.target
        have = {t.source: t.text for t in record.texts if t.source.startswith(VLM)}
        if have != {self.source: text}:  # a re-run of the same answer changes nothing
            self.texts.append((record.sha256, text))
            self._decide(record, CAPTIONED, f"{len(text.split())} words, {self.source}")
        self._maybe_flush()

    def reject(self, item: Item, reason: str) -> None:
        record: Record = item.target
        decided = any(d.stage == STAGE and d.verdict == CAPTION_REJECTED and d.reason == reason
                      for d in record.decisions)
        if self.source in {t.source for t in record.texts}:
            self.texts.append((record.sha256, None))
            decided = False
        if not decided:
            self._decide(record, CAPTION_REJECTED, reason)
        self._maybe_flush()

    def fail(self, item: Item, reason: str) -> None:
        self._decide(item.target, FAILED, reason)
        self._maybe_flush()

    def _decide(self, record: Record, verdict: str, reason: str) -> None:
        self.decisions.append((record.sha256, shown(record), STAGE, verdict, reason))

    def _maybe_flush(self) -> None:
        if time.monotonic() - self.last > COMMIT_EVERY_S:
            self.flush()

    def flush(self) -> None:
        self.last = time.monotonic()
        texts, cache, decisions = self.texts, self.cache, self.decisions
        self.texts, self.cache, self.decisions = [], [], []
        if self.dry_run or not (texts or cache or decisions):
            return
        m = self.ws.manifest
        with m.transaction():
            m.cache_captions(cache)
            for image, text in texts:
                if text is None:
                    m.delete_text(image, self.source)
                else:
                    m.put_text(image, self.source, text, replaces=VLM)
            m.add_decisions(decisions)
