"""`curate layout`: Kohya folders, captions, repeats, reg images, dataset.toml, safe rewrites."""

from __future__ import annotations

import os
import re
import tomllib
from pathlib import Path

import pytest
from click.testing import CliRunner

from curate.cli import cli
from curate.errors import CurateError
from curate.stages.captions.edit import set_trigger
from curate.stages.dedupe.config import DedupeConfig
from curate.stages.dedupe.run import dedupe
from curate.stages.ingest import ImportConfig, import_sources
from curate.stages.layout import LayoutConfig, layout
from fixtures.scrape import jpeg, photo, png, write

KOHYA_FOLDER = re.compile(r"^(\d+)_(.+)$")


def build_raw(root: Path) -> Path:
    """6 cat pictures and 2 mug pictures with captions, one exact duplicate, one RGBA image."""
    cat, mug = photo("chelsea").convert("RGB"), photo("coffee").convert("RGB")
    for i in range(6):
        write(root / f"cat_{i}.jpg", jpeg(cat.crop((i * 20, 0, 300 + i * 20, 300)).rotate(i * 30)))
        write(root / f"cat_{i}.txt", "cat, animal, indoors\n")
    for i in range(2):
        write(root / f"mug_{i}.jpg", jpeg(mug.crop((i * 150, 0, 250 + i * 150, 250))))
        write(root / f"mug_{i}.txt", "cup, coffee\n")
    write(root / "copy/cat_0.jpg", (root / "cat_0.jpg").read_bytes())
    write(root / "logo.png", png(photo("logo")))
    return root


@pytest.fixture
def workspace(tmp_path: Path) -> Path:
    ws = tmp_path / "ws"
    import_sources(ws, [build_raw(tmp_path / "raw")], ImportConfig(workers=1))
    dedupe(ws, DedupeConfig(verify=False, workers=1))
    set_trigger(ws, "sks", "cat")
    return ws


def folders(out: Path, kind: str = "img") -> dict[str, list[str]]:
    return {p.name: sorted(f.name for f in p.iterdir()) for p in sorted((out / kind).iterdir())}


def test_layout_writes_kohya_folders_and_dataset_toml(workspace: Path, tmp_path: Path) -> None:
    out = tmp_path / "dataset"
    result = layout(workspace, out, LayoutConfig(repeats=10))
    (folder, files), = folders(out).items()
    assert folder == "10_sks" and KOHYA_FOLDER.match(folder)
    images = [f for f in files if not f.endswith(".txt")]
    assert len(images) == 9 and "cat_0.jpg" in images  # the duplicate copy is left out
    for image in images:
        caption = (out / "img" / folder / (Path(image).stem + ".txt")).read_text(encoding="utf-8")
        assert caption.startswith("sks, cat") and caption.count("\n") == 1
    config = tomllib.loads((out / "dataset.toml").read_text(encoding="utf-8"))
    assert config["general"] == {"caption_extension": ".txt"}
    subset = config["datasets"][0]["subsets"][0]
    # the caption keys are the compiled captions' (tagging/compile.py): tags, trigger + class kept
    assert subset["shuffle_caption"] is True and subset["keep_tokens"] == 2
    assert "keep_tokens_separator" not in subset
    assert subset["image_dir"] == str(out / "img/10_sks") and subset["num_repeats"] == 10
    assert subset["class_tokens"] == "sks cat" and subset["caption_extension"] == ".txt"
    assert subset["alpha_mask"] is True  # logo.png kept its transparency
    assert config["datasets"][0]["bucket_reso_steps"] == 64
    assert result.total_steps == 9 * 10 * 10 // 2


def test_target_steps_balances_concepts(workspace: Path, tmp_path: Path) -> None:
    concepts = tmp_path / "concepts.toml"
    concepts.write_text('[concept.cat]\ntags = ["animal"]\nclass_tokens = "cat"\n'
                        '[concept.mug]\ntags = ["cup"]\n')
    result = layout(workspace, tmp_path / "ds", LayoutConfig(target_steps=600, epochs=10, batch_size=2,
                                                             concepts=str(concepts)))
    plan = {p["folder"]: p for p in result.plan}
    assert set(plan) == {"img/10_cat", "img/30_mug"}  # 6 x 10 ~ 2 x 30: neither takes over
    assert result.total_steps == (6 * 10 + 2 * 30) * 10 // 2
    assert any("logo.png" in f and "no concept" in r for f, r in result.warnings)


def test_reg_images_and_link_modes(workspace: Path, tmp_path: Path) -> None:
    reg = tmp_path / "reg_src"
    for name in ("astronaut", "rocket"):
        write(reg / f"{name}.jpg", jpeg(photo(name).convert("RGB")))
    out = tmp_path / "ds"
    result = layout(workspace, out, LayoutConfig(repeats=5, reg=str(reg), link="hardlink"))
    assert folders(out, "reg") == {"1_cat": ["astronaut.jpg", "astronaut.txt", "rocket.jpg", "rocket.txt"]}
    assert (out / "reg/1_cat/rocket.txt").read_text() == "cat\n"
    subsets = tomllib.loads((out / "dataset.toml").read_text())["datasets"][0]["subsets"]
    assert subsets[1]["is_reg"] is True and subsets[1]["num_repeats"] == 1
    assert result.total_steps == 9 * 5 * 2 * 10 // 2  # reg images double the steps
    assert (out / "reg/1_cat/rocket.jpg").stat().st_ino == (reg / "rocket.jpg").stat().st_ino
    layout(workspace, out, LayoutConfig(repeats=5, link="symlink"))
    image = next(p for p in (out / "img/5_sks").iterdir() if p.suffix == ".jpg")
    assert image.is_symlink() and Path(os.readlink(image)).is_absolute()


def test_relayout_replaces_only_its_own_output(workspace: Path, tmp_path: Path) -> None:
    out = tmp_path / "ds"
    layout(workspace, out, LayoutConfig(repeats=3))
    (out.parent / f".curate-tmp-{out.name}-999").mkdir()  # what a killed run leaves
    layout(workspace, out, LayoutConfig(repeats=4))
    assert list(folders(out)) == ["4_sks"]
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".curate")] == []
    mine = tmp_path / "my_stuff"
    write(mine / "notes.txt", "precious")
    with pytest.raises(CurateError, match="not written by"):
        layout(workspace, mine, LayoutConfig())
    assert (mine / "notes.txt").read_text() == "precious"


def test_dry_run_and_cli(workspace: Path, tmp_path: Path) -> None:
    out = tmp_path / "ds"
    res = CliRunner().invoke(cli, ["layout", str(workspace), "--out", str(out), "--target-steps", "500",
                                   "--dry-run", "--json"])
    assert res.exit_code == 0, res.output
    assert not out.exists()
    res = CliRunner().invoke(cli, ["layout", str(workspace), "--out", str(out), "--repeats", "2"])
    assert res.exit_code == 0 and "dataset.toml" in res.output


def test_a_concepts_own_class_tokens_win_over_the_workspaces(tmp_path: Path) -> None:
    """An imported Kohya subset `10_sks cat` beside a workspace trigger `sks` + class `woman`:
    its captions keep its class (`sks, cat, ...`), never the workspace's woman; and a concept
    named in concepts.toml gets its own caption format."""
    from fixtures.scrape import build_kohya

    build_kohya(tmp_path / "src")
    write(tmp_path / "src" / "plain" / "astronaut.jpg", jpeg(photo("astronaut")))
    write(tmp_path / "src" / "plain" / "astronaut.caption", "An astronaut smiles in front of a flag.\n")
    ws = tmp_path / "ws"
    import_sources(ws, [tmp_path / "src"], ImportConfig(workers=1))
    set_trigger(ws, "sks", "woman")
    out = tmp_path / "ds"
    layout(ws, out, LayoutConfig())
    cat = {p.stem: p.read_text(encoding="utf-8").strip() for p in out.glob("img/*_sks cat/*.txt")}
    assert cat == {"chelsea_1": "sks, cat, orange fur, indoors", "chelsea_2": "sks, cat, close-up"}
    concepts = tmp_path / "concepts.toml"
    concepts.write_text('[concept.sks]\nfolders = ["plain"]\nformat = "nl"\n', encoding="utf-8")
    layout(ws, tmp_path / "nl", LayoutConfig(concepts=str(concepts)))
    [caption] = (tmp_path / "nl").glob("img/*_sks/astronaut.txt")
    assert caption.read_text(encoding="utf-8").strip() == "sks woman, An astronaut smiles in front of a flag."
    subsets = tomllib.loads((tmp_path / "nl" / "dataset.toml").read_text(encoding="utf-8"))["datasets"][0]
    nl = next(s for s in subsets["subsets"] if s["image_dir"].endswith("_sks"))
    assert nl.get("shuffle_caption", False) is False and nl.get("keep_tokens", 0) == 0  # prose stays whole
