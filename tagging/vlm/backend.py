"""The caption backend protocol: what `curate caption` asks of a local model or a server.

A backend takes `Request`s (an image file and the final prompt text) and yields one `Result`
per request, each index exactly once; a server backend may answer out of order, a local one
answers in order. A file that cannot be read, or an answer that cannot be had, is a Result with
`text=None` and a one-line `error`, never an exception that stops the run. `name`, `revision`
and `settings()` together say what would change the text, so the stage can key its cache on them.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

Progress = Callable[[int, int], None]  # (done, total) after each finished batch


@dataclass(frozen=True)
class Request:
    path: Path  # image file
    prompt: str  # the final prompt text (preset/template already filled in)


@dataclass
class Result:
    index: int  # position in the requests
    text: str | None  # None when it failed
    error: str | None = None  # one-line reason


class Captioner(Protocol):
    name: str  # e.g. "florence-2-tiny" (folder name) or the repo id
    revision: str  # content id of the weights: hub commit, or a hash of the local folder's files
    family: str  # "florence2" | "qwen2_vl" | "qwen2_5_vl" | "llava" | "smolvlm" | "server"

    def settings(self) -> dict[str, Any]:
        """Generation settings that change the text (for the cache key)."""
        ...

    def caption(self, requests: Sequence[Request], *, batch_size: int = 4,
                on_progress: Progress | None = None) -> Iterator[Result]:
        ...

    def close(self) -> None:
        ...
