"""Reading a Kohya dataset as sd-scripts does (REFERENCE §1), and planning each epoch's batches.

Two ways in: a `dataset.toml` (what `curate layout` writes; folder names are not parsed, every
subset says its num_repeats and class_tokens), or folder mode, where each immediate subfolder
`N_name` of the dataset (or of its `img/` and `reg/` folders, as `curate layout` arranges
them) holds images repeated N times with class tokens "name". Images are globbed
non-recursively with sd-scripts' extensions, all-lower or ALL-UPPER only; a caption is the first
line of stem + caption_extension (or, for a face-crop name `a_x_y_w_h.png`, of `a` +
caption_extension; every line with enable_wildcard), the class tokens when it is missing; an
empty caption file is an error (sd-scripts asserts). Folder names, extensions and caption files
are read by `curate.kohya`, pinned against sd-scripts. Unlike sd-scripts, a caption symlink
leaving the dataset, a caption over 1 MiB and a FIFO or device are refused with the reason
(never opened: a FIFO would hang the run). Buckets come from the `buckets` package, which reproduces
sd-scripts' BucketManager. Regularisation images count as many as the training images (with
repeats), as sd-scripts' DreamBoothDataset registers them: capped when there are more, repeated
when there are fewer (`balance_reg`).
"""

from __future__ import annotations

import math
import os
import random
import re
from collections import Counter
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any

from PIL import Image

from curate import kohya
from curate.buckets import BucketConfig, assign
from curate.buckets.assign import Assignment
from curate.errors import CurateError
from curate.kohya import (
    SD_IMAGE_EXTS,
    Subset,
    caption_names,
    caption_text,
    read_caption_bytes,
    readable_plugin_exts,
    sd_image,
)
from curate.paths import display, printable, special_file_reason

IMAGE_EXTENSIONS = SD_IMAGE_EXTS
# Where neither the dataset.toml nor the train config names one (curate and taggers write .txt;
# sd-scripts' own default is .caption, which the kohya backend writes out explicitly).
DEFAULT_CAPTION_EXT = ".txt"
# The subset settings the builtin trainer applies (the kohya backend notes the others it is given).
BUILTIN_SUBSET_KEYS = frozenset({
    "image_dir", "num_repeats", "class_tokens", "is_reg", "caption_extension", "shuffle_caption",
    "caption_separator", "keep_tokens", "keep_tokens_separator", "caption_dropout_rate",
    "caption_tag_dropout_rate", "caption_prefix", "caption_suffix", "enable_wildcard", "flip_aug",
    "caption_dropout_every_n_epochs", "alpha_mask"})
# ss_tag_frequency bounds. sd-scripts stores every distinct tag of every folder; one huge caption
# made 16.7 MB of metadata. A1111 lists the most frequent tags, so each folder keeps its
# MAX_FOLDER_TAGS most frequent ones, and a "tag" longer than MAX_TAG_CHARS (text without
# commas, not a tag) is left out.
MAX_FOLDER_TAGS = 1000
MAX_TAG_CHARS = 200


@dataclass(frozen=True)
class Item:
    path: Path
    caption: str
    subset: Subset
    assignment: Assignment


@dataclass(frozen=True)
class Dataset:
    items: tuple[Item, ...]
    buckets: BucketConfig
    batch_size: int
    subsets: tuple[Subset, ...]
    # (file, reason) for each image left out: unreadable, not a file, a caption that cannot be
    # used. sd-scripts would stop (or hang, on a FIFO) at the first; one bad file in a scraped
    # dataset should cost that file, said in one line, not the run.
    skipped: tuple[tuple[str, str], ...] = ()

    @property
    def train_items(self) -> list[Item]:
        return [i for i in self.items if not i.subset.is_reg]

    def repeated(self) -> list[Item]:
        """Every item as often as it trains per epoch: train x repeats, reg balanced to match."""
        out = [item for item in self.train_items for _ in range(item.subset.num_repeats)]
        return out + balance_reg([i for i in self.items if i.subset.is_reg], len(out))

    @property
    def num_train_images(self) -> int:
        """sd-scripts' num_train_images (ss_num_train_images): training images x repeats."""
        return sum(item.subset.num_repeats for item in self.train_items)

    @property
    def num_reg_images(self) -> int:
        """sd-scripts' num_reg_images (ss_num_reg_images): reg images x repeats, before the cap."""
        return sum(item.subset.num_repeats for item in self.items if item.subset.is_reg)

    def tag_frequency(self) -> dict[str, dict[str, int]]:
        """ss_tag_frequency: per training folder, in how many captions each tag appears (bounded:
        see MAX_FOLDER_TAGS)."""
        out: dict[str, Counter[str]] = {}
        for item in self.train_items:
            tags = {t.strip().lower() for t in item.caption.split(",") if 0 < len(t.strip()) <= MAX_TAG_CHARS}
            out.setdefault(display(item.subset.image_dir.name), Counter()).update(tags)
        return {folder: dict(sorted(counter.items(), key=lambda kv: (-kv[1], kv[0]))[:MAX_FOLDER_TAGS])
                for folder, counter in out.items()}

    def dataset_dirs(self, reg: bool = False) -> dict[str, dict[str, int]]:
        """ss_dataset_dirs: {folder: {n_repeats, img_count}}."""
        return {display(s.image_dir.name): {"n_repeats": s.num_repeats,
                                   "img_count": sum(1 for i in self.items if i.subset is s)}
                for s in self.subsets if s.is_reg == reg}


def balance_reg(reg: list[Item], train_count: int) -> list[Item]:
    """sd-scripts' DreamBoothDataset: reg images are registered in order, each with its repeats,
    until they reach the train count (the rest are not used: 15 reg items against 6 train items
    register 6); when all of them fall short, each gets one more repeat in turn until they match."""
    out: list[Item] = []
    for item in reg:
        if len(out) >= train_count:
            break
        out += [item] * item.subset.num_repeats
    while reg and len(out) < train_count:
        out += reg[: train_count - len(out)]
    return out


def list_images(folder: Path, skipped: list[tuple[str, str]] | None = None) -> list[Path]:
    """sd-scripts' glob: no recursion; `.png` or `.PNG` but not `.Png`; `.avif` / `.jxl` where
    Pillow here reads them. Symlinks are followed to regular files; a FIFO or device is left
    out without being opened, with its reason in `skipped`."""
    extra = readable_plugin_exts()
    found = []
    for path in sorted(folder.iterdir()):
        if not sd_image(path.name, extra):
            continue
        try:
            reason = special_file_reason(path.stat().st_mode)
        except OSError as exc:
            reason = f"cannot read image ({exc.strerror}); fix or remove it"
        if reason is not None:
            if skipped is not None:
                skipped.append((display(path), reason))
        elif path.is_file():
            found.append(path)
    return found


def read_caption(image: Path, subset: Subset, root: Path | None = None) -> str:
    """The caption sd-scripts trains `image` with (see the module doc); `root` is the dataset,
    which a symlinked caption may not leave."""
    ext = subset.read_extension(DEFAULT_CAPTION_EXT)
    names = [image.with_name(n) for n in caption_names(image.name, ext)]
    path = next((p for p in names if os.path.lexists(p) and not p.is_dir()), None)
    if path is None:
        return subset.class_tokens or ""
    data = read_caption_bytes(path, tuple(r for r in (root, subset.image_dir) if r is not None))
    if isinstance(data, str):
        raise CurateError(f"{display(path)}: caption {data}")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise CurateError(f"{display(path)}: caption is not UTF-8 ({exc}); re-save it as UTF-8") from exc
    caption = caption_text(text, subset.enable_wildcard)
    if caption is None:
        raise CurateError(f"{display(path)}: empty caption file (sd-scripts stops on it); "
                          "write a caption or delete the file")
    return caption


def project_subsets(root: Path, reg_dir: Path | None = None) -> list[Subset]:
    """Folder mode: `N_name` subfolders of root, or of root/img and root/reg (curate layout's);
    with `reg_dir` (sd-scripts' --reg_data_dir), root's and reg_dir's N_name folders."""
    if reg_dir is None:
        return list(kohya.read_project(root).subsets)
    if not reg_dir.is_dir():
        raise CurateError(f"{display(reg_dir)}: reg_data_dir is not a folder (it holds N_name folders of "
                          "regularisation images)")
    if (root / "img").is_dir():
        raise CurateError(f"{display(root)}: has img/ (and reg/) folders already; leave reg_data_dir unset "
                          "or pass the img folder itself")
    return list(kohya.read_folders(root, reg_dir).subsets)


def folder_subsets(root: Path, defaults: dict[str, Any], reg_dir: Path | None = None) -> list[Subset]:
    return [replace(s, **defaults) for s in project_subsets(root, reg_dir)]


def toml_subsets(path: Path) -> tuple[list[Subset], dict[str, Any]]:
    """Subsets of the first [[datasets]] of a dataset.toml, and that dataset's settings (each
    merged over [general] as sd-scripts does: curate.kohya.read_toml)."""
    config = kohya.read_toml(path)
    if config.problems:
        first = config.problems[0]
        line = f" (line {first.line})" if first.line else ""
        raise CurateError(f"{display(path)}{line}: {first.problem}; {first.fix}")
    dataset = config.first
    return list(dataset.subsets), dict(dataset.settings)


def bucket_config(settings: dict[str, Any]) -> BucketConfig:
    names = {f.name for f in fields(BucketConfig)}
    values = {k: v for k, v in settings.items() if k in names}
    if isinstance(values.get("resolution"), str):  # sd-scripts' "512,768"
        values["resolution"] = tuple(int(v) for v in values["resolution"].split(","))
    return BucketConfig(**values)


def load_dataset(root: Path, overrides: dict[str, Any] | None = None, reg_dir: Path | None = None) -> Dataset:
    """The dataset at `root` (a dataset.toml, or a folder); `overrides` are sd-scripts subset /
    dataset field values that win over the file (None values are ignored); `reg_dir` a folder of
    N_name regularisation folders (folder mode only)."""
    overrides = {k: v for k, v in (overrides or {}).items() if v is not None}
    subset_names = {f.name for f in fields(Subset)} - {"image_dir", "num_repeats", "class_tokens", "is_reg"}
    subset_over = {k: v for k, v in overrides.items() if k in subset_names}
    toml_path = root if root.is_file() else root / "dataset.toml"
    if toml_path.is_file():
        if reg_dir is not None:
            raise CurateError(f"{display(toml_path)} lists its own subsets; a reg_data_dir goes into it as a "
                              "subset with is_reg = true, so leave reg_data_dir unset")
        subsets, settings = toml_subsets(toml_path)
        subsets = [replace(s, **subset_over) for s in subsets]
    elif root.is_dir():
        subsets, settings = folder_subsets(root, subset_over, reg_dir), {"enable_bucket": True}
    else:
        raise CurateError(f"{root}: no such dataset folder or dataset.toml")
    settings = {**settings, **{k: v for k, v in overrides.items() if k not in subset_names}}
    buckets = bucket_config(settings)
    top = root if root.is_dir() else root.parent
    items, skipped = [], []
    for subset in subsets:
        for path in _images(subset, skipped):
            try:
                items.append(_item(path, subset, buckets, top))
            except CurateError as exc:  # its message names the file and what to do
                skipped.append((display(path), str(exc).removeprefix(f"{display(path)}: ")))
    if not any(not i.subset.is_reg for i in items):
        hint = f"; {len(skipped)} images left out, e.g. {': '.join(skipped[0])}" if skipped else ""
        raise CurateError(f"{root}: no training images (folder mode needs N_name subfolders, e.g. 10_sks)"
                          + hint)
    return Dataset(tuple(items), buckets, int(settings.get("batch_size", 1)), tuple(subsets),
                   tuple(skipped))


def _images(subset: Subset, skipped: list[tuple[str, str]]) -> list[Path]:
    if not subset.image_dir.is_dir():
        raise CurateError(f"{display(subset.image_dir)}: image folder of a subset does not exist")
    return list_images(subset.image_dir, skipped)


def _item(path: Path, subset: Subset, buckets: BucketConfig, root: Path) -> Item:
    try:
        with Image.open(path) as image:
            size = image.size
    except Image.DecompressionBombError as exc:
        raise CurateError(f"{display(path)}: declares more pixels than Pillow will open "
                          f"({printable(str(exc)).split('.')[0]}); resize it or remove it") from exc
    except OSError as exc:
        raise CurateError(f"{display(path)}: cannot read image ({printable(str(exc))})") from exc
    return Item(path, read_caption(path, subset, root), subset, assign(size, buckets))


def process_caption(caption: str, subset: Subset, rng: random.Random, epoch: int = 1) -> str:
    """Prefix/suffix, caption dropout, then shuffle and tag dropout of the tags after the kept
    head (keep_tokens tags, or the part before keep_tokens_separator), as sd-scripts does.
    `epoch` counts from 1, as sd-scripts' current_epoch: caption_dropout_every_n_epochs = N
    empties every caption of epochs N, 2N, ..."""
    if subset.caption_prefix:
        caption = f"{subset.caption_prefix} {caption}"
    if subset.caption_suffix:
        caption = f"{caption} {subset.caption_suffix}"
    if subset.caption_dropout_rate > 0 and rng.random() < subset.caption_dropout_rate:
        return ""
    every = subset.caption_dropout_every_n_epochs
    if every > 0 and epoch % every == 0:
        return ""
    caption = _wildcards(caption, rng) if subset.enable_wildcard else caption.split("\n")[0]
    if not (subset.shuffle_caption or subset.caption_tag_dropout_rate > 0):
        return caption
    sep, fixed, tail = subset.caption_separator, [], []
    split = (lambda text: [t.strip() for t in text.split(sep) if t.strip()])  # noqa: E731
    if subset.keep_tokens_separator and subset.keep_tokens_separator in caption:
        head, flex_text = caption.split(subset.keep_tokens_separator, 1)
        if subset.keep_tokens_separator in flex_text:
            flex_text, tail_text = flex_text.split(subset.keep_tokens_separator, 1)
            tail = split(tail_text)
        fixed, flex = split(head), split(flex_text)
    else:
        tokens = [t.strip() for t in caption.strip().split(sep)]
        fixed, flex = tokens[: subset.keep_tokens], tokens[subset.keep_tokens:]
    if subset.shuffle_caption:
        rng.shuffle(flex)
    if subset.caption_tag_dropout_rate > 0:
        flex = [t for t in flex if rng.random() >= subset.caption_tag_dropout_rate]
    return ", ".join(fixed + flex + tail)


def _wildcards(caption: str, rng: random.Random) -> str:
    """sd-scripts' enable_wildcard: one of the caption's lines, then each `{a|b}` replaced by one
    of its choices (`{{` and `}}` are literal braces)."""
    if "\n" in caption:
        caption = rng.choice(caption.split("\n"))
    open_mark, close_mark = "\u2985", "\u2986"  # stand-ins for escaped braces, as sd-scripts uses
    while open_mark in caption or close_mark in caption:
        open_mark, close_mark = open_mark + "\u2985", close_mark + "\u2986"
    caption = caption.replace("{{", open_mark).replace("}}", close_mark)
    caption = re.sub(r"\{([^}]+)\}", lambda m: rng.choice(m.group(1).split("|")), caption)
    return caption.replace(open_mark, "{").replace(close_mark, "}")


def epoch_batches(dataset: Dataset, epoch: int, seed: int) -> list[list[Item]]:
    """The batches of one epoch: items per bucket shuffled, cut into batches, batches shuffled.

    Seeded by (seed, epoch) alone, so a resumed run sees exactly the batches it would have seen.
    """
    rng = random.Random(f"{seed}-epoch-{epoch}")
    by_bucket: dict[tuple[int, int], list[Item]] = {}
    for item in dataset.repeated():
        by_bucket.setdefault(item.assignment.bucket, []).append(item)
    batches = []
    for bucket in sorted(by_bucket):
        items = by_bucket[bucket]
        rng.shuffle(items)
        size = dataset.batch_size
        batches += [items[i:i + size] for i in range(0, len(items), size)]
    rng.shuffle(batches)
    return batches


def steps_per_epoch(dataset: Dataset) -> int:
    counts = Counter(item.assignment.bucket for item in dataset.repeated())
    return sum(math.ceil(n / dataset.batch_size) for n in counts.values())


def bucket_info(dataset: Dataset) -> dict[str, Any]:
    """ss_bucket_info: images per bucket (with repeats) and the mean aspect-ratio error."""
    counts = Counter(item.assignment.bucket for item in dataset.repeated())
    errors = [abs(item.assignment.aspect_error) for item in dataset.items]
    buckets = {str(i): {"resolution": list(b), "count": counts[b]} for i, b in enumerate(sorted(counts))}
    return {"buckets": buckets, "mean_img_ar_error": sum(errors) / max(len(errors), 1)}


def crop_ltrb(item: Item) -> tuple[float, float, float, float]:
    """sd-scripts' `BucketManager.get_crop_ltrb`: not the trim of the resized image but Stability
    AI's box of the image fitted *inside* its bucket (left, top, right, bottom), in floats."""
    (bucket_w, bucket_h), (image_w, image_h) = item.assignment.bucket, item.assignment.size
    image_ar = image_w / image_h
    if bucket_w / bucket_h > image_ar:
        resized_w, resized_h = bucket_h * image_ar, float(bucket_h)
    else:
        resized_w, resized_h = float(bucket_w), bucket_w / image_ar
    left, top = (bucket_w - resized_w) // 2, (bucket_h - resized_h) // 2
    return left, top, left + resized_w, top + resized_h


def size_conditioning(item: Item, flipped: bool = False) -> tuple[int, int, int, int, int, int]:
    """SDXL's six size numbers for an item, as sd-scripts computes them: (original height, width,
    crop top, crop left, target height, width). The target is the bucket, the crop `crop_ltrb`'s
    corner; a mirrored image's left is the bucket width minus the box's right edge."""
    (bucket_w, bucket_h), (image_w, image_h) = item.assignment.bucket, item.assignment.size
    left, top, right, _ = crop_ltrb(item)
    if flipped:
        left = bucket_w - right
    return image_h, image_w, int(top), int(left), bucket_h, bucket_w


def check_sdxl_dataset(dataset: Dataset, where: Path) -> None:
    """SDXL's latents are cut in 32-pixel steps: sd-scripts asserts bucket_reso_steps % 32 == 0."""
    steps = dataset.buckets.bucket_reso_steps
    if steps % 32:
        raise CurateError(f"{where}: bucket_reso_steps = {steps}, but SDXL needs a multiple of 32 "
                          "(sd-scripts refuses it too); set bucket_reso_steps to 32 or 64")


def cacheable_captions(dataset: Dataset, where: Path, train_text_encoder: bool) -> list[str]:
    """Every caption as training will see it, for cache_text_encoder_outputs; refused (as sd-scripts
    does) when the text encoders train or a subset shuffles or drops captions or tags."""
    if train_text_encoder:
        raise CurateError("cache_text_encoder_outputs needs frozen text encoders: set "
                          "train_text_encoder = false, or turn the cache off")
    for subset in dataset.subsets:
        # sd-scripts caches them anyway and never drops the epochs' captions: refused, not ignored
        if (subset.shuffle_caption or subset.caption_dropout_rate or subset.caption_tag_dropout_rate
                or subset.caption_dropout_every_n_epochs):
            raise CurateError(f"{where}: subset {subset.image_dir.name} shuffles or drops captions, so its "
                              "text encoder outputs change every step; turn shuffle_caption and the caption "
                              "dropouts off, or cache_text_encoder_outputs off")
    rng = random.Random(0)  # unused: without shuffle or dropout the caption is fixed
    return [process_caption(item.caption, item.subset, rng) for item in dataset.items]
