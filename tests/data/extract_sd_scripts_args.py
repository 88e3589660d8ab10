"""Extract what sd-scripts' `train_network.py` and `sdxl_train_network.py` accept, for
tests/test_trainer_backends.py.

Reads a kohya-ss/sd-scripts git repository with `git show COMMIT:path` (no checkout, nothing
imported or run) and walks the source with `ast`:

- options: `setup_parser()` in train_network.py, following every `add_*(parser, ...)` call
  into the module it was imported from (library/train_util.py, config_util.py, ...). An
  `if flag:` on a parameter is decided from the call's literal arguments, as at run time, so
  only the options train_network.py really registers are listed. Each option records what
  argparse needs to parse it (action, nargs, type, choices).
- sdxl_options: the same for sdxl_train_network.py, whose `setup_parser()` starts from
  `parser = train_network.setup_parser()` (an assignment the walker follows too) and adds
  sdxl_train_util.add_sdxl_training_arguments (--cache_text_encoder_outputs, ...).
- flux_options / sd3_options: the same for flux_train_network.py and sd3_train_network.py (both
  start from train_network.setup_parser() and add train_util.add_dit_training_arguments and
  their own flux_train_utils.add_flux_train_arguments / sd3_train_utils.add_sd3_training_arguments).
- dataset_schema: the key names of `ConfigSanitizer`'s voluptuous schemas in config_util.py,
  composed as train_network.py builds it (`ConfigSanitizer(True, True, masked_loss, True)`:
  DreamBooth subsets with caption dropout; the ControlNet keys only come with masked_loss).

    python tests/data/extract_sd_scripts_args.py /work/.mirror/kohya-ss+sd-scripts/repo [COMMIT]

writes tests/data/sd_scripts_train_network_args.json. The output is sorted and has no time in
it, so the same commit always gives the same file.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

OUT = Path(__file__).with_name("sd_scripts_train_network_args.json")
ENTRY = "train_network.py"
SDXL_ENTRY = "sdxl_train_network.py"
FLUX_ENTRY = "flux_train_network.py"
SD3_ENTRY = "sd3_train_network.py"


def show(repo: str, commit: str, path: str) -> ast.Module:
    text = subprocess.run(["git", "--git-dir", repo, "show", f"{commit}:{path}"], check=True,
                          capture_output=True, text=True).stdout
    return ast.parse(text)


def imports(tree: ast.Module) -> dict[str, tuple[str, str | None]]:
    """Local name -> (module file, attribute or None for a module) for the file's imports."""
    out: dict[str, tuple[str, str | None]] = {}
    for node in tree.body:
        if isinstance(node, ast.Import):
            for alias in node.names:
                out[alias.asname or alias.name] = (alias.name.replace(".", "/") + ".py", None)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            base = node.module.replace(".", "/")
            for alias in node.names:
                # `from library import x`: x is a module; `from library.utils import f`: a function
                if node.module == "library":
                    out[alias.asname or alias.name] = (f"{base}/{alias.name}.py", None)
                else:
                    out[alias.asname or alias.name] = (base + ".py", alias.name)
    return out


class Walker:
    def __init__(self, repo: str, commit: str) -> None:
        self.repo, self.commit = repo, commit
        self.trees: dict[str, ast.Module] = {}
        self.options: dict[str, dict[str, Any]] = {}

    def tree(self, path: str) -> ast.Module:
        if path not in self.trees:
            self.trees[path] = show(self.repo, self.commit, path)
        return self.trees[path]

    def function(self, path: str, name: str) -> ast.FunctionDef:
        for node in self.tree(path).body:
            if isinstance(node, ast.FunctionDef) and node.name == name:
                return node
        raise LookupError(f"{path}: no function {name}")

    def walk(self, path: str, fn: ast.FunctionDef, bound: dict[str, Any]) -> None:
        self._block(path, fn.body, bound)

    def _block(self, path: str, body: list[ast.stmt], bound: dict[str, Any]) -> None:
        for stmt in body:
            if isinstance(stmt, ast.If):
                decided = self._decide(stmt.test, bound)
                if decided is not False:
                    self._block(path, stmt.body, bound)
                if decided is not True:
                    self._block(path, stmt.orelse, bound)
            elif isinstance(stmt, ast.Expr | ast.Assign) and isinstance(stmt.value, ast.Call):
                # an Assign: `parser = train_network.setup_parser()` in sdxl_train_network.py
                self._call(path, stmt.value, bound)

    @staticmethod
    def _decide(test: ast.expr, bound: dict[str, Any]) -> bool | None:
        if isinstance(test, ast.Name) and test.id in bound:
            return bool(bound[test.id])
        if isinstance(test, ast.UnaryOp) and isinstance(test.op, ast.Not):
            inner = Walker._decide(test.operand, bound)
            return None if inner is None else not inner
        return None  # not decidable from the arguments: both branches count

    def _call(self, path: str, call: ast.Call, bound: dict[str, Any]) -> None:
        func = call.func
        if isinstance(func, ast.Attribute) and func.attr == "add_argument":
            self._option(call)
            return
        name = func.attr if isinstance(func, ast.Attribute) else func.id if isinstance(func, ast.Name) else ""
        if not (name.startswith("add_") or name == "setup_parser"):
            return
        target = self._resolve(path, func)
        if target is None:
            return
        module, fn = target, self.function(target, name)
        params = [a.arg for a in fn.args.args]
        values: dict[str, Any] = {}
        defaults = fn.args.defaults
        for param, default in zip(params[len(params) - len(defaults):], defaults, strict=True):
            values[param] = _literal(default)
        for param, arg in zip(params, call.args, strict=False):
            values[param] = _literal(arg) if not isinstance(arg, ast.Name) else bound.get(arg.id, arg.id)
        for kw in call.keywords:
            if kw.arg:
                values[kw.arg] = _literal(kw.value)
        self.walk(module, fn, values)

    def _resolve(self, path: str, func: ast.expr) -> str | None:
        table = imports(self.tree(path))
        if isinstance(func, ast.Attribute) and isinstance(func.value, ast.Name):
            module = table.get(func.value.id)
            return module[0] if module and module[1] is None else None
        if isinstance(func, ast.Name):
            if func.id in table:
                return table[func.id][0]
            return path
        return None

    def _option(self, call: ast.Call) -> None:
        names = [a.value for a in call.args if isinstance(a, ast.Constant) and isinstance(a.value, str)]
        long = [n for n in names if n.startswith("--")]
        if not long:
            return  # a positional (only config_util's own __main__ parser has one)
        spec: dict[str, Any] = {"action": "store", "nargs": None, "type": "str", "choices": None}
        for kw in call.keywords:
            if kw.arg in ("action", "nargs", "choices"):
                spec[kw.arg] = _literal(kw.value)
            elif kw.arg == "type":
                spec["type"] = kw.value.id if isinstance(kw.value, ast.Name) else ast.unparse(kw.value)
        if isinstance(spec["choices"], str):
            spec["choices"] = None  # an expression, not a literal list
        for name in long:
            self.options[name] = spec


def _literal(node: ast.expr) -> Any:
    try:
        return ast.literal_eval(node)
    except ValueError:
        return ast.unparse(node)


def dataset_schema(repo: str, commit: str) -> dict[str, list[str]]:
    tree = show(repo, commit, "library/config_util.py")
    cls = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "ConfigSanitizer")
    raw: dict[str, list[str]] = {}
    for node in cls.body:
        target = node.targets[0] if isinstance(node, ast.Assign) else None
        if isinstance(target, ast.Name) and isinstance(node.value, ast.Dict):
            keys = []
            for key in node.value.keys:
                if isinstance(key, ast.Constant):
                    keys.append(key.value)
                elif isinstance(key, ast.Call) and key.args and isinstance(key.args[0], ast.Constant):
                    keys.append(key.args[0].value)  # Required("image_dir")
            raw[target.id] = sorted(keys)

    def union(*names: str) -> list[str]:
        return sorted({k for n in names for k in raw[n]})

    common = ("SUBSET_ASCENDABLE_SCHEMA", "DB_SUBSET_ASCENDABLE_SCHEMA", "DO_SUBSET_ASCENDABLE_SCHEMA")
    return {"general": union("DATASET_ASCENDABLE_SCHEMA", *common),
            "datasets": [*union("DATASET_ASCENDABLE_SCHEMA", *common), "subsets"],
            "subsets": union("DB_SUBSET_DISTINCT_SCHEMA", *common),
            **{f"raw.{k}": v for k, v in sorted(raw.items())}}


def extract(repo: str, commit: str) -> dict[str, Any]:
    full = subprocess.run(["git", "--git-dir", repo, "rev-parse", commit], check=True, capture_output=True,
                          text=True).stdout.strip()
    options: dict[str, dict[str, Any]] = {}
    for entry in (ENTRY, SDXL_ENTRY, FLUX_ENTRY, SD3_ENTRY):
        walker = Walker(repo, full)
        walker.walk(entry, walker.function(entry, "setup_parser"), {})
        options[entry] = dict(sorted(walker.options.items()))
    return {"source": "https://github.com/kohya-ss/sd-scripts", "commit": full, "script": ENTRY,
            "options": options[ENTRY], "sdxl_script": SDXL_ENTRY, "sdxl_options": options[SDXL_ENTRY],
            "flux_script": FLUX_ENTRY, "flux_options": options[FLUX_ENTRY],
            "sd3_script": SD3_ENTRY, "sd3_options": options[SD3_ENTRY],
            "dataset_schema": dataset_schema(repo, full)}


def main(argv: list[str]) -> None:
    repo = argv[1] if len(argv) > 1 else "/work/.mirror/kohya-ss+sd-scripts/repo"
    commit = argv[2] if len(argv) > 2 else "HEAD"
    data = extract(repo, commit)
    OUT.write_text(json.dumps(data, indent=1, sort_keys=True) + "\n", encoding="utf-8")
    print(f"{OUT}: {len(data['options'])} {ENTRY} and {len(data['sdxl_options'])} {SDXL_ENTRY} options "
          f"from {data['commit'][:12]}")


if __name__ == "__main__":
    main(sys.argv)
