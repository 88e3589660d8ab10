"""What a `curate caption` run did, for the summary and for --json."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

ProgressFn = Callable[[int, int], None]


@dataclass
class CaptionResult:
    target: str
    mode: str  # "folder" or "workspace"
    model: str
    backend: str  # "local" or "server"
    prompt: str  # the preset, or prompt-<hash> of the user's template
    dry_run: bool
    device: str = ""  # what the backend runs on, as it says
    notes: list[str] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=dict)
    captions: list[tuple[str, str]] = field(default_factory=list)  # (image, caption) stored
    rejected: list[tuple[str, str]] = field(default_factory=list)  # (image, failed check's reason)
    planned: list[tuple[str, str]] = field(default_factory=list)  # dry run: (image, prompt)
    skipped: list[tuple[str, str]] = field(default_factory=list)
    ignored: list[tuple[str, str]] = field(default_factory=list)
    generated: int = 0  # captions the model made in this run (cached ones not counted)
    seconds: float = 0.0  # spent generating

    def count(self, key: str, n: int = 1) -> None:
        self.counts[key] = self.counts.get(key, 0) + n

    @property
    def rate(self) -> float:
        """Captions per second while generating (0 when nothing was generated)."""
        return self.generated / self.seconds if self.seconds > 0 else 0.0

    def as_dict(self) -> dict[str, Any]:
        return {
            "target": self.target, "mode": self.mode, "model": self.model, "backend": self.backend,
            "prompt": self.prompt, "dry_run": self.dry_run, "device": self.device, "notes": self.notes,
            "counts": self.counts, "generated": self.generated, "seconds": round(self.seconds, 3),
            "captions_per_s": round(self.rate, 3),
            "captions": [{"image": i, "caption": c} for i, c in self.captions],
            "planned": [{"image": i, "prompt": p} for i, p in self.planned],
            **{k: [{"file": f, "reason": r} for f, r in getattr(self, k)]
               for k in ("rejected", "skipped", "ignored")},
        }
