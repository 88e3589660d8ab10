"""What `curate status` reports: counts per source kind and per stage/verdict."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from curate.workspace import Workspace


def workspace_status(root: Path) -> dict[str, Any]:
    with Workspace.open(root) as ws:
        m = ws.manifest
        sources = m.images_by_source_kind()
        runs = m.recent_runs(5)
        return {
            "workspace": str(ws.root),
            "images": m.count("images"),
            "origins": m.count("origins"),
            "tags": m.count("tags"),
            "captions": m.count("captions"),
            "derived": {kind: m.count_derived(kind) for kind in ("cutout", "crop")},
            "sources": sources,
            "verdicts": [{"stage": s, "verdict": v, "count": n} for s, v, n in m.verdict_counts()],
            "skipped": [{"file": r["subject"], "reason": r["reason"], "stage": r["stage"]}
                        for r in m.decisions(verdict="skipped")],
            "runs": runs,
        }
