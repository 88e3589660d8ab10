"""`curate check`: every rule fires exactly where the bad dataset has the problem, a clean
dataset and one `curate layout` wrote pass, rules switch off from curate.toml / pyproject,
the three output formats, file-name mode, and the real pre-commit refusing then accepting."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner
from PIL import Image

from curate.check import RULES, CheckConfig, check, load_config, render
from curate.check.run import CheckResult
from curate.cli import cli
from curate.errors import CurateError
from curate.tagging.tokens import TokenCounter, bounds
from fixtures.scrape import PHOTOS, jpeg, photo, png, write

REPO_ROOT = Path(__file__).resolve().parents[1]
OK = "sks, woman, 1girl, solo"


def distinct(i: int, size: int = 320) -> Image.Image:
    """The i-th of a set of clearly different pictures (photo and crop both vary)."""
    src = photo(PHOTOS[i % len(PHOTOS)]).convert("RGB")
    step = (i // len(PHOTOS)) * 97
    side = min(size, *src.size)
    return src.crop((step % (src.width - side + 1), 0, step % (src.width - side + 1) + side, side))


def image(folder: Path, name: str, index: int, caption: str | bytes | None = OK) -> Path:
    path = folder / name
    write(path, png(distinct(index)) if name.lower().endswith(".png") else jpeg(distinct(index)))
    if caption is not None:
        cap = path.with_suffix(".txt")
        cap.parent.mkdir(parents=True, exist_ok=True)
        cap.write_bytes(caption if isinstance(caption, bytes) else caption.encode("utf-8"))
    return path


T = "dsA/img/10_sks/"
# Where each rule must fire in the bad repository, and nowhere else: (rule, path from the root).
EXPECTED = {
    ("caption-missing", T + "nocap.jpg"), ("caption-empty", T + "empty.txt"),
    ("caption-multiline", T + "multi.txt"), ("caption-encoding", T + "latin1.txt"),
    ("trigger-missing", T + "notrig.txt"), ("trigger-not-first", T + "late.txt"),
    ("escaped-parentheses", T + "paren.txt"), ("tag-blacklisted", T + "black.txt"),
    ("tags-contradict", T + "contra.txt"), ("caption-too-long", T + "long.txt"),
    ("stem-shared", T + "twin.png"), ("extension-unsupported", T + "anim.gif"),
    ("extension-case", T + "mixed.Jpg"), ("nested-folder", T + "sub"),
    ("duplicate-exact", T + "ok_copy.jpg"), ("duplicate-near", T + "near_q.jpg"),
    ("image-too-small", T + "small.jpg"), ("alpha-without-mask", T + "alpha.png"),
    ("image-unreadable", T + "broken.jpg"), ("caption-extension", "dsA/img/5_other/x.txt"),
    ("caption-unread", T + "outside.txt"), ("caption-control", T + "ctrl.txt"),
    ("extension-plugin", T + "pic.avif"), ("separator-literal", "dsA/img/3_sep/s.txt"),
    ("caption-extension-default", "dsA/dataset.toml"), ("dataset-config", "dsA/dataset.toml"),
    ("image-unused", "dsA/img/old"), ("image-unused", "dsB/img/loose.jpg"),
    ("folder-name", "dsB/img/sks_extra"), ("caption-extension-default", "dsB/img"),
    ("duplicate-exact", "dsB/img/10_sks/b2_again.png"), ("network-alpha", "train/config.toml"),
}


def has_avif() -> bool:
    from curate.kohya import readable_plugin_exts

    return ".avif" in readable_plugin_exts()


def build_toml_dataset(a: Path) -> None:
    """dsA: a dataset.toml (no caption_extension, a .caption subset, a missing image_dir) and a
    training subset holding one case of each caption and image rule."""
    write(a / "dataset.toml", "[general]\nshuffle_caption = true\n\n[[datasets]]\nresolution = 512\n\n"
          "  [[datasets.subsets]]\n  image_dir = \"img/10_sks\"\n  class_tokens = \"sks woman\"\n\n"
          "  [[datasets.subsets]]\n  image_dir = \"img/5_other\"\n  caption_extension = \".caption\"\n\n"
          "  [[datasets.subsets]]\n  image_dir = \"img/gone\"\n\n"
          "  [[datasets.subsets]]\n  image_dir = \"img/3_sep\"\n  caption_extension = \".txt\"\n"
          "  keep_tokens_separator = \"|||\"\n  shuffle_caption = false\n")
    s = a / "img/10_sks"
    image(s, "ok.jpg", 0)
    shutil.copy(s / "ok.jpg", s / "ok_copy.jpg")
    write(s / "ok_copy.txt", OK)
    for index, (name, caption) in enumerate([
            ("nocap", None), ("empty", ""), ("multi", "sks, 1girl\nsolo\n"),
            ("latin1", b"sks, caf\xe9\n"), ("notrig", "1girl, solo"), ("late", "1girl, sks, solo"),
            ("paren", "sks, hatsune miku \\(cosplay\\)"),
            ("black", "sks, watermark"), ("contra", "sks, blonde hair, brown hair"),
            ("long", "sks, " + ", ".join(f"detail {i}" for i in range(40))), ("twin", OK)], 1):
        image(s, f"{name}.jpg", index, caption)
    for name, index in (("ctrl", 2), ("outside", 3)):  # turned: unlike every other picture here
        write(s / f"{name}.jpg", jpeg(distinct(index).transpose(Image.Transpose.ROTATE_90)))
    write(s / "ctrl.txt", "sks, a\x00b, \x1b[31mred")
    write(a.parent / "secret.txt", "sks, the text of a file outside the dataset")
    (s / "outside.txt").symlink_to(a.parent / "secret.txt")
    write(s / "pic.avif", b"")  # sd-scripts globs .avif only with pillow-avif-plugin
    distinct(25).save(s / "pic.avif") if has_avif() else None
    write(s / "pic.txt", OK)
    image(a / "img/3_sep", "s.jpg", 26, "sks ||| woman, 1girl")
    image(s, "twin.png", 12, None)
    write(s / "anim.gif", b"GIF89a")
    image(s, "mixed.Jpg", 13, None)
    image(s / "sub", "deep.jpg", 14)
    write(s / "near.jpg", jpeg(distinct(15), quality=95))
    write(s / "near_q.jpg", jpeg(distinct(15).resize((300, 300)), quality=60))
    write(s / "small.jpg", jpeg(distinct(16).resize((100, 120))))
    rgba = distinct(17).convert("RGBA")
    rgba.putalpha(128)
    write(s / "alpha.png", png(rgba))
    write(s / "broken.jpg", b"\xff\xd8\xff\xe0 not really a jpeg")
    for name in ("near", "near_q", "small", "alpha", "broken"):
        write(s / f"{name}.txt", OK)
    image(a / "img/5_other", "x.jpg", 18)
    image(a / "img/old", "stale.jpg", 19)


def build_bad_repo(root: Path) -> dict[tuple[str, str], str]:
    """dsA, a folder-mode dataset (dsB), training configs and curate.toml. Returns EXPECTED with
    each rule's severity."""
    build_toml_dataset(root / "dsA")
    b = root / "dsB/img"
    image(b / "10_sks", "b1.jpg", 20, "sks, 1girl")
    write(b / "10_sks/b2.png", png(distinct(23), compress_level=1))
    write(b / "10_sks/b2_again.png", png(distinct(23), compress_level=9))  # other bytes, same pixels
    for name in ("b2", "b2_again"):
        write(b / f"10_sks/{name}.txt", "sks")
    image(b / "sks_extra", "e.jpg", 21)
    image(b, "loose.jpg", 22, None)
    write(root / "train/config.toml", "[network_arguments]\nnetwork_module = \"networks.lora\"\n"
          "network_dim = 8\nnetwork_alpha = 16\n")
    write(root / "train/gui.json", json.dumps({"network_dim": "16", "network_alpha": "8"}))
    write(root / "curate.toml", "[check]\ntrigger = \"sks\"\nblacklist = [\"watermark\"]\n")
    return {key: RULES[key[0]].severity for key in EXPECTED}


@pytest.fixture(scope="module")
def bad(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[tuple[str, str], str]]:
    root = tmp_path_factory.mktemp("bad") / "repo"
    return root, build_bad_repo(root)


@pytest.fixture(autouse=True)
def cache_dir(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> Path:
    folder = tmp_path_factory.getbasetemp() / "check-cache"
    monkeypatch.setenv("CURATE_CACHE_DIR", str(folder))
    return folder


def found(result: CheckResult, root: Path) -> dict[tuple[str, str], str]:
    return {(f.rule, f.path.relative_to(root).as_posix()): f.severity for f in result.findings}


def run_check(root: Path, *paths: Path, only: list[Path] | None = None) -> CheckResult:
    """What `curate check` runs: the repo's options, then folders or (pre-commit) file names."""
    return check(list(paths) if paths or only else [root], load_config(root).config, only)


def test_every_rule_fires_exactly_where_expected(bad: tuple[Path, dict]) -> None:
    root, expected = bad
    result = run_check(root)
    assert found(result, root) == expected
    assert {rule for rule, _ in expected} == set(RULES)  # the bad repo covers every rule
    assert len(result.findings) == len(expected) and result.exit_code == 1
    by_rule = {f.rule: f for f in result.findings if f.rule != "image-unused" and "dsB" not in str(f.path)}
    assert by_rule["caption-multiline"].line == 2 and by_rule["caption-encoding"].line == 1
    assert by_rule["dataset-config"].line == 15 and "img/gone" in by_rule["dataset-config"].message
    assert "estimated" in by_rule["caption-too-long"].message
    assert by_rule["duplicate-exact"].related == (root / "dsA/img/10_sks/ok.jpg",)
    assert "an identical copy of" in by_rule["duplicate-exact"].message
    lossless = next(f for f in result.findings if f.path.name == "b2_again.png")
    assert "b2_again.png is a same-pixels copy of" in lossless.message
    assert lossless.related == (root / "dsB/img/10_sks/b2.png",)
    assert "(hash distance" in by_rule["duplicate-near"].message
    assert "'sks' ([check] trigger)" in by_rule["trigger-missing"].message
    assert "'sks' as tag 2, not first" in by_rule["trigger-not-first"].message
    assert "network_alpha 16 > network_dim 8" in by_rule["network-alpha"].message
    for f in result.findings:  # one line each, naming its file, with a hint
        assert "\n" not in f.message + f.hint and f.hint and f.path.name in f.message + f.hint


def test_clean_dataset_has_no_findings(tmp_path: Path) -> None:
    ds = tmp_path / "clean"
    write(ds / "dataset.toml", "[general]\ncaption_extension = \".txt\"\n[[datasets]]\n"
          "[[datasets.subsets]]\nimage_dir = \"img/10_sks\"\nclass_tokens = \"sks woman\"\n"
          "[[datasets.subsets]]\nimage_dir = \"reg/1_woman\"\nclass_tokens = \"woman\"\nis_reg = true\n")
    for i in range(3):
        image(ds / "img/10_sks", f"{i}.jpg", i, f"sks, woman, tag{i}")
        image(ds / "reg/1_woman", f"r{i}.png", 10 + i, None)  # reg images may go uncaptioned
    result = check([ds], CheckConfig())
    assert result.findings == [] and result.images == 6 and result.exit_code == 0
    assert render(result, "human").startswith("ok: no problems in 6 images")


def test_a_dataset_written_by_curate_layout_passes(tmp_path: Path) -> None:
    from curate.stages.captions.edit import set_trigger
    from curate.stages.ingest import ImportConfig, import_sources
    from curate.stages.layout import LayoutConfig, layout

    raw = tmp_path / "raw"
    for i in range(4):
        image(raw, f"cat_{i}.jpg", i, "cat, indoors")
    rgba = distinct(5).convert("RGBA")
    rgba.putalpha(200)
    write(raw / "cutout.png", png(rgba))
    image(tmp_path / "regs", "woman.jpg", 6, None)
    ws = tmp_path / "ws"
    import_sources(ws, [raw], ImportConfig(workers=1))
    set_trigger(ws, "sks", "cat")
    for link in ("copy", "symlink"):
        out = tmp_path / f"dataset-{link}"
        layout(ws, out, LayoutConfig(repeats=10, reg=str(tmp_path / "regs"), link=link))
        result = check([out], CheckConfig())
        assert result.errors == 0 and result.images == 6, render(result, "human")
        assert found(result, out) == {}


@pytest.mark.parametrize("where", ["curate.toml", "pyproject.toml"])
def test_rules_switch_off_and_change_level_from_config(tmp_path: Path, where: str) -> None:
    ds = tmp_path / "repo"
    image(ds / "img/10_sks", "a.jpg", 0, "sks, brown hair\nsecond line")
    image(ds / "img/10_sks", "b.jpg", 1, "sks, name \\(x\\)")
    table = "[check]" if where == "curate.toml" else "[tool.curate.check]"
    write(ds / where, f"{table}\ndisable = [\"caption-multiline\"]\ncaption_ext = \".txt\"\n"
          f"severity = {{escaped-parentheses = \"error\", caption-extension-default = \"off\"}}\n")
    loaded = load_config(ds / "img")
    assert loaded.source == ds / where
    result = check([ds], loaded.config)
    assert {(f.rule, f.severity) for f in result.findings} == {("escaped-parentheses", "error")}
    write(ds / where, f"{table}\ncolour = \"red\"\n")
    with pytest.raises(CurateError, match=r"unknown option.*colour"):
        load_config(ds)
    write(ds / where, f"{table}\ndisable = [\"no-such-rule\"]\n")
    with pytest.raises(CurateError, match=r"unknown rule.*no-such-rule"):
        load_config(ds)


def test_guessed_trigger_warns_and_the_keep_tokens_head_counts(tmp_path: Path) -> None:
    ds = tmp_path / "ds"
    write(ds / "dataset.toml", "[general]\ncaption_extension = \".txt\"\nkeep_tokens = 2\n[[datasets]]\n"
          "[[datasets.subsets]]\nimage_dir = \"img/3_cat\"\nclass_tokens = \"cat\"\n")
    for i, caption in enumerate(["sks, cat, indoors", "sks, indoors, cat", "dog", "cat ||| x, y",
                                 "x, y, sks, cat"]):
        image(ds / "img/3_cat", f"{i}.jpg", i, caption)

    def triggers(config: CheckConfig) -> set[tuple[str, str, str]]:
        return {(f.rule, f.path.name, f.severity) for f in check([ds], config).findings}

    # guessed from class_tokens "cat": kept head of 2 tags; a guess only warns
    assert triggers(CheckConfig()) == {("trigger-not-first", "1.txt", "warning"),
                                       ("trigger-missing", "2.txt", "warning"),
                                       ("trigger-not-first", "4.txt", "warning")}
    # set by the user: errors; "sks" inside the head of 2 tags passes, the separator sets the head
    assert triggers(CheckConfig(trigger="sks")) == {("trigger-missing", "2.txt", "error"),
                                                    ("trigger-missing", "3.txt", "error"),
                                                    ("trigger-not-first", "4.txt", "error")}


def test_output_formats(bad: tuple[Path, dict]) -> None:
    root, _ = bad
    result = run_check(root)
    multi = next(f for f in result.findings if f.rule == "caption-multiline")
    path = str(root / "dsA/img/10_sks/multi.txt")
    github = render(result, "github").splitlines()
    line = next(line for line in github if "caption-multiline" in line)
    escaped = path.replace(":", "%3A").replace(",", "%2C")
    assert line == (f"::error file={escaped},line=2,title=curate check [caption-multiline]::"
                    f"{multi.message} (fix: {multi.hint})")
    assert all(re.match(r"::(error|warning) file=[^,]+(,line=\d+)?,title=", g) for g in github[:-1])
    human = render(result, "human").splitlines()
    assert f"{path}:2: error [caption-multiline] {multi.message} (fix: {multi.hint})" in human
    assert human[-1].startswith(f"{result.errors} error(s), {result.warnings} warning(s)")
    data = json.loads(render(result, "json"))
    assert data["counts"]["errors"] == result.errors and len(data["findings"]) == len(result.findings)
    assert {"rule", "severity", "file", "line", "message", "hint", "related"} == set(data["findings"][0])


def test_file_names_report_only_those_files(bad: tuple[Path, dict]) -> None:
    root, _ = bad
    t = root / "dsA/img/10_sks"
    result = run_check(root, only=[t / "multi.txt", t / "ok.jpg", root / "train/config.toml",
                                   root / "README.md"])
    assert found(result, root) == {("caption-multiline", "dsA/img/10_sks/multi.txt"): "error",
                                   # ok.jpg is in the pair, though ok_copy.jpg is the one reported
                                   ("duplicate-exact", "dsA/img/10_sks/ok_copy.jpg"): "error",
                                   ("network-alpha", "train/config.toml"): "warning"}
    result = run_check(root, only=[root / "dsB/img/sks_extra/e.jpg"])
    assert found(result, root) == {("folder-name", "dsB/img/sks_extra"): "error"}
    assert run_check(root, only=[root / "elsewhere.txt"]).findings == []


def test_a_folder_inside_a_dataset_checks_that_folder(bad: tuple[Path, dict]) -> None:
    root, _ = bad
    result = run_check(root, root / "dsA/img/5_other")
    assert found(result, root) == {("caption-extension", "dsA/img/5_other/x.txt"): "error"}


def test_cli_exit_codes_and_flags(bad: tuple[Path, dict], tmp_path: Path) -> None:
    root, expected = bad
    runner = CliRunner()
    res = runner.invoke(cli, ["check", str(root), "--json"])
    assert res.exit_code == 1 and len(json.loads(res.stdout)["findings"]) == len(expected)
    warn_only = tmp_path / "w"
    image(warn_only / "img/10_sks", "a.jpg", 0, "sks, blonde hair, brown hair")
    res = runner.invoke(cli, ["check", str(warn_only), "--format", "github"])
    assert res.exit_code == 0 and res.stdout.startswith("::warning file=")
    res = runner.invoke(cli, ["check", str(warn_only), "--disable", "tags-contradict", "-q",
                              "--disable", "caption-extension-default"])
    assert res.exit_code == 0 and res.stdout == ""
    res = runner.invoke(cli, ["check", str(warn_only), "--disable", "nope"])
    assert res.exit_code == 2 and "unknown rule" in res.stderr
    res = runner.invoke(cli, ["check", str(warn_only), "--trigger", "zzz", "--no-duplicates"])
    assert res.exit_code == 1 and "[trigger-missing]" in res.stdout
    res = runner.invoke(cli, ["check", str(tmp_path / "nothing-here")])
    assert res.exit_code == 2
    res = runner.invoke(cli, ["check", "--list-rules", "--json"])
    assert [r["id"] for r in json.loads(res.stdout)["rules"]] == list(RULES)


def test_rules_docstring_table_matches_registry() -> None:
    import curate.check.rules as rules_module

    rows = re.findall(r"^\| ([a-z-]+) \| (error|warning) \|", rules_module.__doc__ or "", re.M)
    assert rows == [(r.id, r.severity) for r in RULES.values()]


def test_token_bounds_and_counter() -> None:
    assert bounds("sks, 1girl") == (4, 9)  # sks , 1 girl: CLIP gives exactly 4 tokens
    assert bounds("a &amp; b") == (3, 3)  # unescaped as CLIP does
    counter = TokenCounter("/nonexistent/tokenizer")
    assert counter.over("sks, 1girl", 75) is None
    long = ", ".join(f"tag{i}" for i in range(30))  # 30 x (tag, digit(s), comma) pieces
    count = counter.over(long, 75)
    assert count is not None and not count.exact and count.tokens == bounds(long)[0] > 75
    assert counter.over("supercalifragilistic " * 10, 75) is None  # unsure: not reported


def test_exact_token_count_with_a_local_tokenizer(tmp_path: Path) -> None:
    pytest.importorskip("transformers")
    # A byte-level CLIP vocabulary without merges: every byte is one token, so the exact count
    # is the upper bound, above the limit while the lower bound is not. GPT-2/CLIP's byte to
    # character table: printable bytes stand for themselves, the rest map from U+0100 on.
    printable = [*range(33, 127), *range(161, 173), *range(174, 256)]
    extra = [b for b in range(256) if b not in printable]
    chars = [chr(b) for b in printable] + [chr(256 + i) for i in range(len(extra))]
    vocab = {c: i for i, c in enumerate(chars + [c + "</w>" for c in chars])}
    vocab.update({"<|startoftext|>": len(vocab), "<|endoftext|>": len(vocab) + 1})
    write(tmp_path / "tok/vocab.json", json.dumps(vocab))
    write(tmp_path / "tok/merges.txt", "#version: 0.2\n")
    counter = TokenCounter(str(tmp_path / "tok"))
    text = "abcdefghij " * 10
    assert bounds(text) == (10, 100)
    count = counter.over(text, 75)
    assert count is not None and count.exact and count.tokens == 100 and counter.used_exact


def test_pre_commit_refuses_then_accepts(tmp_path: Path) -> None:
    pytest.importorskip("pre_commit", reason="the pre-commit package is not installed")
    import yaml

    repo = tmp_path / "repo"
    env = {**os.environ, "CURATE_CACHE_DIR": str(tmp_path / "cache"), "PRE_COMMIT_HOME": str(tmp_path / "pc"),
           "GIT_CONFIG_NOSYSTEM": "1", "HOME": str(tmp_path), "PYTHONPATH": str(REPO_ROOT)}

    def git(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["git", *args], cwd=repo, env=env, capture_output=True, text=True)

    repo.mkdir()
    git("init", "-q", "-b", "main")
    git("config", "user.email", "check@example.invalid")
    git("config", "user.name", "check test")
    git("config", "commit.gpgsign", "false")
    (hook,) = yaml.safe_load((REPO_ROOT / ".pre-commit-hooks.yaml").read_text())
    assert hook["id"] == "curate-check" and hook["entry"] == "curate check" and hook["pass_filenames"]
    # The published hook installs curate with pip; here the same hook runs this checkout.
    local = {**hook, "language": "system", "entry": f"{sys.executable} -m curate check"}
    write(repo / ".pre-commit-config.yaml", yaml.safe_dump({"repos": [{"repo": "local", "hooks": [local]}]}))
    ds = repo / "dataset/img/10_sks"
    image(ds, "a.jpg", 0, "sks, 1girl\nsolo")
    image(ds, "b.jpg", 1, None)
    write(repo / "dataset/dataset.toml", "[general]\ncaption_extension = \".txt\"\n[[datasets]]\n"
          "[[datasets.subsets]]\nimage_dir = \"img/10_sks\"\nclass_tokens = \"sks\"\n")
    assert subprocess.run([sys.executable, "-m", "pre_commit", "install"], cwd=repo, env=env,
                          capture_output=True).returncode == 0
    git("add", "-A")
    refused = git("commit", "-m", "bad dataset")
    output = refused.stdout + refused.stderr
    assert refused.returncode != 0, output
    assert "[caption-multiline] caption a.txt has text after line 1" in output
    assert "[caption-missing] b.jpg has no caption file b.txt" in output
    write(ds / "a.txt", "sks, 1girl, solo\n")
    write(ds / "b.txt", "sks, outdoors\n")
    git("add", "-A")
    accepted = git("commit", "-m", "fixed dataset")
    assert accepted.returncode == 0, accepted.stdout + accepted.stderr
    assert "curate check" in accepted.stdout + accepted.stderr
