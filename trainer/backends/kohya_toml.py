"""The dataset TOML an sd-scripts run reads (`--dataset_config`), made to match the builtin trainer.

The builtin trainer reads a dataset as curate.trainer.data does: a dataset.toml's values, with the
dataset settings a TrainConfig sets winning over them (caption_extension always, since it
has a default), relative image_dir paths taken from the TOML's folder, or `N_name` folders.
sd-scripts reads the TOML alone, resolves relative paths from its working folder and defaults
caption_extension to ".caption", so this module writes the values out explicitly whenever
sd-scripts would otherwise see something else. The keys written are sd-scripts' own
(`library/config_util.py` ConfigSanitizer), checked by tests/test_trainer_backends.py.

`check_sdxl` refuses, before anything is written, a dataset that sdxl_train_network.py would
refuse after loading the model: a bucket_reso_steps that is not a multiple of 32 (64, the
default, is), and with cache_text_encoder_outputs a subset that shuffles or drops captions.
The builtin trainer refuses the same (curate.trainer.data.check_sdxl_dataset, cacheable_captions).
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from curate import kohya
from curate.buckets import BucketConfig
from curate.errors import CurateError
from curate.kohya.toml_io import subset_table
from curate.trainer.config import TrainConfig
from curate.trainer.data import BUILTIN_SUBSET_KEYS, project_subsets

FILE_NAME = "kohya-dataset.toml"
SUBSET_KEYS = ("caption_extension", "shuffle_caption", "keep_tokens", "caption_dropout_rate",
               "caption_tag_dropout_rate", "caption_dropout_every_n_epochs")
DATASET_KEYS = ("resolution", "batch_size", "enable_bucket", "min_bucket_reso", "max_bucket_reso",
                "bucket_reso_steps")
MISSING = object()


@dataclass
class DatasetConfig:
    """The TOML to pass: `text` is None when `path` (the dataset's own) is used unchanged."""

    path: Path
    data: dict[str, Any]  # the TOML's tables as sd-scripts will read them
    source: Path  # what the user gave: the dataset.toml, or the folder of N_name folders
    text: str | None = None
    reasons: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


def overrides(config: TrainConfig) -> dict[str, Any]:
    return {k: getattr(config, k) for k in (*DATASET_KEYS, *SUBSET_KEYS) if getattr(config, k) is not None}


def dataset_config(dataset: Path, out: Path, config: TrainConfig) -> DatasetConfig:
    source = dataset if dataset.is_file() else dataset / "dataset.toml"
    target = out / FILE_NAME
    if source.is_file():
        if config.reg_data_dir:
            raise CurateError(f"{source} lists its own subsets; a reg_data_dir goes into it as a subset with "
                              "is_reg = true, so leave reg_data_dir unset")
        data = _read(source)
        result = DatasetConfig(source, data, source)
        result.reasons = adapt(data, source, overrides(config))
        result.notes += _unread_by_builtin(data, source)
        if len(data["datasets"]) > 1:
            result.warnings.append(f"{source} has {len(data['datasets'])} [[datasets]]: sd-scripts trains on "
                                   "all of them, the builtin trainer on the first only")
        if result.reasons:
            result.path, result.text = target, dumps(data, f"sd-scripts dataset config for {source}")
        return result
    if not dataset.is_dir():
        raise CurateError(f"{dataset}: no such dataset folder or dataset.toml")
    data = folder_data(dataset, config)
    text = dumps(data, f"sd-scripts dataset config for the folders in {dataset}")
    reason = "folder mode: repeats and class tokens from the N_name folder names"
    return DatasetConfig(target, data, dataset, text, [reason])


def check_sdxl(dataset: DatasetConfig, config: TrainConfig, family: str = "SDXL") -> None:
    """What sdxl_train_network.py asserts about the dataset (see the module docstring); FLUX.1's and
    SD3's scripts assert the same (verify_bucket_reso_steps(32), is_text_encoder_output_cacheable)."""
    where = dataset.source
    general = dataset.data.get("general", {})
    for table in dataset.data["datasets"]:
        steps = _effective("bucket_reso_steps", table, general)
        steps = 64 if steps is MISSING else steps  # sd-scripts' --bucket_reso_steps default
        if not isinstance(steps, int) or steps % 32:
            raise CurateError(f"{where}: bucket_reso_steps = {steps}, but {family} needs a multiple of 32 "
                              "(sd-scripts refuses it); set bucket_reso_steps to 32 or 64")
        if not config.cache_text_encoder_outputs:
            continue
        for subset in table.get("subsets", []):
            varying = [k for k in ("shuffle_caption", "caption_dropout_rate", "caption_tag_dropout_rate",
                                   "token_warmup_step", "caption_dropout_every_n_epochs")
                       if _effective(k, subset, table, general) not in (MISSING, False, 0)]
            if varying:
                raise CurateError(f"{where}: subset {subset.get('image_dir')} sets {', '.join(varying)}, so "
                                  "its text encoder outputs change every step; turn them off, or "
                                  "cache_text_encoder_outputs off")


def _read(path: Path) -> dict[str, Any]:
    return kohya.load_toml(path)


def _effective(key: str, *tables: dict[str, Any]) -> Any:
    """The value sd-scripts uses: the innermost table that sets it (subset, dataset, general)."""
    return kohya.effective(key, *tables, default=MISSING)


def adapt(data: dict[str, Any], source: Path, over: dict[str, Any]) -> list[str]:
    """Set `over` and absolute image_dir paths in `data`; why it changed (empty: unchanged)."""
    general = data.get("general", {})
    changed: dict[str, Any] = {}
    relative = False
    for dataset in data["datasets"]:
        for key in DATASET_KEYS:
            if key in over and _effective(key, dataset, general) != over[key]:
                dataset[key] = changed[key] = over[key]
        for subset in dataset.get("subsets", []):
            for key in SUBSET_KEYS:
                if key in over and _effective(key, subset, dataset, general) != over[key]:
                    subset[key] = changed[key] = over[key]
            image_dir = subset.get("image_dir")
            if isinstance(image_dir, str) and not Path(image_dir).is_absolute():
                subset["image_dir"] = str((source.parent / image_dir).absolute())
                relative = True
    reasons = [f"{k} = {v!r} from the train config" for k, v in changed.items()]
    if relative:
        reasons.append("image_dir made absolute (sd-scripts resolves relative paths from its own folder)")
    return reasons


def _unread_by_builtin(data: dict[str, Any], source: Path) -> list[str]:
    known = BUILTIN_SUBSET_KEYS | {f.name for f in fields(BucketConfig)} | {"batch_size", "subsets"}
    subsets = [s for d in data["datasets"] for s in d.get("subsets", [])]
    tables = [data.get("general", {}), *data["datasets"], *subsets]
    extra = sorted({k for t in tables for k in t} - known)
    if not extra:
        return []
    return [f"{source} sets {', '.join(extra)}: sd-scripts applies them, the builtin trainer does not"]


def folder_data(root: Path, config: TrainConfig) -> dict[str, Any]:
    """Folder mode as TOML data: the `N_name` folders curate.trainer.data would read, with their settings."""
    subsets = project_subsets(root, Path(config.reg_data_dir).expanduser() if config.reg_data_dir else None)
    if not any(not s.is_reg for s in subsets):
        raise CurateError(f"{root}: no training images (folder mode needs N_name subfolders, e.g. 10_sks)")
    buckets, over = BucketConfig(), overrides(config)
    width, height = buckets.resolution
    dataset: dict[str, Any] = {
        "resolution": width if width == height else [width, height], "batch_size": 1,
        "enable_bucket": buckets.enable_bucket, "min_bucket_reso": buckets.min_bucket_reso,
        "max_bucket_reso": buckets.max_bucket_reso, "bucket_reso_steps": buckets.bucket_reso_steps,
        "bucket_no_upscale": buckets.bucket_no_upscale}
    dataset.update({k: v for k, v in over.items() if k in DATASET_KEYS})
    dataset["subsets"] = [subset_table(s) for s in subsets]
    return {"general": {k: v for k, v in over.items() if k in SUBSET_KEYS}, "datasets": [dataset]}


def dumps(data: dict[str, Any], title: str) -> str:
    """TOML for sd-scripts' dataset config shape (curate.kohya's one writer)."""
    return kohya.dumps(data, [f"Written by `curate train --backend kohya`: {title}",
                              "Pass to sd-scripts with --dataset_config (image_dir paths are absolute)."])
