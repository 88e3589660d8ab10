"""`curate doctor`'s caption lines: which caption backends work here.

Local models need torch and transformers (curate.tagging.vlm.local.doctor: versions, families,
the device `--device auto` picks).
A server is probed (`GET {api_base}/models`) only when one is named: doctor never guesses URLs.
"""

from __future__ import annotations

SERVER = "caption: server"


def caption_backends(api_base: str | None = None, api_model: str | None = None,
                     api_key_env: str = "OPENAI_API_KEY") -> list[tuple[str, bool, str]]:
    """(check, ok, detail) lines; every one names an optional part of curate ("caption: ...")."""
    from curate.tagging.vlm.local import doctor

    return [*doctor(), _server(api_base, api_model, api_key_env)]


def _server(api_base: str | None, api_model: str | None, api_key_env: str) -> tuple[str, bool, str]:
    if not api_base:
        return SERVER, False, "no server named: `curate doctor --api-base URL` probes one"
    from curate.tagging.vlm.server import probe

    ok, detail = probe(api_base, model=api_model, api_key_env=api_key_env)
    return SERVER, ok, detail
