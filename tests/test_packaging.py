"""Installing curate adds one import name, `curate` (issue 15): the repository keeps the design's
top-level folders (tagging/, buckets/, trainer/), which install as curate.tagging & co. (setup.py).
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MAPPED = ("tagging", "buckets", "trainer")


def test_an_install_holds_only_curate_with_every_module_and_data_file(tmp_path: Path) -> None:
    target = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation",
                    "--no-compile", "--target", str(target), str(ROOT)], check=True, capture_output=True)
    names = sorted(p.name for p in target.iterdir() if p.name not in ("bin", "__pycache__"))
    assert [n for n in names if not n.endswith(".dist-info")] == ["curate"]
    # every source file of the checkout is in the install, under curate/
    for top in ("curate", *MAPPED):
        for file in (ROOT / top).rglob("*"):
            wanted = file.suffix in (".py", ".toml", ".json")
            if file.is_file() and "__pycache__" not in file.parts and wanted:
                rel = file.relative_to(ROOT / top)
                installed = target / "curate" / (rel if top == "curate" else Path(top) / rel)
                assert installed.is_file(), f"{file.relative_to(ROOT)} is not installed"
    # the install alone (the checkout off the path) imports, finds its data and has no `tagging`
    probe = ("import importlib.util as u, json, importlib.resources as r\n"
             "import curate.cli, curate.tagging.normalize, curate.buckets.assign, curate.trainer.config\n"
             "rules = r.files('curate.tagging.rules').joinpath('meta_tags.toml').is_file()\n"
             "print(json.dumps({'rules': rules, 'file': curate.tagging.normalize.__file__,\n"
             "  'top': [n for n in ('tagging', 'buckets', 'trainer') if u.find_spec(n)]}))")
    out = subprocess.run([sys.executable, "-I", "-c", f"import sys; sys.path.insert(0, {str(target)!r})\n"
                          + probe], cwd=target, capture_output=True, text=True, check=True)
    seen = json.loads(out.stdout)
    assert seen["rules"] and seen["top"] == []
    assert Path(seen["file"]).is_relative_to(target)


def test_no_code_imports_the_folders_by_their_top_level_names() -> None:
    """`import tagging` works from the repository root by accident (the folder is there) and
    nowhere else: code, tests, fixtures and benchmarks name curate.tagging."""
    wrong = []
    for folder in ("curate", *MAPPED, "tests", "fixtures", "bench"):
        for file in (ROOT / folder).rglob("*.py"):
            for node in ast.walk(ast.parse(file.read_text(encoding="utf-8"))):
                if isinstance(node, ast.ImportFrom) and not node.level and node.module:
                    names = [node.module]
                elif isinstance(node, ast.Import):
                    names = [a.name for a in node.names]
                else:
                    continue
                wrong += [f"{file.relative_to(ROOT)}:{node.lineno} {n}" for n in names
                          if n.split(".")[0] in MAPPED]
    assert wrong == []
