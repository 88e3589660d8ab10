"""Extract the pieces of sd-scripts' source that the trainer parity tests run, for
tests/test_trainer_parity.py.

Reads a kohya-ss/sd-scripts git repository with `git show COMMIT:path` (no checkout, nothing
imported) and cuts source text out of it with `ast`, so the tests can exec sd-scripts' own
code on small inputs without sd-scripts (or its dependencies) installed:

- apply_masked_loss (library/custom_train_functions.py): the alpha-mask loss; load_image
  (library/train_util.py): how an image is read as RGB, or RGBA for an alpha_mask subset;
- hashes (library/train_util.py): precalculate_safetensors_hashes, addnet_hash_legacy,
  addnet_hash_safetensors (sshs_model_hash / sshs_legacy_hash); model_hashes: model_hash and
  calculate_sha256 (ss_sd_model_hash / ss_new_sd_model_hash of the base model);
- reg_count and reg_balance (DreamBoothDataset.__init__): how train and reg images are counted
  with repeats, and the loop that registers reg images until they match the train count;
- lora_defaults (networks/lora.py create_network): how an unset network_dim / network_alpha /
  conv_dim / conv_alpha is read, and LoRAModule's rule for alpha 0 or None;
- metadata_keys (train_network.py): every `ss_*` key train_network.py writes;
  datasets_keys: the keys of each dataset and subset in its `ss_datasets` JSON.

    python tests/data/extract_sd_scripts_parity.py /work/.mirror/kohya-ss+sd-scripts/repo [COMMIT]

writes tests/data/sd_scripts_parity.json (sorted, no time in it: one commit, one file).
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

OUT = Path(__file__).with_name("sd_scripts_parity.json")


def show(repo: str, commit: str, path: str) -> str:
    return subprocess.run(["git", "--git-dir", repo, "show", f"{commit}:{path}"], check=True,
                          capture_output=True, text=True).stdout


def segment(text: str, nodes: list[ast.stmt]) -> str:
    """The source of consecutive statements, dedented so it can be exec'd on its own."""
    lines = text.splitlines()
    first, last = nodes[0], nodes[-1]
    chunk = lines[first.lineno - 1:last.end_lineno]
    return textwrap.dedent("\n".join(chunk)) + "\n"


def function(tree: ast.Module, name: str) -> ast.FunctionDef:
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef) and node.name == name:
            return node
    raise LookupError(f"no function {name}")


def method(tree: ast.Module, cls: str, name: str) -> ast.FunctionDef:
    for node in ast.walk(tree):
        if isinstance(node, ast.ClassDef) and node.name == cls:
            return function(ast.Module(body=node.body, type_ignores=[]), name)
    raise LookupError(f"no class {cls}")


def _names(node: ast.AST) -> set[str]:
    return {n.id for n in ast.walk(node) if isinstance(n, ast.Name)}


def reg_pieces(text: str) -> tuple[str, str]:
    """DreamBoothDataset.__init__: the `if subset.is_reg:` count and the `if num_reg_images == 0:`
    balancing block."""
    init = method(ast.parse(text), "DreamBoothDataset", "__init__")
    count = balance = None
    for node in ast.walk(init):
        if not isinstance(node, ast.If):
            continue
        test = ast.unparse(node.test)
        if test == "subset.is_reg" and "num_reg_images" in _names(node):
            count = count or node
        elif test == "num_reg_images == 0":
            balance = balance or node
    if count is None or balance is None:
        raise LookupError("DreamBoothDataset's reg counting or balancing not found")
    return segment(text, [count]), segment(text, [balance])


def lora_defaults(text: str) -> str:
    """create_network's statements from `if network_dim is None` to the conv_alpha default, and
    LoRAModule's `alpha = self.lora_dim if ...` line."""
    tree = ast.parse(text)
    body = function(tree, "create_network").body
    start = next(i for i, n in enumerate(body) if isinstance(n, ast.If)
                 and ast.unparse(n.test) == "network_dim is None")
    end = next(i for i, n in enumerate(body) if isinstance(n, ast.If)
               and ast.unparse(n.test) == "conv_dim is not None")
    init = method(tree, "LoRAModule", "__init__")
    rule = next(n for n in ast.walk(init) if isinstance(n, ast.Assign)
                and ast.unparse(n.targets[0]) == "alpha" and "lora_dim" in ast.unparse(n.value))
    return segment(text, body[start:end + 1]) + segment(text, [rule])


def _ss_keys(node: ast.AST) -> set[str]:
    keys = set()
    for n in ast.walk(node):
        if isinstance(n, ast.Dict):
            keys |= {k.value for k in n.keys if isinstance(k, ast.Constant) and isinstance(k.value, str)}
        elif isinstance(n, ast.Subscript) and isinstance(n.slice, ast.Constant):
            keys.add(n.slice.value)
    return {k for k in keys if isinstance(k, str) and k.startswith("ss_")}


def _dict_keys(func: ast.FunctionDef, name: str) -> list[str]:
    """Keys of `name = {...}` and of `name["key"] = ...` inside func."""
    keys: set[str] = set()
    for n in ast.walk(func):
        if isinstance(n, ast.Assign) and isinstance(n.value, ast.Dict) and ast.unparse(n.targets[0]) == name:
            keys |= {k.value for k in n.value.keys if isinstance(k, ast.Constant)}
        elif isinstance(n, ast.Assign) and isinstance(n.targets[0], ast.Subscript):
            target = n.targets[0]
            if ast.unparse(target.value) == name and isinstance(target.slice, ast.Constant):
                keys.add(target.slice.value)
    return sorted(keys)


def extract(repo: str, commit: str = "HEAD") -> dict[str, Any]:
    commit = subprocess.run(["git", "--git-dir", repo, "rev-parse", commit], check=True,
                            capture_output=True, text=True).stdout.strip()
    train_util = show(repo, commit, "library/train_util.py")
    custom = show(repo, commit, "library/custom_train_functions.py")
    lora = show(repo, commit, "networks/lora.py")
    train_network = show(repo, commit, "train_network.py")
    util_tree, network_tree = ast.parse(train_util), ast.parse(train_network)
    hashes = "".join(segment(train_util, [function(util_tree, name)]) + "\n" for name in (
        "precalculate_safetensors_hashes", "addnet_hash_legacy", "addnet_hash_safetensors"))
    model_hashes = "".join(segment(train_util, [function(util_tree, name)]) + "\n" for name in (
        "model_hash", "calculate_sha256"))
    load_image = segment(train_util, [function(util_tree, "load_image")])
    count, balance = reg_pieces(train_util)
    train = method(network_tree, "NetworkTrainer", "train")
    return {
        "commit": commit,
        "apply_masked_loss": segment(custom, [function(ast.parse(custom), "apply_masked_loss")]),
        "load_image": load_image,
        "hashes": hashes,
        "model_hashes": model_hashes,
        "reg_count": count,
        "reg_balance": balance,
        "lora_defaults": lora_defaults(lora),
        "metadata_keys": sorted(_ss_keys(train)),
        "datasets_keys": {"dataset": _dict_keys(train, "dataset_metadata"),
                          "subset": _dict_keys(train, "subset_metadata")},
    }


if __name__ == "__main__":
    data = extract(sys.argv[1], sys.argv[2] if len(sys.argv) > 2 else "HEAD")
    OUT.write_text(json.dumps(data, indent=1, sort_keys=True) + "\n", encoding="utf-8")
    print(f"wrote {OUT} ({data['commit']})")
