"""The stages `curate run` can take, in the pipeline's order, each as the single command runs it.

A new stage is its package under curate/stages/ plus one `Stage(...)` line in STAGES, at its
place in the order (config.ORDER is read from here).

A stage here is a thin adapter: it reads the stage's typed options from its own curate.toml
table (the same `stage_config` the command uses), calls the stage's one library entry point
and returns that function's result as a dict. `view` names what the stage reads and writes (see
state.py); a stage with no view (import, check) runs every time and is cheap when nothing
changed (import skips unchanged files by their stamps; check only reads).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

from curate.config import stage_config
from curate.errors import CurateError
from curate.paths import display, is_url

if TYPE_CHECKING:
    from curate.executor import Executor
    from curate.pipeline.config import RunConfig

Progress = Callable[[int, int], None] | None


@dataclass(frozen=True)
class Context:
    """What every stage adapter gets: the workspace, its options and the run's [run] table."""

    root: Path
    config_file: Path
    overrides: tuple[str, ...]
    run: RunConfig
    progress: Progress = None

    def options(self, cls: type, section: str) -> Any:
        return stage_config(cls, section, self.config_file, self.overrides)

    @cached_property
    def executor(self) -> Executor:
        """One per run: a Ray connection is made once, when the first stage needs it."""
        return self.run.make_executor()

    @property
    def dataset(self) -> Path:
        return self.run.path(self.root, self.run.dataset)

    @property
    def train_out(self) -> Path:
        return self.run.path(self.root, self.run.train_out)

    def files(self) -> dict[str, Path]:
        """The paths behind the views' file: and folder: parts."""
        return {"file:keep.txt": self.root / "keep.txt", "file:crops.csv": self.root / "crops.csv",
                "folder:dataset": self.dataset, "folder:train_out": self.train_out}


Options = Callable[[Context], Any]  # the stage's typed options, read before it runs
Runner = Callable[[Context, Any], dict[str, Any]]  # runs the stage with them; its result as a dict


@dataclass(frozen=True)
class Stage:
    name: str
    view: tuple[str, ...]  # what it reads and writes (state.py); empty: runs every time
    options: Options
    runner: Runner


def _import(ctx: Context, config: Any) -> dict[str, Any]:
    from curate.stages.ingest import import_sources

    sources: list[Path | str] = [s if is_url(s) else ctx.run.path(ctx.root, s) for s in ctx.run.sources]
    note = None
    if not sources:
        sources = _recorded_sources(ctx.root)
        note = (f"run.sources is empty: importing again from the {len(sources)} source(s) this "
                f"workspace recorded ({', '.join(display(s) for s in sources)})")
    result = import_sources(ctx.root, sources, config, on_progress=ctx.progress,
                            executor=ctx.executor).as_dict()
    return {**result, "note": note} if note else result


def _recorded_sources(root: Path) -> list[Path | str]:
    """The sources earlier imports into this workspace named (`curate import SRC --into WS`)."""
    from curate.stages.ingest.identity import recorded_sources
    from curate.workspace import Workspace, is_workspace

    found: list[Path | str] = []
    if is_workspace(root):
        with Workspace.open(root) as ws:
            found = recorded_sources(ws, Path.cwd())
    if not found:
        raise CurateError("run.sources is empty and no import into this workspace is recorded: "
                          "list the scrape folders or zips to import (--set "
                          "'run.sources=[\"../raw\"]'), or leave import out of run.stages")
    return found


def _dedupe(ctx: Context, config: Any) -> dict[str, Any]:
    from curate.stages.dedupe.run import dedupe

    return dedupe(ctx.root, config, on_progress=ctx.progress, executor=ctx.executor).as_dict()


def _filter(ctx: Context, config: Any) -> dict[str, Any]:
    from curate.stages.quality.run import quality_filter

    return quality_filter(ctx.root, config, on_progress=ctx.progress, executor=ctx.executor).as_dict()


def _bg(ctx: Context, config: Any) -> dict[str, Any]:
    from curate.stages.background import remove_backgrounds

    return remove_backgrounds(ctx.root, config, on_progress=ctx.progress, executor=ctx.executor).as_dict()


def _crop(ctx: Context, config: Any) -> dict[str, Any]:
    from curate.stages.crop.run import crop_images

    return crop_images(ctx.root, config, on_progress=ctx.progress, executor=ctx.executor).as_dict()


def _tag(ctx: Context, config: Any) -> dict[str, Any]:
    from curate.stages.tag import tag

    return tag(ctx.root, config, on_progress=ctx.progress, executor=ctx.executor).as_dict()


def _tags_filter(ctx: Context, config: Any) -> dict[str, Any]:
    from curate.stages.captions.filter import run_filter

    return run_filter(ctx.root, config).as_dict()


def _trigger(ctx: Context) -> Any:
    if not ctx.run.trigger:
        raise CurateError("run.trigger is not set: name the trigger word (--set run.trigger=sks), "
                          "or leave captions out of run.stages")
    return {"trigger": ctx.run.trigger, "class_token": ctx.run.class_token}


def _captions(ctx: Context, words: Any) -> dict[str, Any]:
    from curate.stages.captions.edit import set_trigger

    return set_trigger(ctx.root, words["trigger"], words["class_token"]).as_dict()


NO_CAPTION_MODEL = ("skipped: [caption] names no model or api_base (set caption.model, or caption.api_base "
                    "and caption.api_model, for sentence captions)")


def _caption(ctx: Context, config: Any) -> dict[str, Any]:
    """Sentence captions when [caption] names a backend; the run's base model's tokenizer counts
    CLIP tokens when [caption] names none."""
    if not config.configured:
        return {"note": NO_CAPTION_MODEL}
    from dataclasses import replace

    from curate.stages.caption import caption

    if config.tokenizer is None and ctx.run.model:
        config = replace(config, tokenizer=str(ctx.run.path(ctx.root, ctx.run.model)))
    return caption(ctx.root, config, on_progress=ctx.progress, executor=ctx.executor).as_dict()


@dataclass(frozen=True)
class LayoutOptions:
    """[layout] and [captions]: both decide what the dataset holds (and the stage's key)."""

    layout: Any
    captions: Any


def _layout_options(ctx: Context) -> LayoutOptions:
    from curate.stages.layout import LayoutConfig
    from curate.tagging.compile import CaptionFormat

    return LayoutOptions(ctx.options(LayoutConfig, "layout"), ctx.options(CaptionFormat, "captions"))


def _layout(ctx: Context, options: LayoutOptions) -> dict[str, Any]:
    from curate.stages.layout import layout

    return layout(ctx.root, ctx.dataset, options.layout, captions=options.captions).as_dict()


def _check_options(ctx: Context) -> Any:
    from curate.check.config import load_config

    # options are read before import makes the workspace (and its curate.toml): none yet = defaults
    config_file = ctx.config_file if ctx.config_file.is_file() else None
    return load_config(ctx.root, config_file, ctx.overrides).config


def _check(ctx: Context, config: Any) -> dict[str, Any]:
    from curate.check.run import check

    return check([ctx.dataset], config).as_dict()


def _train_options(ctx: Context) -> Any:
    from curate.trainer.config import train_config

    if not ctx.run.model:
        raise CurateError("run.stages has train but run.model is not set: name the base model "
                          "(--set run.model=PATH)")
    return train_config(ctx.config_file if ctx.config_file.is_file() else None,
                        [o for o in ctx.overrides if o.startswith("train.")])


def _train(ctx: Context, config: Any) -> dict[str, Any]:
    from curate.trainer.backends import get_backend

    backend = get_backend(config.backend)
    model = ctx.run.path(ctx.root, ctx.run.model or "")
    plan = backend.plan(ctx.dataset, model, ctx.train_out, config)
    on_step = (lambda step, total, _loss, _info: ctx.progress(step, total)) if ctx.progress else None
    return backend.run(plan, on_step=on_step).as_dict()


def _options(section: str, module: str, name: str) -> Options:
    """Options read from `section` into the dataclass `module.name`, imported when needed."""
    def read(ctx: Context) -> Any:
        import importlib

        return ctx.options(getattr(importlib.import_module(module), name), section)
    return read


STAGES: tuple[Stage, ...] = (
    Stage("import", (), _options("import", "curate.stages.ingest", "ImportConfig"), _import),
    Stage("dedupe", ("images", "file:keep.txt"),
          _options("dedupe", "curate.stages.dedupe.config", "DedupeConfig"), _dedupe),
    Stage("filter", ("active",), _options("filter", "curate.stages.quality.config", "QualityConfig"),
          _filter),
    Stage("bg", ("active", "derived"), _options("bg", "curate.stages.background", "BgConfig"), _bg),
    Stage("crop", ("active", "derived", "file:crops.csv"),
          _options("crop", "curate.stages.crop.config", "CropConfig"), _crop),
    Stage("tag", ("active", "tags", "derived"), _options("tag", "curate.stages.tag", "TagConfig"), _tag),
    Stage("tags-filter", ("active", "tags", "captions"),
          _options("tags-filter", "curate.stages.captions.filter", "FilterStageConfig"), _tags_filter),
    Stage("captions", ("active", "captions", "settings"), _trigger, _captions),
    # after tags-filter and captions: hybrid hints are the filtered tags, prompts and the
    # no-names check know the trigger
    Stage("caption", ("active", "tags", "captions", "derived", "settings"),
          _options("caption", "curate.stages.caption.config", "CaptionConfig"), _caption),
    # captions are compiled from tags and texts at layout: both are what it reads
    Stage("layout", ("active", "tags", "captions", "derived", "settings", "folder:dataset"),
          _layout_options, _layout),
    Stage("check", (), _check_options, _check),
    Stage("train", ("folder:dataset", "folder:train_out"), _train_options, _train),
)
BY_NAME = {stage.name: stage for stage in STAGES}
