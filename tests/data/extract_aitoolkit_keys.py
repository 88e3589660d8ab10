"""The keys ostris/ai-toolkit reads from a training job, for tests/test_trainer_aitoolkit.py.

ai-toolkit's config classes (toolkit/config_modules.py) take each key with `kwargs.get('key',
...)` and ignore any other, so a key it does not read is a setting lost without a word. This
reads the source from a git repository (`git show COMMIT:path`, no checkout, nothing run) with
Python's ast: per class, the string keys of every `kwargs.get(...)` in its `__init__`; for the
process table, the `get_conf('key', ...)` names of the sd_trainer process chain; the model
architecture names (`ModelArch` and the `arch = "..."` of the built-in model extensions); the
optimizer and scheduler names its factories compare against.

    python tests/data/extract_aitoolkit_keys.py /work/.mirror/ostris+ai-toolkit/repo [COMMIT]

writes tests/data/aitoolkit_config_keys.json (sorted: the same commit gives the same file).
"""

from __future__ import annotations

import argparse
import ast
import json
import subprocess
from pathlib import Path

CLASSES = ("NetworkConfig", "TrainConfig", "ModelConfig", "SaveConfig", "SampleConfig", "DatasetConfig",
           "LoggingConfig")
PROCESS_FILES = ("jobs/process/BaseSDTrainProcess.py", "jobs/process/BaseTrainProcess.py",
                 "jobs/process/BaseProcess.py")
OUT = Path(__file__).with_name("aitoolkit_config_keys.json")


def show(repo: Path, commit: str, path: str) -> str:
    return subprocess.run(["git", "--git-dir", str(repo), "show", f"{commit}:{path}"], check=True,
                          capture_output=True, text=True).stdout


def files(repo: Path, commit: str, prefix: str) -> list[str]:
    out = subprocess.run(["git", "--git-dir", str(repo), "ls-tree", "-r", "--name-only", commit, prefix],
                         check=True, capture_output=True, text=True).stdout
    return [line for line in out.splitlines() if line.endswith(".py")]


def call_keys(node: ast.AST, owner: str, method: str) -> set[str]:
    """First-argument strings of `owner.method("key", ...)` calls under node."""
    keys = set()
    for call in ast.walk(node):
        if (isinstance(call, ast.Call) and isinstance(call.func, ast.Attribute) and call.func.attr == method
                and (not owner or (isinstance(call.func.value, ast.Name) and call.func.value.id == owner))
                and call.args and isinstance(call.args[0], ast.Constant)
                and isinstance(call.args[0].value, str)):
            keys.add(call.args[0].value)
    return keys


def compared_names(source: str, variable: str) -> set[str]:
    """Strings a function compares `variable` with (==, in (...)) or matches its start with
    (`variable.startswith("prodigy")`: every name starting so is taken; the prefix is listed)."""
    names = set()
    for node in ast.walk(ast.parse(source)):
        if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                and node.func.attr == "startswith" and isinstance(node.func.value, ast.Name)
                and node.func.value.id == variable):
            names |= {c.value for c in node.args if isinstance(c, ast.Constant) and isinstance(c.value, str)}
        if isinstance(node, ast.Compare) and isinstance(node.left, ast.Name) and node.left.id == variable:
            for right in node.comparators:
                names |= {c.value for c in ast.walk(right) if isinstance(c, ast.Constant)
                          and isinstance(c.value, str)}
    return names


def extract(repo: Path, commit: str) -> dict[str, object]:
    tree = ast.parse(show(repo, commit, "toolkit/config_modules.py"))
    classes = {node.name: sorted(call_keys(node, "kwargs", "get")) for node in tree.body
               if isinstance(node, ast.ClassDef) and node.name in CLASSES}
    process = set()
    for path in PROCESS_FILES:
        process |= call_keys(ast.parse(show(repo, commit, path)), "self", "get_conf")
    arch = set()
    for node in tree.body:  # ModelArch = Literal['sd1', ...]
        if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == "ModelArch"
                                                for t in node.targets):
            arch |= {c.value for c in ast.walk(node.value) if isinstance(c, ast.Constant)
                     and isinstance(c.value, str)}
    for path in files(repo, commit, "extensions_built_in/diffusion_models"):
        for node in ast.walk(ast.parse(show(repo, commit, path))):
            if (isinstance(node, ast.Assign)
                    and any(isinstance(t, ast.Name) and t.id == "arch" for t in node.targets)
                    and isinstance(node.value, ast.Constant) and isinstance(node.value.value, str)):
                arch.add(node.value.value)
    return {"commit": commit, "classes": classes, "process": sorted(process | {"type"}),
            "arch": sorted(arch),
            "optimizers": sorted(compared_names(show(repo, commit, "toolkit/optimizer.py"), "lower_type")),
            "schedulers": sorted(compared_names(show(repo, commit, "toolkit/scheduler.py"), "name"))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("repo", type=Path, help="an ostris/ai-toolkit git directory")
    parser.add_argument("commit", nargs="?", default="HEAD")
    args = parser.parse_args()
    commit = subprocess.run(["git", "--git-dir", str(args.repo), "rev-parse", args.commit], check=True,
                            capture_output=True, text=True).stdout.strip()
    OUT.write_text(json.dumps(extract(args.repo, commit), indent=1, sort_keys=True) + "\n", encoding="utf-8")
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
