"""The one Kohya dataset model (curate.kohya): its readers and writer pinned against sd-scripts'
own rules (tests/data/sd_scripts_dataset.json, `config` and `folders`), import telling Kohya
subsets from scraper folders by content and place, and a kohya_ss project that survives
`curate import` + `curate layout` with its repeats, class tokens, captions and reg images.
"""

from __future__ import annotations

import json
import sqlite3
import tomllib
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from curate import kohya
from curate.cli import cli
from curate.config import toml_value
from curate.kohya.model import SUBSET_FIELDS
from curate.trainer.data import load_dataset
from fixtures.scrape import jpeg, photo, png, write
from tests.test_check import distinct

TABLE = json.loads((Path(__file__).parent / "data" / "sd_scripts_dataset.json").read_text(encoding="utf-8"))
PIN = TABLE["config"]
SMALL = {"resolution": 64, "min_bucket_reso": 64, "max_bucket_reso": 128}


def plain(value: Any) -> Any:
    """sd-scripts' one-element tuple defaults (caption_separator, keep_tokens_separator) as the
    subset classes unwrap them; None separator as ""."""
    if isinstance(value, list) and len(value) == 1:
        value = value[0]
    return value


# --- the pinned dataset.toml rules -----------------------------------------------------------

def test_defaults_are_sd_scripts_parameter_classes() -> None:
    pinned = {k: plain(v) for k, v in PIN["subset_defaults"].items() if k != "image_dir"}
    pinned["keep_tokens_separator"] = pinned["keep_tokens_separator"] or ""
    assert pinned == kohya.SUBSET_DEFAULTS
    assert PIN["dataset_defaults"] == kohya.DATASET_DEFAULTS


def test_key_levels_are_the_sanitizer_schemas() -> None:
    s = {k.removesuffix("_SCHEMA"): set(v) for k, v in PIN["schemas"].items()}
    ascendable = s["SUBSET_ASCENDABLE"] | s["DO_SUBSET_ASCENDABLE"] | s["DB_SUBSET_ASCENDABLE"]
    assert ascendable == kohya.ASCENDABLE
    assert ascendable | s["DB_SUBSET_DISTINCT"] | s["FT_SUBSET_DISTINCT"] == kohya.ALLOWED["subset"]
    assert ascendable | s["DATASET_ASCENDABLE"] | {"subsets"} == kohya.ALLOWED["dataset"]
    assert ascendable | s["DATASET_ASCENDABLE"] == kohya.ALLOWED["general"]


def toml_text(general: dict[str, Any], dataset: dict[str, Any], subset: dict[str, Any]) -> str:
    lines = ["[general]", *(f"{k} = {toml_value(v)}" for k, v in general.items()),
             "[[datasets]]", *(f"{k} = {toml_value(v)}" for k, v in dataset.items()),
             "[[datasets.subsets]]", *(f"{k} = {toml_value(v)}" for k, v in subset.items())]
    return "\n".join(lines) + "\n"


@pytest.mark.parametrize("case", PIN["cases"], ids=[c["name"] for c in PIN["cases"]])
def test_read_toml_merges_levels_as_sd_scripts(case: dict[str, Any], tmp_path: Path) -> None:
    (tmp_path / "imgs").mkdir()
    path = tmp_path / "dataset.toml"
    path.write_text(toml_text(case["general"], case["dataset"], {"image_dir": "imgs", **case["subset"]}))
    config = kohya.read_toml(path)
    assert config.problems == []
    (subset,) = config.subsets
    want = case["subset_params"]
    for name in SUBSET_FIELDS - {"image_dir", "caption_extension", "metadata_file"}:
        expected = plain(want[name])
        if name == "keep_tokens_separator":
            expected = expected or ""
        assert getattr(subset, name) == expected, name
    assert subset.read_extension() == want["caption_extension"]
    assert subset.image_dir == tmp_path / "imgs"
    for name, expected in case["dataset_params"].items():
        assert config.first.setting(name) == expected, name


def test_read_toml_refuses_what_sd_scripts_refuses(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    path = tmp_path / "dataset.toml"
    path.write_text('[general]\nis_reg = true\n[[datasets]]\nalpha_mask = true\n[[datasets.subsets]]\n'
                    'image_dir = "a"\nnum_repeats = 0\nresolution = 512\nkeep_tokens = "2"\n')
    problems = {p.problem: p.line for p in kohya.read_toml(path).problems}
    assert problems == {
        "[general]: is_reg is read only in subset tables": 2,
        "dataset 1: alpha_mask is read only in subset tables": 4,
        "subset 1: resolution is read only in dataset or general tables": 8,
        "subset 1: keep_tokens '2' is not a int": 9,
        "subset 1: num_repeats 0 is not a whole number >= 1": 5,
    }


def test_writer_round_trips_through_the_reader(tmp_path: Path) -> None:
    for name in ("img/10_sks woman", "reg/1_woman"):
        (tmp_path / name).mkdir(parents=True)
    subsets = [kohya.Subset(tmp_path / "img/10_sks woman", 10, "sks woman", caption_extension="txt",
                            shuffle_caption=True, keep_tokens=1, keep_tokens_separator="|||",
                            caption_prefix="photo of", flip_aug=True, alpha_mask=True,
                            caption_tag_dropout_rate=0.1),
               kohya.Subset(tmp_path / "reg/1_woman", 1, "woman", is_reg=True, caption_extension=".txt")]
    settings = {"resolution": [768, 512], "batch_size": 4, "enable_bucket": True, "bucket_reso_steps": 32}
    written = kohya.DatasetConfig(tmp_path, None, [kohya.Dataset(subsets, settings)], {"color_aug": False})
    path = tmp_path / "dataset.toml"
    path.write_text(kohya.write_toml(written, ["test"]), encoding="utf-8")
    read = kohya.read_toml(path)
    assert read.problems == []
    assert read.subsets == subsets and read.first.settings == settings
    assert subsets[0].caption_extension == ".txt"  # sd-scripts adds the dot


def test_folder_mode_reads_names_as_sd_scripts(tmp_path: Path) -> None:
    train = tmp_path / "img"
    cases = [c for c in TABLE["folders"] if c["name"].strip() and "/" not in c["name"]]
    for case in cases:
        (train / case["name"]).mkdir(parents=True)
    read = {s.image_dir.name: s for s in kohya.read_folders(train).subsets}
    assert set(read) == {c["name"] for c in cases if c["read"]}
    for case in cases:
        if case["read"]:
            subset = read[case["name"]]
            assert (subset.num_repeats, subset.class_tokens or "") == (case["repeats"], case["class_tokens"])


# --- which scraped folders are Kohya subsets ---------------------------------------------------

def listing(files: list[str]) -> dict[str, set[str]]:
    out: dict[str, set[str]] = {}
    for rel in files:
        parts = rel.split("/")
        for i in range(len(parts)):
            out.setdefault("/".join(parts[:i]), set()).add(parts[i])
    return out


def test_import_subset_by_content_and_place() -> None:
    names = listing(["proj/img/10_sks woman/a.png", "proj/img/10_sks woman/a.txt",
                     "proj/reg/1_woman/r.png",
                     "dl/danbooru/100_percent_orange_juice/danbooru_1_ab.jpg",
                     "dl/danbooru/100_percent_orange_juice/danbooru_1_ab.jpg.txt",
                     "mine/5_cat/c.png", "mine/5_cat/c.txt", "mine/2_dog/d.png", "mine/2_dog/d.caption",
                     "tags/img/3_x/e.png", "tags/img/3_x/e.png.json"])
    found = kohya.import_subset("proj/img/10_sks woman", names, "root")
    assert found == kohya.FolderSubset("10_sks woman", 10, "sks woman", False)
    assert kohya.import_subset("proj/reg/1_woman", names, "root").is_reg  # type: ignore[union-attr]
    # gallery-dl's {search_tags} folder with its sidecars, and a scraper's JSON inside img/
    assert kohya.import_subset("dl/danbooru/100_percent_orange_juice", names, "root") is None
    assert kohya.import_subset("tags/img/3_x", names, "root") is None
    # a train dir of any name whose every image folder is a captioned N_name subset
    assert kohya.import_subset("mine/5_cat", names, "root") == kohya.FolderSubset("5_cat", 5, "cat", False)
    # SRC was the img folder itself: its name places the subsets
    assert kohya.import_subset("10_sks woman", listing(["10_sks woman/a.png"]), "img") is not None


# --- cases 9 and 11, end to end through the CLI ------------------------------------------------

def kohya_ss_project(root: Path) -> Path:
    """What kohya_ss' "Dreambooth/LoRA Folder preparation" makes (dreambooth_folder_creation_gui:
    img/{repeats}_{instance prompt} {class prompt}, reg/{repeats}_{class prompt}, log/, model/),
    with captions from its WD14/BLIP tools (same stem, .txt) on the training images only."""
    project = root / "project"
    for i, (stem, caption) in enumerate([("a", "sks woman, smile, outdoors"), ("b", "sks woman, red dress")]):
        write(project / "img/10_sks woman" / f"{stem}.png", png(distinct(i, 96)))
        write(project / "img/10_sks woman" / f"{stem}.txt", caption + "\n")
    write(project / "img/3_sks woman/c.png", png(distinct(2, 96)))  # no caption: class tokens
    for i in range(2):
        write(project / "reg/1_woman" / f"r{i}.png", png(distinct(3 + i, 96)))
    (project / "log").mkdir()
    (project / "model").mkdir()
    return project


def trained(dataset: Path) -> set[tuple[bool, int, str | None, str, str]]:
    """What the trainer reads: (reg, repeats, class tokens, image stem, caption) per image."""
    data = load_dataset(dataset, {**SMALL, "caption_extension": ".txt"})
    return {(i.subset.is_reg, i.subset.num_repeats, i.subset.class_tokens, i.path.stem, i.caption)
            for i in data.items}


def run(*args: str) -> str:
    res = CliRunner().invoke(cli, list(args))
    assert res.exit_code == 0, res.output
    return res.output


def test_kohya_ss_project_round_trips_through_import_and_layout(tmp_path: Path) -> None:
    project = kohya_ss_project(tmp_path)
    ws, out = tmp_path / "ws", tmp_path / "dataset"
    run("import", str(project), "--into", str(ws))
    run("layout", str(ws), "--out", str(out), "--resolution", "64", "--set", "layout.min_bucket_reso=64",
        "--set", "layout.max_bucket_reso=128")
    written = kohya.read_toml(out / "dataset.toml")
    assert written.problems == []
    assert {(s.image_dir.relative_to(out).as_posix(), s.num_repeats, s.class_tokens, s.is_reg)
            for s in written.subsets} == {("img/10_sks woman", 10, "sks woman", False),
                                          ("img/3_sks woman", 3, "sks woman", False),
                                          ("reg/1_woman", 1, "woman", True)}
    assert trained(out) == trained(project)
    run("check", str(out), "--no-duplicates")
    # a laid-out dataset imported again (its dataset.toml says what each folder is) gives it back
    ws2, out2 = tmp_path / "ws2", tmp_path / "again"
    run("import", str(out), "--into", str(ws2))
    run("layout", str(ws2), "--out", str(out2), "--resolution", "64", "--set", "layout.min_bucket_reso=64",
        "--set", "layout.max_bucket_reso=128")
    assert trained(out2) == trained(project)


def test_user_repeats_win_over_imported_ones(tmp_path: Path) -> None:
    project = kohya_ss_project(tmp_path)
    ws, out = tmp_path / "ws", tmp_path / "dataset"
    run("import", str(project), "--into", str(ws))
    run("layout", str(ws), "--out", str(out), "--repeats", "4", "--resolution", "64",
        "--set", "layout.min_bucket_reso=64", "--set", "layout.max_bucket_reso=128")
    repeats = {s.image_dir.name: s.num_repeats for s in kohya.read_toml(out / "dataset.toml").subsets}
    # the two training folders of one class become one at the user's repeats; reg keeps its own
    assert repeats == {"4_sks woman": 4, "1_woman": 1}


def gallery_dl_search(root: Path) -> Path:
    """gallery-dl's default layout for a danbooru tag search (directory ["{category}",
    "{search_tags}"], filename "{category}_{id}_{md5}.{extension}") with its tags post-processor
    (`"name": "metadata", "mode": "tags"`: one tag per line in `<file>.<ext>.txt`)."""
    folder = root / "gallery-dl" / "danbooru" / "100_percent_orange_juice"
    tags = ["suguri_(100%)", "100%_orange_juice", "1girl", "solo", "blue_hair", "long_hair",
            "smile", "highres"]
    for i, post in enumerate((4011, 4012)):
        name = f"danbooru_{post}_{'0123456789abcdef' * 2}.jpg"
        write(folder / name, jpeg(photo("astronaut" if i else "coffee").resize((96, 96))))
        write(folder / f"{name}.txt", "\n".join(tags) + "\n")
    return root / "gallery-dl"


def test_gallery_dl_search_folder_is_not_a_kohya_subset(tmp_path: Path) -> None:
    src = gallery_dl_search(tmp_path)
    ws, out = tmp_path / "ws", tmp_path / "dataset"
    run("import", str(src), "--into", str(ws))
    db = sqlite3.connect(ws / ".curate" / "manifest.sqlite")
    origins = db.execute("SELECT source_kind, metadata FROM origins").fetchall()
    assert len(origins) == 2
    assert all(kind != "kohya" and "kohya" not in json.loads(meta or "{}") for kind, meta in origins)
    assert {n for (n,) in db.execute("SELECT COUNT(*) FROM tags GROUP BY image_sha256")} == {8}
    run("layout", str(ws), "--out", str(out), "--resolution", "64", "--set", "layout.min_bucket_reso=64",
        "--set", "layout.max_bucket_reso=128")
    config = tomllib.loads((out / "dataset.toml").read_text(encoding="utf-8"))
    assert [s["num_repeats"] for s in config["datasets"][0]["subsets"]] == [1]
    assert not any(p.name.startswith("100_") for p in (out / "img").iterdir())
    run("check", str(out), "--no-duplicates")


def test_a_new_name_regroups_training_images_but_reg_stays_reg(tmp_path: Path) -> None:
    project = kohya_ss_project(tmp_path)
    ws, out = tmp_path / "ws", tmp_path / "dataset"
    run("import", str(project), "--into", str(ws))
    run("layout", str(ws), "--out", str(out), "--name", "ohwx", "--resolution", "64",
        "--set", "layout.min_bucket_reso=64", "--set", "layout.max_bucket_reso=128")
    subsets = {(s.image_dir.relative_to(out).as_posix(), s.is_reg): len(list(s.image_dir.glob("*.png")))
               for s in kohya.read_toml(out / "dataset.toml").subsets}
    assert subsets == {("img/1_ohwx", False): 3, ("reg/1_woman", True): 2}
