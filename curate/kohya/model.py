"""The Kohya dataset model: subsets and datasets as sd-scripts' `--dataset_config` reads them.

One definition of what a dataset.toml may say and how its levels combine, restating
`library/config_util.py` of kohya-ss/sd-scripts (pinned in tests/data/sd_scripts_dataset.json,
`config` section, by tests/data/extract_sd_scripts_dataset.py):

- a value is looked up in the subset, then its `[[datasets]]` table, then `[general]`, then
  the command line, then the parameter class's default (`generate_params_by_fallbacks`; a value
  set to false still wins over an outer true); a key may sit at a level only where the
  ConfigSanitizer schema allows it (ALLOWED): `image_dir`, `is_reg`, `alpha_mask` and
  `metadata_file` only on a subset, the dataset keys (resolution, batch_size, buckets...) only on
  a dataset or in `[general]`, the other subset keys (num_repeats, class_tokens,
  caption_extension, shuffle_caption...) at any level;
- a DreamBooth subset reads captions with `caption_extension` (default `.caption`, a missing
  dot added), and its class tokens caption images that have no caption file.

`Subset` is one image folder with its settings, `Dataset` one `[[datasets]]` table, and
`DatasetConfig` a whole dataset.toml (or a folder read in folder mode), with the problems
found while reading it. Readers and the writer are in curate.kohya.toml_io and .folders.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from curate.kohya.rules import caption_extension

# Where each key may be written (ConfigSanitizer's schemas, with train_network's DreamBooth,
# fine-tuning and dropout support): ASCENDABLE keys at any level, SUBSET_ONLY ones only in a
# [[datasets.subsets]] table, DATASET_KEYS in a [[datasets]] table or [general]. Anything else
# makes sd-scripts refuse the file ("Invalid user config").
ASCENDABLE = frozenset({
    "color_aug", "face_crop_aug_range", "flip_aug", "num_repeats", "random_crop", "shuffle_caption",
    "keep_tokens", "keep_tokens_separator", "secondary_separator", "caption_separator", "enable_wildcard",
    "token_warmup_min", "token_warmup_step", "caption_prefix", "caption_suffix", "custom_attributes",
    "resize_interpolation", "caption_dropout_every_n_epochs", "caption_dropout_rate",
    "caption_tag_dropout_rate", "caption_extension", "class_tokens", "cache_info"})
SUBSET_ONLY = frozenset({"image_dir", "is_reg", "alpha_mask", "metadata_file"})
DATASET_KEYS = frozenset({
    "batch_size", "bucket_no_upscale", "bucket_reso_steps", "enable_bucket", "max_bucket_reso",
    "min_bucket_reso", "validation_seed", "validation_split", "resolution", "network_multiplier",
    "resize_interpolation"})
ALLOWED = {"subset": ASCENDABLE | SUBSET_ONLY, "dataset": ASCENDABLE | DATASET_KEYS | {"subsets"},
           "general": ASCENDABLE | DATASET_KEYS}
# A DreamBooth subset's parameters and their defaults (DreamBoothSubsetParams; caption_separator
# and keep_tokens_separator are the one-element tuples of the class, unwrapped as sd-scripts'
# subset classes do; "" stands for keep_tokens_separator's None).
SUBSET_DEFAULTS: dict[str, Any] = {
    "num_repeats": 1, "shuffle_caption": False, "caption_separator": ",", "keep_tokens": 0,
    "keep_tokens_separator": "", "secondary_separator": None, "enable_wildcard": False,
    "color_aug": False, "flip_aug": False, "face_crop_aug_range": None, "random_crop": False,
    "caption_prefix": None, "caption_suffix": None, "caption_dropout_rate": 0.0,
    "caption_dropout_every_n_epochs": 0, "caption_tag_dropout_rate": 0.0, "token_warmup_min": 1,
    "token_warmup_step": 0, "custom_attributes": None, "validation_seed": 0, "validation_split": 0.0,
    "resize_interpolation": None, "is_reg": False, "class_tokens": None, "caption_extension": ".caption",
    "cache_info": False, "alpha_mask": False,
}
# Keys of a dataset (DreamBoothDatasetParams), which [general] may set for every dataset.
DATASET_DEFAULTS: dict[str, Any] = {
    "resolution": None, "network_multiplier": 1.0, "debug_dataset": False, "validation_seed": None,
    "validation_split": 0.0, "resize_interpolation": None, "batch_size": 1, "enable_bucket": False,
    "min_bucket_reso": 256, "max_bucket_reso": 1024, "bucket_reso_steps": 64, "bucket_no_upscale": False,
    "prior_loss_weight": 1.0,
}
# What each key must hold (the schema's types; an int is accepted where a float is).
KEY_TYPES: dict[str, tuple[type, ...]] = {
    **{k: (bool,) for k in ("shuffle_caption", "enable_wildcard", "color_aug", "flip_aug", "random_crop",
                            "is_reg", "cache_info", "alpha_mask", "enable_bucket", "bucket_no_upscale")},
    **{k: (int,) for k in ("num_repeats", "keep_tokens", "caption_dropout_every_n_epochs", "token_warmup_min",
                           "batch_size", "min_bucket_reso", "max_bucket_reso", "bucket_reso_steps",
                           "validation_seed")},
    **{k: (float, int) for k in ("caption_dropout_rate", "caption_tag_dropout_rate", "token_warmup_step",
                                 "validation_split", "network_multiplier", "prior_loss_weight")},
    **{k: (str,) for k in ("image_dir", "metadata_file", "class_tokens", "caption_extension",
                           "keep_tokens_separator", "secondary_separator", "caption_separator",
                           "caption_prefix", "caption_suffix", "resize_interpolation",
                           "conditioning_data_dir")},
    "resolution": (int, list), "face_crop_aug_range": (list,), "custom_attributes": (dict,),
}


def effective(key: str, *levels: dict[str, Any], default: Any = None) -> Any:
    """sd-scripts' `search_value`: the first level (subset, dataset, general, command line)
    holding a value that is not None, else the default."""
    for level in levels:
        value = level.get(key)
        if value is not None:
            return value
    return default


@dataclass(frozen=True)
class Subset:
    """One image folder and the settings sd-scripts reads it with."""

    image_dir: Path
    num_repeats: int = 1
    class_tokens: str | None = None
    is_reg: bool = False
    # None: not set anywhere in the file; sd-scripts then uses --caption_extension (".caption")
    caption_extension: str | None = None
    shuffle_caption: bool = False
    caption_separator: str = ","
    keep_tokens: int = 0
    keep_tokens_separator: str = ""
    secondary_separator: str | None = None
    enable_wildcard: bool = False
    caption_prefix: str | None = None
    caption_suffix: str | None = None
    caption_dropout_rate: float = 0.0
    caption_dropout_every_n_epochs: int = 0
    caption_tag_dropout_rate: float = 0.0
    token_warmup_min: int = 1
    token_warmup_step: float = 0
    color_aug: bool = False
    flip_aug: bool = False
    random_crop: bool = False
    alpha_mask: bool = False
    metadata_file: str | None = None  # a fine-tuning subset: captions come from this file
    source: str = field(default="", compare=False)  # "dataset.toml subset 2", "folder 10_sks"

    def __post_init__(self) -> None:
        if self.caption_extension:  # sd-scripts adds a missing dot: "txt" reads a.txt
            object.__setattr__(self, "caption_extension", caption_extension(self.caption_extension))

    def read_extension(self, default: str = ".caption") -> str:
        """The caption extension used: the file's, else `default` (sd-scripts' --caption_extension)."""
        return self.caption_extension or caption_extension(default)

    @property
    def tags_move(self) -> bool:
        """keep_tokens_separator only splits when tags move (shuffle, tag dropout, token warm-up);
        otherwise sd-scripts trains the separator as text."""
        return bool(self.shuffle_caption or self.caption_tag_dropout_rate or self.token_warmup_step)

    @property
    def captions_from_files(self) -> bool:
        return self.metadata_file is None


SUBSET_FIELDS = frozenset(f.name for f in fields(Subset)) - {"source"}


@dataclass(frozen=True)
class Problem:
    """Something sd-scripts would refuse or read otherwise than meant; `line` is 1-based."""

    problem: str
    fix: str
    line: int | None = None


@dataclass
class Dataset:
    """One [[datasets]] table: its subsets and its dataset-level settings (set ones only)."""

    subsets: list[Subset] = field(default_factory=list)
    settings: dict[str, Any] = field(default_factory=dict)

    def setting(self, key: str) -> Any:
        """A dataset setting as sd-scripts uses it: set, else its default."""
        return self.settings.get(key, DATASET_DEFAULTS.get(key))


@dataclass
class DatasetConfig:
    """A dataset.toml (`path`), or train/reg folders read in folder mode (`path` None)."""

    root: Path  # the folder holding dataset.toml, or the train data dir
    path: Path | None
    datasets: list[Dataset] = field(default_factory=list)
    general: dict[str, Any] = field(default_factory=dict)
    problems: list[Problem] = field(default_factory=list)
    unreadable: bool = False  # the file could not be read or parsed: nothing else was read

    @property
    def subsets(self) -> list[Subset]:
        return [s for d in self.datasets for s in d.subsets]

    @property
    def first(self) -> Dataset:
        return self.datasets[0] if self.datasets else Dataset()
