"""The `ss_*` fields of sd-scripts' train_network.py that come from the dataset, the epoch plan
and the base model file (curate.trainer.checkpoint.training_metadata adds the run's settings).

- `ss_datasets`: the JSON list train_network.py writes in dataset-config mode, one entry per
  dataset (curate trains the first) with its subsets, key for key as sd-scripts writes them,
  plus each subset's caption dropout settings (sd-scripts records those only run-wide);
- the run-wide `ss_caption_*`, `ss_flip_aug`, `ss_shuffle_caption`, ... that sd-scripts takes
  from its command line, which in folder mode every subset shares: here the value every
  training subset shares, else sd-scripts' default;
- `ss_num_batches_per_epoch` (batches per process, as len(train_dataloader) after accelerate
  splits it) and `ss_num_epochs` (ceil(max_train_steps / optimiser steps per epoch));
- `ss_sd_model_hash` / `ss_new_sd_model_hash`: train_util.model_hash and calculate_sha256 of a
  single-file base model. For a diffusers folder sd-scripts writes "IsADirectory" (its open()
  fails); curate leaves the two out.
- what curate does not have, at the value sd-scripts writes when it is not used (no
  validation split, l2 loss, no fp8, no ip-noise-gamma).
"""

from __future__ import annotations

import hashlib
import math
import random
from pathlib import Path
from typing import Any

from curate.paths import display
from curate.trainer.data import Dataset, bucket_info, steps_per_epoch

LEGACY_OFFSET, LEGACY_SIZE = 0x100000, 0x10000
# What train_network.py writes for the features curate does not have, at their defaults there.
UNUSED: dict[str, Any] = {
    "num_validation_images": 0, "full_fp16": False, "lowram": False, "training_comment": None,
    "face_crop_aug_range": None, "ip_noise_gamma": None, "ip_noise_gamma_random_strength": False,
    "noise_offset_random_strength": False, "loss_type": "l2", "huber_schedule": "snr", "huber_scale": 1.0,
    "huber_c": 0.1, "fp8_base": False, "fp8_base_unet": False, "validation_seed": None,
    "validation_split": 0.0, "max_validation_steps": None, "validate_every_n_epochs": None,
    "validate_every_n_steps": None, "resize_interpolation": None,
}
# subset settings sd-scripts records run-wide, with its command-line defaults
RUN_WIDE: dict[str, Any] = {
    "caption_dropout_rate": 0.0, "caption_dropout_every_n_epochs": 0, "caption_tag_dropout_rate": 0.0,
    "color_aug": False, "flip_aug": False, "random_crop": False, "shuffle_caption": False, "keep_tokens": 0,
}
# subset_metadata's keys in train_network.py, read from curate.kohya.Subset
SUBSET_KEYS = ("num_repeats", "color_aug", "flip_aug", "random_crop", "shuffle_caption", "keep_tokens",
               "keep_tokens_separator", "secondary_separator", "enable_wildcard", "caption_prefix",
               "caption_suffix")
DROPOUT_KEYS = ("caption_dropout_rate", "caption_dropout_every_n_epochs", "caption_tag_dropout_rate")


def model_hashes(path: Path) -> tuple[str | None, str | None]:
    """(ss_sd_model_hash, ss_new_sd_model_hash) of a base model file, as train_util.model_hash
    (sha256 of the 64 KiB at 1 MiB, 8 hex digits) and calculate_sha256 (of the whole file)
    compute them; (None, None) for a folder."""
    if not path.is_file():
        return None, None
    whole = hashlib.sha256()
    with path.open("rb") as fh:
        fh.seek(LEGACY_OFFSET)
        legacy = hashlib.sha256(fh.read(LEGACY_SIZE)).hexdigest()[:8]
        fh.seek(0)
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            whole.update(chunk)
    return legacy, whole.hexdigest()


def run_wide(dataset: Dataset) -> dict[str, Any]:
    """Each RUN_WIDE setting: the value every training subset has, else sd-scripts' default."""
    train = [s for s in dataset.subsets if not s.is_reg] or list(dataset.subsets)
    out = {}
    for key, default in RUN_WIDE.items():
        values = {getattr(s, key) for s in train}
        out[key] = values.pop() if len(values) == 1 else default
    return out


def datasets_json(dataset: Dataset) -> list[dict[str, Any]]:
    """ss_datasets: train_network.py's datasets_metadata for the one dataset curate trains."""
    subsets = []
    for subset in dataset.subsets:
        entry: dict[str, Any] = {"img_count": sum(1 for i in dataset.items if i.subset is subset)}
        entry |= {key: getattr(subset, key) for key in SUBSET_KEYS}
        # display: a folder name that is not UTF-8 (surrogates) cannot go into the file's JSON header
        tokens = subset.class_tokens
        entry |= {"resize_interpolation": None, "image_dir": display(subset.image_dir.name),
                  "class_tokens": display(tokens) if tokens else tokens, "is_reg": subset.is_reg}
        entry |= {key: getattr(subset, key) for key in DROPOUT_KEYS}
        subsets.append(entry)
    buckets = dataset.buckets
    return [{
        "is_dreambooth": True, "batch_size_per_device": dataset.batch_size,
        "num_train_images": dataset.num_train_images, "num_reg_images": dataset.num_reg_images,
        "resolution": list(buckets.resolution), "enable_bucket": buckets.enable_bucket,
        "min_bucket_reso": buckets.min_bucket_reso, "max_bucket_reso": buckets.max_bucket_reso,
        "tag_frequency": dataset.tag_frequency(), "bucket_info": bucket_info(dataset),
        "resize_interpolation": None, "subsets": subsets,
    }]


def dataset_fields(dataset: Dataset, model: Path, total_steps: int, gradient_accumulation_steps: int,
                   processes: int = 1) -> dict[str, Any]:
    """The ss_* values (without the prefix) this module adds; see the module doc."""
    batches = math.ceil(steps_per_epoch(dataset) / processes)
    updates = math.ceil(batches / gradient_accumulation_steps)
    sd_hash, new_hash = model_hashes(model)
    return {
        **UNUSED, **run_wide(dataset),
        # train_network.py's random.randint(0, 2**32): which group of epochs a file came from
        "session_id": random.SystemRandom().randint(0, 2**32),
        "num_batches_per_epoch": batches, "num_epochs": math.ceil(total_steps / updates),
        "total_batch_size": dataset.batch_size * processes * gradient_accumulation_steps,
        "datasets": datasets_json(dataset), "sd_model_hash": sd_hash, "new_sd_model_hash": new_hash,
    }
