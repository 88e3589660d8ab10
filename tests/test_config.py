from __future__ import annotations

from pathlib import Path

import pytest

from curate.config import apply_overrides, parse_value, stage_config
from curate.errors import CurateError
from curate.stages.ingest import ImportConfig


def test_parse_value_toml_literals() -> None:
    assert parse_value("true") is True
    assert parse_value("0.4") == 0.4
    assert parse_value('["a", "b"]') == ["a", "b"]
    assert parse_value("hello world") == "hello world"


def test_overrides_nest() -> None:
    assert apply_overrides({"a": {"x": 1}}, ["a.y=2", "b.c.d=x"]) == {"a": {"x": 1, "y": 2},
                                                                    "b": {"c": {"d": "x"}}}
    with pytest.raises(CurateError, match="expected key=value"):
        apply_overrides({}, ["nonsense"])


def test_precedence(tmp_path: Path) -> None:
    toml = tmp_path / "curate.toml"
    toml.write_text("[import]\nworkers = 3\nmax_file_mb = 10\nstrict = true\n")
    cfg = stage_config(ImportConfig, "import", toml, ["import.workers=5"], {"max_file_mb": 20,
                                                                          "strict": None})
    assert (cfg.workers, cfg.max_file_mb, cfg.strict) == (5, 20, True)


def test_type_and_choice_checked(tmp_path: Path) -> None:
    with pytest.raises(CurateError, match=r"import\.animated = 'maybe'"):
        stage_config(ImportConfig, "import", None, ["import.animated=maybe"])
    toml = tmp_path / "curate.toml"
    toml.write_text("[import\n")
    with pytest.raises(CurateError, match="not valid TOML"):
        stage_config(ImportConfig, "import", toml)
