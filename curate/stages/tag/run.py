"""`curate tag`: the one entry point, for a workspace or a plain folder."""

from __future__ import annotations

from pathlib import Path

from curate.errors import CurateError
from curate.executor import LOCAL, Executor
from curate.folder import resolve_target
from curate.stages.tag.config import TagConfig
from curate.stages.tag.folder import tag_folder
from curate.stages.tag.result import ProgressFn, TagResult
from curate.stages.tag.step import TagModel
from curate.stages.tag.workspace import rethreshold as rethreshold_ws
from curate.stages.tag.workspace import tag_workspace, tagger_source
from curate.workspace import Workspace


def tag(target: Path, config: TagConfig, *, rethreshold: bool = False, dry_run: bool = False,
        on_progress: ProgressFn | None = None, executor: Executor = LOCAL) -> TagResult:
    """Tag every image of `target` (see the stage modules for what happens to captions); the
    tagger runs on `executor`: loaded here once, or once per Ray actor (one per GPU)."""
    config.check()
    target, mode = resolve_target(target)
    workspace = mode == "workspace"
    result = TagResult(str(target), mode, config.model, dry_run)
    if rethreshold:
        if not workspace:
            raise CurateError("--rethreshold needs a workspace (it re-uses the probabilities stored "
                              "there); on a plain folder run the tagger again with --overwrite")
        with Workspace.open(target) as ws, ws.lock():
            rethreshold_ws(ws, config, _stored_model(ws, config), result, dry_run=dry_run)
        return result
    from curate.tagging.engine import load_tagger
    from curate.tagging.model import read_tags, resolve_model

    files = resolve_model(config.model)
    result.model = files.name
    providers = list(config.providers) or None
    if executor.remote:  # the actors load it (the path must be one they can read); its tag list here
        tags, loaded = read_tags(files.tags_path), None
    else:
        tagger, tags = loaded = load_tagger(files, providers=providers)
        result.providers, result.provider_note = tagger.providers, tagger.provider_note
    model = TagModel(files, providers, config, loaded)
    if workspace:
        with Workspace.open(target) as ws, ws.lock():
            tag_workspace(ws, config, files.name, model, tags, result, dry_run=dry_run,
                          on_progress=on_progress, executor=executor)
    else:
        tag_folder(target, config, model, result, dry_run=dry_run, on_progress=on_progress,
                   executor=executor)
    return result


def _stored_model(ws: Workspace, config: TagConfig) -> str:
    """Which tagger's stored probabilities to re-threshold: the configured one, or the only one."""
    names = [s.removeprefix("tagger:") for s in ws.manifest.tag_sources("tagger:")]
    if not names:
        raise CurateError(f"{ws.root}: nothing tagged yet; run `curate tag {ws.root}` first")
    wanted = Path(config.model).name if Path(config.model).is_dir() else config.model
    if wanted in names:
        return wanted
    if len(names) == 1:
        return names[0]
    raise CurateError(f"{ws.root} holds tags of several models ({', '.join(names)}): choose one "
                      f"with --model; re-thresholding reads {tagger_source('NAME')} tags")
