"""`curate check`, `curate buckets` and the trainer read a dataset as sd-scripts does.

`tests/data/sd_scripts_dataset.json` holds sd-scripts' own answers (made by
tests/data/extract_sd_scripts_dataset.py, which runs its functions unchanged): folder names,
globbed image names, caption files and process_caption. curate.kohya, check and trainer/data.py
must agree with it. Then what sd-scripts does not do and curate must: no caption text through a
symlink leaving the dataset, no FIFO opened, bounded caption sizes and metadata, printable
non-UTF-8 names, and `curate layout --link symlink` output readable by buckets.
"""

from __future__ import annotations

import json
import os
import random
import re
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner

from curate.buckets import BucketConfig
from curate.check import CheckConfig, check
from curate.check.captions import _trigger_at
from curate.check.run import CheckResult
from curate.cli import cli
from curate.errors import CurateError
from curate.kohya import (
    CAPTION_LIMIT,
    caption_names,
    caption_text,
    parse_folder_name,
    readable_plugin_exts,
    sd_image,
)
from curate.stages.bucketing import buckets_for
from curate.trainer.data import (
    MAX_FOLDER_TAGS,
    Subset,
    list_images,
    load_dataset,
    process_caption,
    read_caption,
)
from tests.test_check import distinct

TABLE = json.loads((Path(__file__).parent / "data" / "sd_scripts_dataset.json").read_text(encoding="utf-8"))
SMALL = {"resolution": 64, "min_bucket_reso": 64, "max_bucket_reso": 128}


@pytest.fixture(autouse=True)
def cache_dir(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CURATE_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "check-cache"))


@pytest.fixture
def no_hang() -> Iterator[None]:
    """A FIFO opened by mistake blocks forever: fail the test after a minute instead."""
    def stop(*_: object) -> None:
        raise TimeoutError("blocked: a FIFO was opened")

    old = signal.signal(signal.SIGALRM, stop)
    signal.alarm(60)
    yield
    signal.alarm(0)
    signal.signal(signal.SIGALRM, old)


def picture(path: Path, index: int = 0, caption: str | bytes | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    distinct(index).save(path)
    if caption is not None:
        data = caption if isinstance(caption, bytes) else caption.encode("utf-8")
        path.with_suffix(".txt").write_bytes(data)
    return path


def rules(result: CheckResult) -> dict[str, set[str]]:
    out: dict[str, set[str]] = {}
    for f in result.findings:
        out.setdefault(f.rule, set()).add(f.path.name)
    return out


# --- sd-scripts' own answers --------------------------------------------------------------


@pytest.mark.parametrize("case", TABLE["folders"], ids=lambda c: repr(c["name"]))
def test_folder_names_as_sd_scripts(case: dict) -> None:
    expected = (case["repeats"], case["class_tokens"]) if case["read"] else None
    assert parse_folder_name(case["name"]) == expected


def test_image_names_as_sd_scripts_glob(tmp_path: Path) -> None:
    files = TABLE["glob"]["files"]
    assert sorted(f for f in files if sd_image(f)) == TABLE["glob"]["base"]
    assert sorted(f for f in files if sd_image(f, (".avif", ".jxl"))) == TABLE["glob"]["plugins"]
    for name in files:
        (tmp_path / name).write_bytes(b"")
    here = {".avif", ".AVIF"} if ".avif" in readable_plugin_exts() else set()
    wanted = sorted(f for f in TABLE["glob"]["plugins"] if f in TABLE["glob"]["base"]
                    or os.path.splitext(f)[1] in here)
    assert [p.name for p in list_images(tmp_path)] == wanted


@pytest.mark.parametrize("case", TABLE["captions"], ids=lambda c: c["name"])
def test_captions_as_sd_scripts_read_caption(case: dict, tmp_path: Path) -> None:
    folder = tmp_path / "d"
    folder.mkdir()
    (folder / case["image"]).write_bytes(b"")
    for name, text in case["files"].items():
        (folder / name).write_bytes(text.encode("latin-1"))
    subset = Subset(folder, caption_extension=case["caption_extension"],
                    enable_wildcard=case["enable_wildcard"])
    assert subset.caption_extension == case["read_extension"]
    if "error" in case:
        expected = "empty caption" if case["error"] == "AssertionError" else "UTF-8"
        with pytest.raises(CurateError, match=expected):
            read_caption(folder / case["image"], subset, tmp_path)
        return
    # no caption file: sd-scripts answers None and trains on the class tokens (none here)
    assert read_caption(folder / case["image"], subset, tmp_path) == (case["caption"] or "")
    if case["caption"] is not None:
        name = next(n for n in caption_names(case["image"], case["read_extension"]) if n in case["files"])
        text = case["files"][name].encode("latin-1").decode("utf-8")
        assert caption_text(text, case["enable_wildcard"]) == case["caption"]


@pytest.mark.parametrize("case", TABLE["process_caption"], ids=lambda c: c["name"])
def test_process_caption_as_sd_scripts(case: dict) -> None:
    fields = {k: v for k, v in case["subset"].items()}
    subset = Subset(Path("."), **fields)
    outcomes = {process_caption(case["caption"], subset, random.Random(seed)) for seed in range(40)}
    assert outcomes == set(case["outcomes"])


# --- check reads what sd-scripts reads ----------------------------------------------------


def test_check_reads_the_folders_and_captions_sd_scripts_reads(tmp_path: Path) -> None:
    img = tmp_path / "ds" / "img"
    for i, name in enumerate(["10_", "10", " 5_x"]):
        picture(img / name / f"a{i}.png", i, "sks, 1girl")
    picture(img / "3_sks" / "face_1_2_3_4.png", 4)
    (img / "3_sks" / "face.txt").write_text("sks, face", encoding="utf-8")
    result = check([tmp_path / "ds"], CheckConfig(trigger="sks", check_duplicates=False))
    assert result.images == 4 and result.errors == 0, rules(result)
    dataset = load_dataset(tmp_path / "ds", SMALL)
    assert sorted((i.subset.num_repeats, i.caption) for i in dataset.items) == [
        (3, "sks, face"), (5, "sks, 1girl"), (10, "sks, 1girl"), (10, "sks, 1girl")]


def test_check_follows_dataset_toml_caption_settings(tmp_path: Path) -> None:
    ds = tmp_path / "ds"
    ds.mkdir()
    (ds / "dataset.toml").write_text(
        '[general]\ncaption_extension = "txt"\n[[datasets]]\n'
        '[[datasets.subsets]]\nimage_dir = "a"\nenable_wildcard = true\n'
        '[[datasets.subsets]]\nimage_dir = "b"\ncaption_prefix = "sks,"\n'
        '[[datasets.subsets]]\nimage_dir = "c"\nkeep_tokens_separator = "|||"\n'
        '[[datasets.subsets]]\nimage_dir = "d"\nkeep_tokens_separator = "|||"\nshuffle_caption = true\n'
        '[[datasets.subsets]]\nimage_dir = "e"\n', encoding="utf-8")
    picture(ds / "a" / "x.png", 1, "sks, one\nsks, two\n")  # wildcard: two alternatives
    picture(ds / "a" / "y.png", 2, "sks, one\n1girl, two\n")  # the second misses the trigger
    picture(ds / "b" / "p.png", 3, "1girl, solo")  # the prefix brings the trigger
    picture(ds / "c" / "s.png", 4, "sks ||| 1girl")  # no shuffle: ||| is trained as text
    picture(ds / "d" / "t.png", 5, "sks ||| 1girl")
    picture(ds / "e" / "n.png", 6, b"sks, a\x00b, \x1b[31mred")
    (ds / "e" / "w.avif").write_bytes(b"")
    result = check([ds], CheckConfig(trigger="sks", check_duplicates=False))
    found = rules(result)
    assert found.pop("trigger-missing") == {"y.txt"}
    assert found.pop("separator-literal") == {"s.txt"}
    assert found.pop("caption-control") == {"n.txt"}
    assert found.pop("extension-plugin") == {"w.avif"}
    assert {f.severity for f in result.findings
            if f.rule in ("extension-plugin", "caption-control")} == {"warning"}
    assert set(found) <= {"caption-missing", "image-unreadable"}  # w.avif (empty) has no caption
    control = next(f for f in result.findings if f.rule == "caption-control")
    assert "\\x00" in control.message and "\x00" not in control.message and "\x1b" not in control.message


# --- what curate does beyond sd-scripts ---------------------------------------------------


def test_a_caption_symlink_leaving_the_dataset_is_not_read(tmp_path: Path) -> None:
    secret = tmp_path / "secret.txt"
    secret.write_text("sks, SECRET-KEY-TEXT, blonde hair, brown hair", encoding="utf-8")
    folder = tmp_path / "ds" / "1_sks"
    picture(folder / "a.png", 0)
    (folder / "a.txt").symlink_to(secret)
    picture(tmp_path / "elsewhere" / "b.png", 1)
    (folder / "b.png").symlink_to(tmp_path / "elsewhere" / "b.png")  # images: followed
    (folder / "b.txt").write_text("sks, b", encoding="utf-8")
    result = check([tmp_path / "ds"], CheckConfig(trigger="sks", check_duplicates=False))
    assert rules(result) == {"caption-unread": {"a.txt"}, "caption-extension-default": {"ds"}}
    assert result.images == 2
    text = json.dumps(result.as_dict())
    assert "outside the dataset" in text and "SECRET" not in text
    # train leaves that image out with the reason and trains on the rest
    loaded = load_dataset(tmp_path / "ds", SMALL)
    assert [i.path.name for i in loaded.items] == ["b.png"]
    [(file, why)] = loaded.skipped
    assert file.endswith("a.png") and re.search(r"a\.txt: caption is a symlink .* outside the dataset", why)
    (folder / "a.txt").unlink()
    (folder / "a.txt").symlink_to(folder / "b.txt")  # inside the dataset: read
    assert {i.caption for i in load_dataset(tmp_path / "ds", SMALL).items} == {"sks, b"}


def test_big_captions_are_capped_and_the_check_is_linear(tmp_path: Path) -> None:
    folder = tmp_path / "ds" / "1_sks"
    picture(folder / "big.png", 0, "sks, " + "x" * CAPTION_LIMIT)
    # under the cap, 300k tags: the old trigger search copied the rest of the list at every tag
    # (minutes; now under a second)
    picture(folder / "many.png", 1, "x, " * 300_000 + "sks")
    result = check([tmp_path / "ds"], CheckConfig(trigger="sks", check_duplicates=False))
    unread = next(f for f in result.findings if f.rule == "caption-unread")
    assert unread.path.name == "big.txt" and "1 MiB caption limit" in unread.message
    assert {f.path.name for f in result.findings if f.rule == "trigger-not-first"} == {"many.txt"}
    [(file, why)] = load_dataset(tmp_path / "ds", SMALL).skipped
    assert file.endswith("big.png") and "big.txt: caption is 1.0 MiB, over the 1 MiB caption limit" in why
    # a trigger spread over tags is looked for in as many tags as it has words, not the rest
    assert _trigger_at(["sks", "woman", "x"], 0, "sks woman")
    assert not _trigger_at(["sks", "x"], 0, "sks woman")


def test_tag_frequency_metadata_is_bounded(tmp_path: Path) -> None:
    folder = tmp_path / "1_sks"
    tags = [f"tag {i}" for i in range(3 * MAX_FOLDER_TAGS)]
    picture(folder / "a.png", 0, ", ".join(["sks", "y" * 500, *tags]))
    picture(folder / "b.png", 1, "sks, tag 5")
    frequency = load_dataset(tmp_path, SMALL).tag_frequency()["1_sks"]
    assert len(frequency) == MAX_FOLDER_TAGS and frequency["sks"] == 2 and frequency["tag 5"] == 2
    assert all(len(tag) <= 200 for tag in frequency)


def test_non_utf8_names_are_shown_escaped(tmp_path: Path) -> None:
    folder = tmp_path / "ds" / "img" / "10_sks"
    bad = Path(os.fsdecode(os.fsencode(folder) + b"/bad\xffname.png"))
    picture(bad, 0)  # no caption: a finding names the file
    picture(folder / "ok.png", 1, "sks, ok")
    for fmt in ("human", "json", "github"):
        res = CliRunner().invoke(cli, ["check", str(tmp_path / "ds"), "--trigger", "sks", "--format", fmt])
        assert res.exit_code == 1 and "internal error" not in res.output, res.output
        assert "bad\\xffname.png" in res.output.replace("\\\\", "\\")
    res = CliRunner().invoke(cli, ["buckets", str(tmp_path / "ds"), "--json"])
    assert res.exit_code == 0, res.output
    assert "img/10_sks/bad\\xffname.png" in json.loads(res.output)["lost_fraction"]
    bad_dir = Path(os.fsdecode(os.fsencode(tmp_path) + b"/t/1_caf\xe9"))
    picture(bad_dir / "a.png", 2, "sks")
    dataset = load_dataset(bad_dir.parent, SMALL)
    assert json.dumps(dataset.dataset_dirs()).encode("utf-8") and "1_caf\\xe9" in dataset.tag_frequency()


def test_fifos_are_never_opened(tmp_path: Path, no_hang: None) -> None:
    folder = tmp_path / "ds" / "img" / "10_sks"
    picture(folder / "ok.png", 0, "sks, ok")
    picture(folder / "pipe.png", 1)
    os.mkfifo(folder / "pipe.jpg")
    os.mkfifo(folder / "pipe.txt")
    result = check([tmp_path / "ds"], CheckConfig(trigger="sks"))
    found = {(f.rule, f.path.name): f.message for f in result.findings}
    assert "named pipe" in found[("image-unreadable", "pipe.jpg")]
    assert "named pipe" in found[("caption-unread", "pipe.txt")]
    report = buckets_for(tmp_path / "ds", BucketConfig(), 1)
    assert len(report.report.assignments) == 2
    assert next(why for name, why in report.skipped if name.endswith("pipe.jpg")).startswith("a named pipe")
    loaded = load_dataset(tmp_path / "ds", SMALL)
    assert [i.path.name for i in loaded.items] == ["ok.png"]
    why = {Path(file).name: reason for file, reason in loaded.skipped}
    assert why["pipe.jpg"].startswith("a named pipe")
    assert "pipe.txt: caption is a named pipe" in why["pipe.png"]  # its caption is the FIFO
    (folder / "ok.png").unlink()
    with pytest.raises(CurateError, match=r"no training images.*pipe\.jpg: a named pipe"):
        load_dataset(tmp_path / "ds", SMALL)  # nothing left: the error says why


def test_buckets_read_a_symlinked_layout(tmp_path: Path) -> None:
    from curate.stages.ingest import ImportConfig, import_sources
    from curate.stages.layout import LayoutConfig, layout

    raw = tmp_path / "raw"
    for i in range(3):
        picture(raw / f"cat_{i}.png", i, "sks, cat")
    ws, out = tmp_path / "ws", tmp_path / "dataset"
    import_sources(ws, [raw], ImportConfig(workers=1))
    layout(ws, out, LayoutConfig(repeats=2, link="symlink"))
    assert all(p.is_symlink() for p in out.rglob("*.png"))
    result = buckets_for(out, BucketConfig(), 1)
    assert len(result.report.assignments) == 3 and result.skipped == []
    assert check([out], CheckConfig(check_duplicates=False)).images == 3
    assert len(load_dataset(out, SMALL).items) == 3


@pytest.mark.usefixtures("one_thread")
def test_training_on_non_utf8_names(tiny_sd: Path, tmp_path: Path) -> None:
    torch = pytest.importorskip("torch")
    from curate.trainer import loop
    from curate.trainer.config import TrainConfig
    from curate.trainer.formats import load_network

    folder = Path(os.fsdecode(os.fsencode(tmp_path) + b"/ds/1_caf\xe9"))
    for i, name in enumerate((b"bad\xffname", b"ok")):
        image = Path(os.fsdecode(os.fsencode(folder) + b"/" + name + b".png"))
        picture(image, i, "sks, photo")
    config = TrainConfig(resolution=64, min_bucket_reso=64, max_bucket_reso=128, batch_size=2, network_dim=4,
                         max_train_steps=1, save_precision="float", seed=1, cache_latents=True)
    result = loop.train(folder.parent, tiny_sd, tmp_path / "out", config, device=torch.device("cpu"))
    _, metadata = load_network(result.output)
    assert json.loads(metadata["ss_tag_frequency"]) == {"1_caf\\xe9": {"sks": 2, "photo": 2}}
