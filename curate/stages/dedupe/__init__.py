"""Perceptual dedupe: hash images once (`hashing`), then find near pairs (`search`) and group
them (`clusters`) at any threshold without reading the images again.

Names load on first use, so importing the package imports neither numpy nor Pillow.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from curate.stages.dedupe.clusters import UnionFind, cluster_hashes, clusters_from_pairs
    from curate.stages.dedupe.hashing import (
        DECODE_MODES,
        METHODS,
        FileHash,
        hash_bits,
        hash_file,
        hash_files,
        hash_key,
        iter_hashes,
    )
    from curate.stages.dedupe.search import Pairs, pack_hashes, pairs_bruteforce, pairs_within

_MODULE = {
    "DECODE_MODES": "hashing", "METHODS": "hashing", "FileHash": "hashing", "hash_bits": "hashing",
    "hash_file": "hashing", "hash_files": "hashing", "hash_key": "hashing", "iter_hashes": "hashing",
    "Pairs": "search", "pack_hashes": "search", "pairs_bruteforce": "search", "pairs_within": "search",
    "UnionFind": "clusters", "cluster_hashes": "clusters", "clusters_from_pairs": "clusters",
}
__all__ = [
    "DECODE_MODES", "METHODS", "FileHash", "Pairs", "UnionFind", "cluster_hashes",
    "clusters_from_pairs", "hash_bits", "hash_file", "hash_files", "hash_key", "iter_hashes",
    "pack_hashes", "pairs_bruteforce", "pairs_within",
]


def __getattr__(name: str) -> Any:
    if name not in _MODULE:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{_MODULE[name]}"), name)
