"""`curate doctor`'s caption lines: which caption backends work here.

Local models need transformers (and torch under it); the device is what `--device auto` picks.
A server is probed (`GET {api_base}/models`) only when one is named: doctor never guesses URLs.
"""

from __future__ import annotations

import importlib.util

LOCAL = "caption: local models"
SERVER = "caption: server"


def caption_backends(api_base: str | None = None, api_model: str | None = None,
                     api_key_env: str = "OPENAI_API_KEY") -> list[tuple[str, bool, str]]:
    """(check, ok, detail) lines; both are optional parts of curate."""
    return [_local(), _server(api_base, api_model, api_key_env)]


def _local() -> tuple[str, bool, str]:
    if importlib.util.find_spec("transformers") is None:
        return LOCAL, False, "no transformers here (pip install 'curate[train]' brings it, with torch)"
    import transformers
    from transformers.utils import is_torch_available, is_torch_cuda_available

    if not is_torch_available():
        return LOCAL, False, f"transformers {transformers.__version__} is here but torch is not"
    device = "CUDA" if is_torch_cuda_available() else "the CPU (no CUDA device: slow, fine for small sets)"
    return LOCAL, True, f"transformers {transformers.__version__}; --device auto runs on {device}"


def _server(api_base: str | None, api_model: str | None, api_key_env: str) -> tuple[str, bool, str]:
    if not api_base:
        return SERVER, False, "no server named: `curate doctor --api-base URL` probes one"
    from curate.tagging.vlm.server import probe

    ok, detail = probe(api_base, model=api_model, api_key_env=api_key_env)
    return SERVER, ok, detail
