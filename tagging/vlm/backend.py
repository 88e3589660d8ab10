"""The shape every caption backend has (local transformers models, OpenAI-compatible servers)."""
from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol


@dataclass(frozen=True)
class Request:
    path: Path          # image file
    prompt: str         # the final prompt text (preset/template already filled in)

@dataclass
class Result:
    index: int          # position in the requests
    text: str | None    # None when it failed
    error: str | None = None   # one-line reason

class Captioner(Protocol):
    name: str
    revision: str
    family: str         # "florence2" | "qwen2_vl" | "qwen2_5_vl" | "llava" | "smolvlm" | "server"
    def settings(self) -> dict[str, Any]: ...
    def caption(self, requests: Sequence[Request], *, batch_size: int = 4,
                on_progress: Callable[[int, int], None] | None = None) -> Iterator[Result]: ...
    def close(self) -> None: ...
