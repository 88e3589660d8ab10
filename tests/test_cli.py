"""The command line: help with examples, --json, one-line errors, dry runs, config."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from curate.cli import COMMANDS, cli


def run(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(cli, list(args))
    return result.exit_code, result.stdout, result.stderr


def all_commands() -> list[list[str]]:
    """Every verb, and every subcommand of the verbs that are groups (`tags filter`)."""
    out = []
    for verb in COMMANDS:
        command = cli.get_command(None, verb)  # type: ignore[arg-type]
        if isinstance(command, click.Group):
            out += [[verb, sub] for sub in command.list_commands(None)]  # type: ignore[arg-type]
        else:
            out.append([verb])
    return out


@pytest.mark.parametrize("words", all_commands(), ids=" ".join)
def test_every_command_has_help_with_example(words: list[str]) -> None:
    code, out, _ = run(*words, "--help")
    assert code == 0 and "Example" in out and "--json" in out


def test_help_imports_nothing_heavy() -> None:
    probe = ("import sys; from click.testing import CliRunner; from curate.cli import cli; "
             "CliRunner().invoke(cli, ['--help']); "
             "print(sorted(m for m in ('PIL', 'numpy', 'torch', 'onnxruntime', 'rembg', "
             "'diffusers', 'cv2', 'rich') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_import_json_and_status(scrape: Path, tmp_path: Path) -> None:
    ws = tmp_path / "ws"
    code, out, _ = run("import", str(scrape / "gallery-dl"), "--into", str(ws), "--json")
    assert code == 0
    data = json.loads(out)
    assert data["counts"]["imported"] == 4 and data["counts"]["merged"] == 1
    code, out, _ = run("status", str(ws), "--json")
    status = json.loads(out)
    assert status["images"] == 4 and status["origins"] == 5
    assert {"stage": "import", "verdict": "merged", "count": 1} in status["verdicts"]
    code, out, _ = run("import", str(scrape / "gallery-dl"), "--into", str(ws))
    assert code == 0 and "nothing new: all 5 files are unchanged" in out


def test_human_summary_lists_problems(scrape: Path, tmp_path: Path) -> None:
    code, out, _ = run("import", str(scrape / "bad"), "--into", str(tmp_path / "ws"))
    assert code == 0
    assert "skipped: " in out and "empty.jpg: empty file (0 bytes)" in out
    assert "warning: " in out and "imported" in out
    code, out, _ = run("status", str(tmp_path / "ws"), "--skipped")
    assert "truncated.jpg: truncated or corrupt image" in out


def test_missing_source_is_one_line_error(tmp_path: Path) -> None:
    code, out, err = run("import", str(tmp_path / "nope"), "--into", str(tmp_path / "ws"))
    assert code == 2
    assert err.strip().count("\n") == 0 and "no such file or folder" in err
    assert "Traceback" not in err + out
    assert not (tmp_path / "ws").exists()


def test_status_of_non_workspace(tmp_path: Path) -> None:
    code, _, err = run("status", str(tmp_path))
    assert code == 2 and "is not a curate workspace" in err


def test_dry_run_writes_nothing(scrape: Path, tmp_path: Path) -> None:
    ws = tmp_path / "ws"
    code, out, _ = run("import", str(scrape / "bad"), "--into", str(ws), "--dry-run", "--json")
    assert code == 0 and json.loads(out)["counts"]["skipped"] == 5
    assert not ws.exists()


def test_strict_exits_nonzero_on_skips(scrape: Path, tmp_path: Path) -> None:
    code, _, _ = run("import", str(scrape / "bad"), "--into", str(tmp_path / "ws"), "--strict", "-q")
    assert code == 1


def test_config_file_set_and_flag_precedence(scrape: Path, tmp_path: Path) -> None:
    ws = tmp_path / "ws"
    run("init", str(ws))
    assert "[import]" in (ws / "curate.toml").read_text()
    (ws / "curate.toml").write_text('[import]\nanimated = "skip"\n')
    _, out, _ = run("import", str(scrape / "variants"), "--into", str(ws), "--json")
    assert any("animated" in s["reason"] for s in json.loads(out)["skipped"])
    ws2 = tmp_path / "ws2"
    run("init", str(ws2))
    (ws2 / "curate.toml").write_text('[import]\nanimated = "skip"\n')
    _, out, _ = run("import", str(scrape / "variants"), "--into", str(ws2), "--json",
                    "--set", "import.animated=first")
    assert not json.loads(out)["skipped"]


def test_bad_config_is_one_line_error(scrape: Path, tmp_path: Path) -> None:
    ws = tmp_path / "ws"
    code, _, err = run("import", str(scrape / "bad"), "--into", str(ws), "--set", "import.wrokers=2")
    assert code == 2 and "unknown option(s) wrokers; valid: animated" in err
    code, _, err = run("import", str(scrape / "bad"), "--into", str(ws), "--set", "import.workers=x")
    assert code == 2 and "import.workers = 'x': expected" in err


def test_internal_error_hides_traceback_unless_debug(tmp_path: Path) -> None:
    ws = tmp_path / "ws"
    run("init", str(ws))
    (ws / ".curate" / "manifest.sqlite").write_bytes(b"this is not sqlite" * 100)
    code, _, err = run("status", str(ws))
    assert code == 2 and "cannot open the manifest" in err and "Traceback" not in err


def test_unreadable_file_skipped(scrape: Path, tmp_path: Path) -> None:
    """chmod 000 stops everyone but root; as root the import runs in a new user namespace,
    where root's override of file permissions no longer applies."""
    src = tmp_path / "src"
    shutil.copytree(scrape / "hydrus", src)
    locked = src / "Image_2.jpg"
    locked.chmod(0)
    prefix: list[str] = []
    if os.geteuid() == 0:
        if subprocess.run(["unshare", "--user", "true"], capture_output=True).returncode != 0:
            pytest.skip("running as root and user namespaces are unavailable")
        prefix = ["unshare", "--user"]
    cmd = [*prefix, sys.executable, "-m", "curate", "import", str(src), "--into",
           str(tmp_path / "ws"), "--json"]
    out = subprocess.run(cmd, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    skipped = json.loads(out.stdout)["skipped"]
    assert [s["file"] for s in skipped] == [str(locked)]
    assert "permission denied" in skipped[0]["reason"]


def test_a_closed_pipe_is_not_an_internal_error(tmp_path: Path) -> None:
    """`curate ... | head`: when the reader goes away, no traceback and no 'internal error'."""
    folder = tmp_path / "raw"
    folder.mkdir()
    proc = subprocess.Popen([sys.executable, "-m", "curate", "dedupe", str(folder), "--json"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            env={**os.environ, "CURATE_CACHE_DIR": str(tmp_path / "cache")})
    assert proc.stdout is not None and proc.stderr is not None
    proc.stdout.close()  # the reader is gone before curate writes anything
    err = proc.stderr.read().decode()
    proc.wait(timeout=60)
    assert "Traceback" not in err and "internal error" not in err
