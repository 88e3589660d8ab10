"""Feature-matching verdicts on candidate pairs, remembered in the workspace.

Verification (verify.py) decodes both images of a pair and matches their features: ~3 ms a
pair, and every run looks at up to `verify_max_pairs` of them. An incremental run (1% new
images) found its duplicates in 1% of the full run's search, then spent as long as the full run
re-verifying the same old pairs (measured: 92% of the full run at 2,000 images, all of it in
`confirm_pairs`). Scores are therefore kept in the manifest by the two images' content and the
verification settings, and only pairs never scored are decoded. A pair whose file cannot be
decoded is not remembered (the file may be repaired).
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Sequence
from dataclasses import asdict
from typing import Protocol

from curate.stages.dedupe.config import DedupeConfig
from curate.stages.dedupe.group import Confirm
from curate.stages.dedupe.scan import Item, prefetch

# Bump when the comparison itself changes, so remembered scores are not reused.
SCORING_VERSION = 1


class ScoreStore(Protocol):
    def pair_scores(self, key: str, pairs: Sequence[tuple[str, str]]) -> dict[tuple[str, str], float]: ...

    def save_pair_scores(self, key: str, scores: dict[tuple[str, str], float]) -> None: ...


def confirm_fn(config: DedupeConfig, store: ScoreStore | None = None, save: bool = True) -> Confirm:
    """`confirm(items, pairs)`: the pairs feature matching accepts; scores come from `store`
    where it has them, and new ones go into it when `save`."""
    def confirm(items: Sequence[Item], pairs: list[tuple[int, int]]) -> list[tuple[int, int]]:
        from curate.stages.dedupe.verify import VerifyConfig, score_pairs

        verify = VerifyConfig(mirrored=config.flip_invariant)  # mirrored candidates need it
        key = json.dumps({**asdict(verify), "version": SCORING_VERSION}, sort_keys=True)
        todo = [(a, b) for a, b in pairs if a != b]
        prefetch(items, itertools.chain.from_iterable(todo))
        shas = {(a, b): (items[a].sha256, items[b].sha256) for a, b in todo}
        known = store.pair_scores(key, list(shas.values())) if store is not None else {}
        fresh = [(a, b) for a, b in todo if shas[(a, b)] not in known]
        scores = score_pairs(_Paths(items), fresh, verify, workers=config.workers or None)
        new = {shas[p]: s for p, s in zip(fresh, scores, strict=True) if s is not None}
        if store is not None and save and new:
            store.save_pair_scores(key, new)
        score = {**known, **new}
        return [(a, b) for a, b in todo if score.get(shas[(a, b)], -1.0) >= verify.min_score]
    return confirm


class _Paths(Sequence[str]):
    """The items' paths by index, without a list of all of them per call (1M items, a few
    pairs)."""

    def __init__(self, items: Sequence[Item]) -> None:
        self.items = items

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, k):  # type: ignore[no-untyped-def, override]
        return self.items[k].path
