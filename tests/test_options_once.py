"""Options declared once (issue 15): every stage flag is made from its config dataclass field (help
and default from there), the `curate init` template lists every field of every table, the tables
are named as the commands (old names still read, with a note), and the import layers hold."""

from __future__ import annotations

import ast
import dataclasses
import re
import tomllib
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from curate.cli import cli as main
from curate.cli._flags import ConfigOption, flag_help
from curate.config import SECTIONS, build, default_text, section_class, stage_config
from curate.errors import CurateError
from curate.pipeline.config import EXECUTOR_FIELDS, RunConfig
from curate.stages.captions.filter import FilterStageConfig
from curate.stages.quality.config import QualityConfig
from curate.workspace import default_config

ROOT = Path(__file__).resolve().parents[1]
# command path -> the table its options come from
COMMANDS = {("import",): "import", ("dedupe",): "dedupe", ("filter",): "filter", ("bg",): "bg",
            ("crop",): "crop", ("tag",): "tag", ("tags", "filter"): "tags-filter", ("layout",): "layout",
            ("check",): "check", ("train",): "train"}
# flags named like a field that are not that field's flag, and why
NOT_FIELD_FLAGS = {("check", "disable"): "adds to the [check] list instead of replacing it",
                   ("layout", "out"): "the dataset folder, not an option of the table",
                   ("train", "model"): "the base model path, not an option of the table"}


def _command(path: tuple[str, ...]) -> click.Command:
    ctx = click.Context(main)
    cmd: click.Command = main
    for name in path:
        cmd = cmd.get_command(ctx, name)  # type: ignore[attr-defined]
    return cmd


@pytest.mark.parametrize("path", list(COMMANDS), ids=" ".join)
def test_every_flag_of_a_stage_option_comes_from_its_field(path: tuple[str, ...]) -> None:
    section = COMMANDS[path]
    fields = {f.name: f for f in dataclasses.fields(section_class(section))}
    # where the per-image work runs is [run]'s (declared once there), a flag of dedupe too
    fields.update({f.name: f for f in dataclasses.fields(RunConfig) if f.name in EXECUTOR_FIELDS})
    made = [p for p in _command(path).params if isinstance(p, ConfigOption)]
    assert made, path
    for param in _command(path).params:
        if not isinstance(param, click.Option) or param.name is None:
            continue
        field_named = param.name if param.name in fields else None
        if isinstance(param, ConfigOption):
            item = fields[param.config_field]
            assert param.default is None, param.opts  # not given = curate.toml / --set win
            assert param.help == flag_help(item, param.config_flag), param.opts
            assert param.help.startswith(item.metadata["help"]), param.opts
            assert f"default: {default_text(item)})" in param.help, param.opts
        elif field_named:
            assert (path[-1], field_named) in NOT_FIELD_FLAGS, f"{param.opts} written by hand"


def test_help_shows_the_dataclass_default_and_help() -> None:
    out = CliRunner().invoke(main, ["dedupe", "--help"], terminal_width=400).output
    assert "Side of the hash: 8 gives 64-bit hashes, 64 gives 4096. (default: 8)" in out
    out = CliRunner().invoke(main, ["tag", "--help"], terminal_width=400).output
    assert "General tags above this probability are kept (sd-scripts' default is also 0.35). " \
           "(default: 0.35)" in out


def test_every_option_has_help() -> None:
    for section in SECTIONS:
        for item in dataclasses.fields(section_class(section)):
            assert item.metadata.get("help"), f"{section}.{item.name} has no help"


def test_the_init_template_holds_every_field_of_every_table() -> None:
    text = default_config()
    tables = tomllib.loads(re.sub(r"^# (\S+ = .*)$", r"\1", text, flags=re.MULTILINE))
    assert list(tables) == list(SECTIONS)
    for section in SECTIONS:
        cls = section_class(section)
        assert set(tables[section]) == {f.name for f in dataclasses.fields(cls)}, section
        for item in dataclasses.fields(cls):
            assert " ".join(item.metadata["help"].split()[:4]) in " ".join(text.replace("# ", "").split())
        if section != "train":  # train's dataclass imports no torch, but keep it to its own test
            build(cls, section, tables[section])


def test_a_flag_given_wins_and_one_not_given_leaves_the_file(tmp_path: Path) -> None:
    (tmp_path / "curate.toml").write_text("[dedupe]\nhash_size = 16\n", encoding="utf-8")
    ctx = _command(("dedupe",)).make_context("dedupe", [str(tmp_path), "--keep", "first"])
    given = [v for k, v in ctx.params.items() if k.startswith("config__") and v is not None]
    assert given == ["first"]  # every flag not typed is None, so curate.toml's hash_size stays
    from curate.stages.dedupe.config import DedupeConfig

    config = stage_config(DedupeConfig, "dedupe", tmp_path / "curate.toml", (), {"keep": "first"})
    assert config.hash_size == 16 and config.keep == "first"


def test_old_table_names_are_read_with_a_note(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    toml = tmp_path / "curate.toml"
    toml.write_text("[quality]\nmin_side = 300\n[filter]\nmin_share = 0.3\n", encoding="utf-8")
    assert stage_config(QualityConfig, "filter", toml).min_side == 300
    assert stage_config(FilterStageConfig, "tags-filter", toml).min_share == 0.3
    err = capsys.readouterr().err
    assert "[quality] is read as [filter]" in err and "read as [tags-filter]" in err
    toml.write_text("[filter]\nmin_side = 300\n[tags-filter]\nmin_share = 0.3\n", encoding="utf-8")
    assert stage_config(QualityConfig, "filter", toml).min_side == 300
    assert stage_config(FilterStageConfig, "tags-filter", toml).min_share == 0.3


def test_old_and_new_names_together_are_an_error(tmp_path: Path) -> None:
    toml = tmp_path / "curate.toml"
    toml.write_text("[quality]\nmin_side = 300\n[filter]\nmin_side = 200\n", encoding="utf-8")
    with pytest.raises(CurateError, match=r"both \[quality\].*\[filter\]"):
        stage_config(QualityConfig, "filter", toml)
    toml.write_text("[filter]\nmin_share = 0.2\n[tags-filter]\nmin_share = 0.3\n", encoding="utf-8")
    with pytest.raises(CurateError, match=r"both \[filter\].*\[tags-filter\]"):
        stage_config(FilterStageConfig, "tags-filter", toml)


def test_old_names_with_set(tmp_path: Path) -> None:
    assert stage_config(QualityConfig, "filter", None, ["quality.min_side=99"]).min_side == 99
    assert stage_config(FilterStageConfig, "tags-filter", None, ["filter.min_share=0.5"]).min_share == 0.5
    config = stage_config(FilterStageConfig, "tags-filter", None, ["tags-filter.min_share=0.4"])
    assert config.min_share == 0.4


def test_curate_filter_reads_filter_and_tags_filter_reads_tags_filter(tmp_path: Path) -> None:
    out = CliRunner().invoke(main, ["filter", str(tmp_path), "--set", "filter.min_sise=3"])
    assert out.exit_code == 2 and "[filter] has unknown option(s) min_sise" in out.output


# ---- layers: the same directions pyproject.toml's import-linter contracts state, for a checkout
# without import-linter installed (function-level imports count) ----

BASE = ("curate.errors", "curate.atomic", "curate.paths", "curate.config", "curate.manifest",
        "curate.record", "curate.kohya", "curate.workspace", "curate.executor")
ABOVE_BASE = ("curate.stages", "curate.check", "curate.folder", "curate.cli", "curate.pipeline",
              "curate.report", "curate.status", "curate.tagging", "curate.buckets", "curate.trainer")
# installed as curate.tagging & co. (setup.py), kept as top-level folders of the repository
MAPPED = ("tagging", "buckets", "trainer")


def _source(module: str) -> Path:
    """Where a module's source is in the checkout: curate.tagging.x is tagging/x."""
    parts = module.split(".")
    if parts[0] == "curate" and len(parts) > 1 and parts[1] in MAPPED:
        parts = parts[1:]
    return ROOT.joinpath(*parts)


def _module(file: Path) -> str:
    parts = file.relative_to(ROOT).with_suffix("").parts
    name = ".".join(("curate", *parts) if parts[0] in MAPPED else parts)
    return name.removesuffix(".__init__")


def _ignored() -> set[tuple[str, str]]:
    """(importer, imported) pairs pyproject.toml's contracts allow by name (ignore_imports)."""
    config = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["tool"]["importlinter"]
    rules = [rule for contract in config["contracts"] for rule in contract.get("ignore_imports", [])]
    return {tuple(part.strip() for part in rule.split("->")) for rule in rules}  # type: ignore[misc]


def _imports(module: str) -> set[str]:
    path = _source(module)
    files = list(path.rglob("*.py")) if path.is_dir() else [path.with_suffix(".py")]
    found, ignored = set(), _ignored()
    for file in files:
        name = _module(file)
        for node in ast.walk(ast.parse(file.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and node.module and not node.level:
                names = {node.module}
            elif isinstance(node, ast.Import):
                names = {a.name for a in node.names}
            else:
                continue
            found |= {n for n in names if (name, n) not in ignored}
    return found


def _under(name: str, prefixes: tuple[str, ...]) -> bool:
    return any(name == p or name.startswith(p + ".") for p in prefixes)


@pytest.mark.parametrize(("module", "forbidden"), [
    *[(m, ABOVE_BASE) for m in BASE],
    ("curate.tagging", ("curate.stages", "curate.check", "curate.cli", "curate.pipeline", "curate.workspace",
                        "curate.manifest", "curate.buckets", "curate.trainer")),
    ("curate.buckets", ("curate.stages", "curate.check", "curate.cli", "curate.pipeline", "curate.tagging",
                        "curate.trainer")),
    ("curate.stages", ("curate.trainer", "curate.cli", "curate.pipeline", "curate.report", "torch")),
    ("curate.check", ("curate.trainer", "curate.cli", "curate.pipeline", "torch")),
    ("curate.trainer", ("curate.stages", "curate.check", "curate.cli", "curate.pipeline", "curate.report",
                        "curate.tagging")),
])
def test_layers(module: str, forbidden: tuple[str, ...]) -> None:
    wrong = sorted(name for name in _imports(module) if _under(name, forbidden))
    assert not wrong, f"{module} imports {wrong}"


def test_the_base_config_imports_no_stage_on_import() -> None:
    """SECTIONS names the stage dataclasses as strings: importing curate.config imports none."""
    import subprocess
    import sys

    code = ("import sys, curate.config; print(sorted(m for m in sys.modules "
            "if m.startswith(('curate.stages', 'curate.trainer', 'curate.tagging'))))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True)
    assert out.stdout.strip() == "[]"
