"""Options from outside (issue 14, items 3, 5, 10, 21, 22): extreme values, unknown sections and
keys, names that would lead out of their folder, and the small CLI defects a tester found."""

from __future__ import annotations

import dataclasses
import importlib
import shutil
import tomllib
import typing
from pathlib import Path

import pytest
from click.testing import CliRunner

from curate.buckets.assign import derived_bucket_reso
from curate.cli import cli
from curate.config import SECTIONS, stage_config
from curate.errors import CurateError
from curate.stages.dedupe.config import DedupeConfig
from curate.stages.ingest import ImportResult
from curate.stages.layout import LayoutConfig, layout
from curate.stages.tag import TagConfig
from fixtures.scrape import jpeg, photo, write

README = Path(__file__).resolve().parent.parent / "README.md"


def run(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(cli, list(args))
    return result.exit_code, result.output


@pytest.fixture
def ws(imported: tuple[Path, ImportResult], tmp_path: Path) -> Path:
    """A private copy of the shared imported workspace (layout and crop take its lock)."""
    copy = tmp_path / "ws"
    shutil.copytree(imported[0], copy)
    return copy


# --- item 3: every option checked against its range when the config is read ---------------------

@pytest.mark.parametrize(("args", "message"), [
    (("dedupe", "{ws}", "--set", "dedupe.hash_size=100000"),
     "error: dedupe.hash_size = 100000 is out of range: must be between 4 and 64 (curate.toml or --set)"),
    (("dedupe", "{ws}", "--set", "dedupe.hash_size=0"), "dedupe.hash_size = 0 is out of range"),
    (("dedupe", "{ws}", "--hash-size", "100000"),
     "dedupe.hash_size = 100000 is out of range: must be between 4 and 64 (command-line option)"),
    (("import", "{raw}", "--into", "{ws}", "--set", "import.max_file_mb=-1"),
     "import.max_file_mb = -1 is out of range: must be between 1 and 65536"),
    (("dedupe", "{ws}", "--set", "dedupe.hash=\"whash\"", "--set", "dedupe.hash_size=12"),
     "whash needs a power of two"),
    (("dedupe", "{ws}", "--set", "dedupe.similarity=nan"), "dedupe.similarity = nan is not a finite number"),
    (("dedupe", "{ws}", "--set", "dedupe.hash_size=true"), "dedupe.hash_size = True: expected an integer"),
])
def test_extreme_values_are_refused_with_the_range(imported: tuple[Path, ImportResult], tmp_path: Path,
                                                   args: tuple[str, ...], message: str) -> None:
    raw = tmp_path / "raw"
    write(raw / "a.jpg", jpeg(photo("coffee").convert("RGB")))
    code, output = run(*(a.format(ws=imported[0], raw=raw) for a in args))
    assert code == 2 and message in output and "internal error" not in output, output


def _numeric(hint: typing.Any) -> bool:
    kinds = typing.get_args(hint) or (hint,)
    return any(k in (int, float) for k in kinds)


@pytest.mark.parametrize("section", sorted(set(SECTIONS) - {"check"}))  # [check]: curate/check's own
def test_every_numeric_option_declares_a_range(section: str) -> None:
    module, _, name = SECTIONS[section].partition(":")
    cls = getattr(importlib.import_module(module), name)
    hints = typing.get_type_hints(cls)
    exact = {"version"}  # train.version is one exact value, checked by TrainConfig.check
    missing = [f.name for f in dataclasses.fields(cls)
               if _numeric(hints[f.name]) and "range" not in f.metadata and f.name not in exact]
    assert not missing, f"[{section}] numeric options without a range: {missing}"


def test_library_configs_are_held_to_the_same_ranges() -> None:
    with pytest.raises(CurateError, match=r"tag\.threshold = 2\.0 is out of range: must be between 0 and 1"):
        TagConfig(threshold=2.0).check()
    assert stage_config(DedupeConfig, "dedupe", None, ["dedupe.hash_size=16"]).hash_size == 16


# --- item 10: unknown sections and keys are named, with the known ones ---------------------------

def test_unknown_sections_and_keys_are_errors(imported: tuple[Path, ImportResult], tmp_path: Path) -> None:
    code, output = run("dedupe", str(imported[0]), "--set", "nosuchsection.k=1")
    assert code == 2
    assert "unknown section(s) nosuchsection; known: bg, caption, captions, check, crop, dedupe" in output
    # a key of another section given to this command is checked too, with that section's keys
    code, output = run("dedupe", str(imported[0]), "--set", "tag.treshold=0.4")
    assert code == 2 and "[tag] has unknown option(s) treshold; valid: model, threshold" in output
    toml = tmp_path / "curate.toml"
    toml.write_text("[dedupe]\nhash_size = 8\n[bogus]\nx = 1\n", encoding="utf-8")
    with pytest.raises(CurateError, match=r"unknown section\(s\) bogus; known: "):
        stage_config(DedupeConfig, "dedupe", toml)


def test_a_fresh_init_file_has_only_known_sections(tmp_path: Path) -> None:
    code, output = run("init", str(tmp_path / "w"))
    assert code == 0, output
    assert set(tomllib.loads((tmp_path / "w/curate.toml").read_text(encoding="utf-8"))) <= set(SECTIONS)
    assert stage_config(DedupeConfig, "dedupe", tmp_path / "w/curate.toml").hash_size == 8


@pytest.mark.parametrize(("text", "message"), [
    ("[concept.a]\ntags = 5\n", r"\[concept.'a'\] tags = 5: expected a list of strings"),
    ("[concept.a]\nclass_tokens = 3\n", r"\[concept.'a'\] class_tokens = 3: expected a string"),
    ('[concept."a\\u0000b"]\ntags = []\n', r"concept name 'a\\x00b' holds a path separator or NUL"),
    ("[bogus]\nx = 1\n[concept.a]\ntags = []\n", r"unknown section\(s\) bogus"),
    ("[concept]\na = 3\n", r"\[concept.'a'\] must be a table"),
])
def test_concepts_file_errors_name_file_concept_and_key(ws: Path, tmp_path: Path, text: str,
                                                       message: str) -> None:
    concepts = tmp_path / "concepts.toml"
    concepts.write_text(text, encoding="utf-8")
    with pytest.raises(CurateError, match=message) as info:
        layout(ws, tmp_path / "out/ds", LayoutConfig(concepts=str(concepts)))
    assert str(concepts) in str(info.value)


# --- item 5: names that become paths stay inside their root --------------------------------------

def test_a_concept_name_cannot_lead_out_of_the_dataset(ws: Path, tmp_path: Path) -> None:
    concepts = tmp_path / "concepts.toml"
    concepts.write_text('[concept."../../../../escaped"]\ntags = []\n', encoding="utf-8")
    code, output = run("layout", str(ws), "--out", str(tmp_path / "out/ds"), "--concepts", str(concepts))
    assert code == 2 and "'../../../../escaped' holds a path separator" in output
    assert not (tmp_path / "out").exists() and not (tmp_path / "escaped").exists()
    for name in ("..", "a/b"):
        with pytest.raises(CurateError, match=r"layout\.name"):
            layout(ws, tmp_path / "out/ds", LayoutConfig(name=name))


def test_train_output_name_is_a_plain_name() -> None:
    from curate.trainer.config import train_config

    for name in ("../../x", "a/b", "..", ""):
        with pytest.raises(CurateError, match=r"train\.output_name"):
            train_config(None, [f'output_name="{name}"'])


# --- item 21: bucket bounds from the resolution ----------------------------------------------------

def test_bucket_bounds_follow_the_resolution() -> None:
    assert derived_bucket_reso(512) == (256, 1024)  # sd-scripts' defaults
    assert derived_bucket_reso(128) == (64, 256)
    assert derived_bucket_reso(1024) == (256, 2048)
    assert derived_bucket_reso(64) == (64, 128)
    assert LayoutConfig(resolution=128).bucket_bounds == (64, 256)
    assert LayoutConfig(resolution=128, min_bucket_reso=96).bucket_bounds == (96, 256)


def test_layout_at_resolution_128(ws: Path, tmp_path: Path) -> None:
    out = tmp_path / "ds"
    code, output = run("layout", str(ws), "--out", str(out), "--set", "layout.resolution=128")
    assert code == 0, output
    dataset = tomllib.loads((out / "dataset.toml").read_text(encoding="utf-8"))["datasets"][0]
    assert (dataset["resolution"], dataset["min_bucket_reso"], dataset["max_bucket_reso"]) == (128, 64, 256)


def test_train_resolution_128_over_a_512_dataset(ws: Path, tmp_path: Path) -> None:
    pytest.importorskip("torch")
    from curate.trainer.config import train_config
    from curate.trainer.data import load_dataset
    from curate.trainer.loop import dataset_overrides

    out = tmp_path / "ds"
    layout(ws, out, LayoutConfig())  # dataset.toml: 512, min 256, max 1024
    config = train_config(None, ["resolution=128"])
    assert (config.min_bucket_reso, config.max_bucket_reso) == (64, 256)
    dataset = load_dataset(out, dataset_overrides(config))
    assert dataset.buckets.resolution == (128, 128) and dataset.buckets.bucket_limits == (64, 256)
    assert train_config(None, ["resolution=128", "min_bucket_reso=128"]).min_bucket_reso == 128


# --- item 21: small CLI defects --------------------------------------------------------------------

def test_dedupe_help_shows_a_single_percent_sign() -> None:
    code, output = run("dedupe", "--help")
    assert code == 0 and "10%" in output and "%%" not in output


def test_captions_trigger_does_not_print_none(tmp_path: Path) -> None:
    root = tmp_path / "folder"
    write(root / "a.jpg", jpeg(photo("coffee").convert("RGB")))
    (root / "a.txt").write_text("cup, table\n", encoding="utf-8")
    code, output = run("captions", "trigger", str(root), "sks")
    assert code == 0 and "None" not in output and "keep_tokens = 1" in output
    assert (root / "a.txt").read_text(encoding="utf-8").startswith("sks, ")


def test_doctor_says_not_available_for_optional_parts(monkeypatch: pytest.MonkeyPatch) -> None:
    import curate.tagging.engine

    lines = [("onnxruntime", True, "1.0"), ("CUDA", False, "this onnxruntime is CPU-only"),
             ("huggingface_hub", False, "not installed")]
    monkeypatch.setattr(curate.tagging.engine, "doctor", lambda: lines)
    code, output = run("doctor")
    assert code == 0 and "FAIL" not in output
    assert "CUDA: not available: this onnxruntime is CPU-only" in output
    monkeypatch.setattr(curate.tagging.engine, "doctor", lambda: [("onnxruntime", False, "not installed")])
    assert "FAIL onnxruntime" in run("doctor")[1]


@pytest.mark.parametrize("verb", ["extract", "merge"])
def test_lora_tools_take_allow_pickle(verb: str) -> None:
    code, output = run("lora", verb, "--help")
    assert code == 0 and "--allow-pickle" in output


def test_lora_extract_reads_a_ckpt_with_allow_pickle(tiny_sd: Path, tmp_path: Path) -> None:
    torch = pytest.importorskip("torch")
    from fixtures.tiny_sd_single_file import ldm_state_dict

    ckpt = tmp_path / "base.ckpt"
    torch.save({"state_dict": ldm_state_dict(tiny_sd)}, ckpt)
    args = ["lora", "extract", "--base", str(ckpt), "--tuned", str(tiny_sd), "--model-config", str(tiny_sd),
            "--dim", "2", "--out", str(tmp_path / "x.safetensors")]
    code, output = run(*args)
    assert code == 2 and "--allow-pickle" in output
    code, output = run(*args, "--allow-pickle")
    assert "pickle" not in output, output


def test_crops_csv_takes_the_paths_curate_prints(ws: Path, tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    from curate.stages.crop.config import CropConfig
    from curate.stages.crop.run import crop_images
    from curate.workspace import Workspace

    with Workspace.open(ws) as opened:
        records = opened.active_records()[:3]
    stored = [r.path for r in records]
    monkeypatch.chdir(tmp_path)
    (ws / "crops.csv").write_text(
        f"{stored[0]},0,0,64,64\n"  # the stored copy, as the report links it
        f"{stored[1].relative_to(tmp_path)},0,0,64,64\n"  # ... relative to the current folder
        f"{stored[2].relative_to(ws)},0,0,64,64\n",  # ... relative to the workspace
        encoding="utf-8")
    result = crop_images(ws, CropConfig(workers=1, sources=("alpha",)), dry_run=True)
    assert not result.warnings
    by_sha = {it.sha256: it.outcome.subject.source for it in result.items if it.outcome}
    assert [by_sha[r.sha256] for r in records] == ["user"] * 3


def test_tag_existing_skip_undoes_the_file_setting(tmp_path: Path) -> None:
    from fixtures.tiny_tagger import build_tiny_tagger

    code, output = run("tag", "--help")
    assert code == 0 and "--existing [skip|append|overwrite]" in output
    model = build_tiny_tagger(tmp_path / "wd-tiny")
    root = tmp_path / "folder"
    write(root / "coffee.jpg", jpeg(photo("coffee").convert("RGB")))
    (root / "coffee.txt").write_text("my tag\n", encoding="utf-8")
    (root / "curate.toml").write_text('[tag]\nexisting = "overwrite"\n', encoding="utf-8")
    code, output = run("tag", str(root), "--model", str(model), "--existing", "skip")
    assert code == 0, output
    assert (root / "coffee.txt").read_text(encoding="utf-8") == "my tag\n"
    code, output = run("tag", str(root), "--model", str(model), "--append", "--existing", "skip")
    assert code == 2 and "--append and --existing skip disagree" in output


# --- item 22: the README does not move raw inputs --------------------------------------------------

def test_readme_tour_moves_only_a_copy() -> None:
    text = README.read_text(encoding="utf-8")
    assert "curate dedupe ./raw --move-to" not in text
    assert "--move-to" in text and "moves" in text


def test_a_key_in_the_neighbouring_table_is_pointed_to(tmp_path: Path) -> None:
    """[caption] (the captioner) and [captions] (the caption format) differ by one letter."""
    out = CliRunner().invoke(cli, ["layout", str(tmp_path), "--out", str(tmp_path / "d"),
                                   "--set", "caption.format=nl"])
    assert out.exit_code == 2 and "format is an option of [crop] and [captions]" in out.output
