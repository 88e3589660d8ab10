"""The caption backend the options name: a local transformers model or an OpenAI-compatible server.

Both are imported only here and only when a run needs them (transformers takes seconds to
import; a dry run loads neither). The API key is read from the environment by the server
backend itself: it never passes through the options, the manifest or a log line.
"""

from __future__ import annotations

import json
from pathlib import Path

from curate.stages.caption.config import CaptionConfig
from curate.tagging.vlm.backend import Captioner
from curate.tagging.vlm.prompts import FLORENCE

SERVER = "server"


def open_backend(config: CaptionConfig) -> Captioner:
    if config.backend() == "server":
        from curate.tagging.vlm.server import ServerCaptioner

        assert config.api_base is not None and config.api_model is not None  # backend() checked
        return ServerCaptioner(config.api_base, config.api_model, api_key_env=config.api_key_env,
                               concurrency=config.concurrency, timeout_s=config.timeout_s,
                               max_tokens=config.max_tokens, temperature=config.temperature)
    from curate.tagging.vlm.local import load_local

    assert config.model is not None
    # local generation is greedy (a re-run gives the same text): temperature is for servers
    return load_local(config.model, device=config.device, dtype=config.dtype, revision=config.revision,
                      max_new_tokens=config.max_tokens)


def model_name(config: CaptionConfig) -> str:
    """The model as captions' sources name it, before it is loaded: the server's model name,
    a local folder's name, or the repo id."""
    if config.backend() == "server":
        return str(config.api_model)
    path = Path(str(config.model)).expanduser()
    return path.name if path.is_dir() else str(config.model)


def family_hint(config: CaptionConfig) -> str:
    """The model family without loading it (for a dry run's prompts): Florence-2 is told apart by
    its config.json's model_type or its name; every other family reads the same prompt text."""
    if config.backend() == "server":
        return SERVER
    name = str(config.model)
    try:
        kind = json.loads((Path(name).expanduser() / "config.json").read_text(encoding="utf-8"))
        model_type = str(kind.get("model_type", "")) if isinstance(kind, dict) else ""
    except (OSError, ValueError):
        model_type = ""
    return FLORENCE if "florence" in f"{model_type} {name}".lower() else "local"
