"""The `[run]` table of curate.toml: which stages `curate run` takes, and the few inputs that are
not any one stage's option (where the scrape is, the trigger word, where the dataset goes).

Every stage's own options stay in that stage's table (`[dedupe]`, `[tag]`, `[layout]`,
`[train]`...), exactly as the single commands read them, so a setting means the same in
`curate run` as in `curate tag`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from curate.config import option
from curate.errors import CurateError
from curate.executor import Executor, get_executor
from curate.pipeline.stages import STAGES

# The pipeline's order (stages.STAGES); `[run] stages` picks from these and may not reorder them.
ORDER = tuple(stage.name for stage in STAGES)
# caption runs only when [caption] names a model or a server (else it notes that it skipped)
DEFAULT_STAGES = ("import", "dedupe", "filter", "tag", "tags-filter", "captions", "caption", "layout",
                  "check")
# the [run] options `curate dedupe` and `curate caption` take as flags too
EXECUTOR_FIELDS = ("executor", "ray_address")


@dataclass(frozen=True)
class RunConfig:
    """What `curate run` does: its stages, in pipeline order, and the inputs no one stage owns.
    Each stage reads its own options from its own table, as its single command does."""

    stages: tuple[str, ...] = option(DEFAULT_STAGES, help=(
        "The stages `curate run` takes, in this order whatever the list's: import, dedupe, filter, "
        "bg, crop, tag, tags-filter, captions, caption, layout, check, train."))
    sources: tuple[str, ...] = option((), help=(
        "import: scrape folders, .zip/.tar files or fsspec URLs (s3://, gs://, https://; folders "
        "relative to the workspace); empty: the sources the workspace recorded."))
    trigger: str | None = option(None, example="sks", help=(
        "captions: the trigger word put first in every caption."))
    class_token: str | None = option(None, example="woman", help=(
        "captions: the class word after the trigger (\"woman\", \"style\")."))
    dataset: str = option("dataset", help=(
        "layout, check, train: the Kohya dataset folder (relative to the workspace)."))
    model: str | None = option(None, example="../models/sd15", help=(
        "train: the base model (a diffusers folder or a single-file checkpoint)."))
    train_out: str = option("lora", help="train: the output folder (relative to the workspace).")
    executor: Literal["local", "ray"] = option("local", help=(
        "Where the per-image work of import, dedupe, filter, bg, crop, tag and caption (a local model) "
        "runs: \"local\" (this machine's cores) or \"ray\" (a Ray cluster; pip install 'curate[ray]'; "
        "docs/ray.md)."))
    ray_address: str | None = option(None, example="ray://head:10001", help=(
        "The Ray cluster's address (executor \"ray\"); unset: RAY_ADDRESS, else a local Ray instance."))

    def check(self) -> None:
        unknown = [s for s in self.stages if s not in ORDER]
        if unknown:
            raise CurateError(f"run.stages: unknown stage(s) {', '.join(unknown)}; "
                              f"stages: {', '.join(ORDER)}")

    def make_executor(self) -> Executor:
        """The executor `executor` and `ray_address` name (Ray is imported only for "ray")."""
        return get_executor(self.executor, self.ray_address)

    def path(self, root: Path, value: str) -> Path:
        path = Path(value).expanduser()
        return path if path.is_absolute() else root / path

    def ordered(self) -> list[str]:
        return [s for s in ORDER if s in self.stages]
