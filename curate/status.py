"""What `curate status` reports: counts per source kind and per stage/verdict."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from curate.workspace import Workspace


def workspace_status(root: Path) -> dict[str, Any]:
    with Workspace.open(root) as ws:
        m = ws.manifest
        sources = {r["source_kind"]: r["n"] for r in m.rows(
            "SELECT source_kind, COUNT(*) AS n FROM origins WHERE image_sha256 IS NOT NULL "
            "GROUP BY source_kind ORDER BY n DESC, source_kind")}
        runs = [dict(r) for r in m.rows(
            "SELECT command, started_at, finished_at, summary FROM runs ORDER BY id DESC LIMIT 5")]
        return {
            "workspace": str(ws.root),
            "images": m.count("images"),
            "origins": m.count("origins"),
            "tags": m.count("tags"),
            "captions": m.count("captions"),
            "sources": sources,
            "verdicts": [{"stage": s, "verdict": v, "count": n} for s, v, n in m.verdict_counts()],
            "skipped": [{"file": r["subject"], "reason": r["reason"], "stage": r["stage"]}
                        for r in m.decisions(verdict="skipped")],
            "runs": runs,
        }
