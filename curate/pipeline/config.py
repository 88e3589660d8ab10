"""The `[run]` table of curate.toml: which stages `curate run` takes, and the few inputs that are
not any one stage's option (where the scrape is, the trigger word, where the dataset goes).

Every stage's own options stay in that stage's table (`[dedupe]`, `[tag]`, `[layout]`,
`[train]`...), exactly as the single commands read them, so a setting means the same in
`curate run` as in `curate tag`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from curate.errors import CurateError
from curate.pipeline.stages import STAGES

# The pipeline's order (stages.STAGES); `[run] stages` picks from these and may not reorder them.
ORDER = tuple(stage.name for stage in STAGES)
DEFAULT_STAGES = ("import", "dedupe", "filter", "tag", "tags-filter", "captions", "layout", "check")


@dataclass(frozen=True)
class RunConfig:
    stages: tuple[str, ...] = DEFAULT_STAGES
    sources: tuple[str, ...] = ()  # import: scrape folders / zips, relative to the workspace
    trigger: str | None = None  # captions: the trigger word put first in every caption
    class_token: str | None = None  # captions: the class word after it ("woman", "style")
    dataset: str = "dataset"  # layout, check, train: the Kohya dataset folder (relative to the workspace)
    model: str | None = None  # train: base model (diffusers folder or single-file checkpoint)
    train_out: str = "lora"  # train: output folder (relative to the workspace)

    def check(self) -> None:
        unknown = [s for s in self.stages if s not in ORDER]
        if unknown:
            raise CurateError(f"run.stages: unknown stage(s) {', '.join(unknown)}; "
                              f"stages: {', '.join(ORDER)}")

    def path(self, root: Path, value: str) -> Path:
        path = Path(value).expanduser()
        return path if path.is_absolute() else root / path

    def ordered(self) -> list[str]:
        return [s for s in ORDER if s in self.stages]
