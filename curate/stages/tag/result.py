"""What a `curate tag` run did, for the summary and for --json."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

ProgressFn = Callable[[int, int], None]


@dataclass
class TagResult:
    target: str
    mode: str  # "folder" or "workspace"
    model: str
    dry_run: bool
    providers: list[str] = field(default_factory=list)
    provider_note: str | None = None
    notes: list[str] = field(default_factory=list)  # what the run did besides tagging, for people
    counts: dict[str, int] = field(default_factory=dict)
    captions: list[tuple[str, str]] = field(default_factory=list)  # (image, caption) written
    skipped: list[tuple[str, str]] = field(default_factory=list)
    ignored: list[tuple[str, str]] = field(default_factory=list)

    def count(self, key: str, n: int = 1) -> None:
        self.counts[key] = self.counts.get(key, 0) + n

    def as_dict(self) -> dict[str, Any]:
        return {
            "target": self.target, "mode": self.mode, "model": self.model, "dry_run": self.dry_run,
            "providers": self.providers, "provider_note": self.provider_note, "notes": self.notes,
            "counts": self.counts,
            "captions": [{"image": i, "caption": c} for i, c in self.captions],
            **{k: [{"file": f, "reason": r} for f, r in getattr(self, k)] for k in ("skipped", "ignored")},
        }
