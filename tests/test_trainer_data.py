"""Reading Kohya datasets as sd-scripts does, caption processing, epoch plans, [train] config."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
from PIL import Image

from curate.errors import CurateError
from curate.trainer.config import TrainConfig, train_config
from curate.trainer.data import Subset, epoch_batches, load_dataset, process_caption, steps_per_epoch


def _image(path: Path, size: tuple[int, int] = (96, 64), caption: str | None = None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, (200, 10, 10)).save(path)
    if caption is not None:
        path.with_suffix(".txt").write_text(caption + "\nsecond line is ignored\n", encoding="utf-8")


SMALL = {"resolution": 64, "min_bucket_reso": 64, "max_bucket_reso": 128}


def test_folder_mode_follows_sd_scripts(tmp_path: Path) -> None:
    _image(tmp_path / "10_sks dog" / "a.png", caption="sks dog, red")
    _image(tmp_path / "10_sks dog" / "b.JPG")  # no caption: class tokens
    _image(tmp_path / "10_sks dog" / "c.Jpg", caption="mixed case extension: skipped")
    _image(tmp_path / "10_sks dog" / "deep" / "d.png", caption="subfolders are not read")
    _image(tmp_path / "dog" / "e.png", caption="no repeat count: skipped")
    dataset = load_dataset(tmp_path, SMALL)
    assert sorted((i.path.name, i.caption, i.subset.num_repeats) for i in dataset.items) == [
        ("a.png", "sks dog, red", 10), ("b.JPG", "sks dog", 10)]
    assert dataset.dataset_dirs() == {"10_sks dog": {"n_repeats": 10, "img_count": 2}}
    assert dataset.tag_frequency() == {"10_sks dog": {"sks dog": 2, "red": 1}}


def test_curate_layout_folders_and_reg_balance(tmp_path: Path) -> None:
    for name in "abc":
        _image(tmp_path / "img" / "2_sks" / f"{name}.png", caption=f"sks, {name}")
    _image(tmp_path / "reg" / "1_dog" / "r.png", caption="dog")
    dataset = load_dataset(tmp_path, {**SMALL, "batch_size": 2})
    repeated = dataset.repeated()
    # 3 images x 2 repeats; the single reg image repeated until it matches them
    assert sum(not i.subset.is_reg for i in repeated) == 6 and sum(i.subset.is_reg for i in repeated) == 6
    assert steps_per_epoch(dataset) == 6 == len(epoch_batches(dataset, 0, 1))
    assert epoch_batches(dataset, 3, 1) == epoch_batches(dataset, 3, 1) != epoch_batches(dataset, 4, 1)


def test_dataset_toml_wins_over_folder_names(tmp_path: Path) -> None:
    _image(tmp_path / "img" / "10_ignored" / "a.png")
    _image(tmp_path / "img" / "10_ignored" / "b.png")
    (tmp_path / "img" / "10_ignored" / "b.caption").write_text("from caption file", encoding="utf-8")
    (tmp_path / "dataset.toml").write_text(
        '[general]\ncaption_extension = ".caption"\n\n[[datasets]]\nresolution = 64\nbatch_size = 2\n'
        "min_bucket_reso = 64\nmax_bucket_reso = 128\n\n  [[datasets.subsets]]\n"
        f'  image_dir = "{tmp_path / "img" / "10_ignored"}"\n  num_repeats = 3\n  class_tokens = "sks cat"\n'
        "  keep_tokens = 1\n  shuffle_caption = true\n", encoding="utf-8")
    dataset = load_dataset(tmp_path)
    assert dataset.batch_size == 2 and dataset.buckets.resolution == (64, 64)
    assert sorted(i.caption for i in dataset.items) == ["from caption file", "sks cat"]
    subset = dataset.items[0].subset
    assert (subset.num_repeats, subset.keep_tokens, subset.shuffle_caption) == (3, 1, True)


def test_empty_caption_is_an_error(tmp_path: Path) -> None:
    _image(tmp_path / "1_x" / "a.png", caption="")
    (tmp_path / "1_x" / "a.txt").write_text("", encoding="utf-8")
    with pytest.raises(CurateError, match="empty caption"):
        load_dataset(tmp_path, SMALL)


def test_shuffle_keeps_the_first_keep_tokens_tags() -> None:
    subset = Subset(Path("."), shuffle_caption=True, keep_tokens=2)
    caption = "sks, 1girl, " + ", ".join(f"tag{i}" for i in range(12))
    rng = random.Random(0)
    seen = {process_caption(caption, subset, rng) for _ in range(30)}
    assert len(seen) > 20
    for out in seen:
        tags = out.split(", ")
        assert tags[:2] == ["sks", "1girl"] and sorted(tags[2:]) == sorted(f"tag{i}" for i in range(12))


def test_keep_tokens_separator_fixes_head_and_tail() -> None:
    subset = Subset(Path("."), shuffle_caption=True, keep_tokens_separator="|||",
                    caption_tag_dropout_rate=0.5)
    rng = random.Random(3)
    for _ in range(20):
        tags = process_caption("sks, woman ||| a, b, c, d, e ||| masterpiece", subset, rng).split(", ")
        assert tags[:2] == ["sks", "woman"] and tags[-1] == "masterpiece" and len(tags) <= 8


def test_caption_dropout_empties_the_caption() -> None:
    subset = Subset(Path("."), caption_dropout_rate=0.5)
    outs = [process_caption("sks, dog", subset, random.Random(i)) for i in range(40)]
    assert 5 < outs.count("") < 35 and set(outs) == {"", "sks, dog"}


def test_train_config_precedence_and_errors(tmp_path: Path) -> None:
    toml = tmp_path / "train.toml"
    toml.write_text('[train]\nnetwork_dim = 16\nlearning_rate = 5e-4\noptimizer = "prodigy"\n',
                    encoding="utf-8")
    flags = {"learning_rate": 1.0, "seed": None}
    config = train_config(toml, ["network_dim=32", "train.min_snr_gamma=5"], flags)
    assert (config.network_dim, config.min_snr_gamma, config.learning_rate) == (32, 5.0, 1.0)
    assert config.optimizer == "prodigy"
    assert config.seed == TrainConfig().seed
    with pytest.raises(CurateError, match="unknown option"):
        train_config(None, ["network_rank=4"])
    with pytest.raises(CurateError, match="at least 1"):
        train_config(None, ["max_train_steps=0"])
    with pytest.raises(CurateError, match="version"):
        train_config(None, ["version=2"])
