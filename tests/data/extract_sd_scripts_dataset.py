"""Run sd-scripts' own dataset-reading functions on a table of cases, for
tests/test_check_sdscripts.py (which checks curate.kohya, `curate check` and trainer/data.py
against the answers, without sd-scripts).

Reads a kohya-ss/sd-scripts git repository with `git show COMMIT:path` (no checkout) and, as
fixtures/bucket_table.py does, executes unchanged the few definitions that read a dataset, in
one private namespace holding the modules they name (importing library.train_util would pull
in torch, diffusers and transformers):

- library/config_util.py: `extract_dreambooth_params`, nested in
  `generate_dreambooth_subsets_config_by_subdirs` (folder name -> repeats, class tokens); the
  dataset.toml rules: the DreamBooth subset / dataset parameter classes (defaults), the keys
  ConfigSanitizer's schemas allow at each level (read from its class body), and
  `BlueprintGenerator.generate_params_by_fallbacks` run on a table of [general] / [[datasets]] /
  [[datasets.subsets]] tables (CONFIGS: which level's value a subset and a dataset end up with);
- library/train_util.py: the literal `IMAGE_EXTENSIONS` list and `glob_images` (which files of
  a folder are images; the `.avif` / `.jxl` branch run by extending the list as the plugin
  imports do), `read_caption`, nested in `DreamBoothDataset.__init__` (which caption file, what
  text), the `caption_extension` lines of `DreamBoothSubset.__init__` (the added dot), and
  `BaseDataset.process_caption` (prefix/suffix, wildcard lines, keep_tokens_separator), bound
  to a stand-in dataset; random choices are recorded as the set of outcomes over 40 seeds.
  Besides hand-written captions, it runs the captions curate.tagging.compile makes from fixed
  annotations (COMPILED), with the subset keys the compiler asks for (each case keeps its inputs
  under "compiled", so tests/test_caption_compile.py can check the compiler still makes them).

    python tests/data/extract_sd_scripts_dataset.py /work/.mirror/kohya-ss+sd-scripts/repo [COMMIT]

writes tests/data/sd_scripts_dataset.json (sorted, no time in it: the same commit gives the same
file). Caption files are written in a temporary folder with relative, underscore-free folder
names, so read_caption's whole-path split sees only the file name.
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import glob
import json
import logging
import math
import os
import random
import re
import subprocess
import sys
import tempfile
import types
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Optional

OUT = Path(__file__).with_name("sd_scripts_dataset.json")

FOLDER_NAMES = ["10_sks dog", "10_", "10", " 5_x", "5 _x", "+3_x", "0_x", "-1_x", "x_10", "_x",
                "1_000_x", "1__x", "\u0663_x", "10.5_x", "1e3_x", "", "007_bond", "10_sks_dog",
                "\t2_x", "2\n_x", "1 000_x", "\uff12_x", "sks"]
GLOB_FILES = ["a.png", "b.PNG", "c.Png", "d.jpg", "e.JPEG", "f.gif", "g.avif", "h.AVIF", "i.jxl",
              ".hidden.png", "j.webp", "k.bmp", "l.tar.png", "m.png.txt", "n.JPG", "o.jpeg",
              "p.Webp", "q.tif", "r.BMP", "s.Jxl", "png", "t .png"]
# (name, caption files {name: bytes}, image name, caption_extension as configured, enable_wildcard)
CAPTIONS: list[tuple[str, dict[str, bytes], str, str, bool]] = [
    ("plain", {"x.txt": b"sks, a\nsecond\n"}, "x.png", ".txt", False),
    ("crlf", {"x.txt": b"sks, a\r\nsecond"}, "x.png", ".txt", False),
    ("cr", {"x.txt": b"sks, a\rsecond"}, "x.png", ".txt", False),
    ("formfeed", {"x.txt": b"sks\x0ca\x1cb\nc"}, "x.png", ".txt", False),
    ("line-separator", {"x.txt": "sks\u2028a\u0085b".encode()}, "x.png", ".txt", False),
    ("blank-first-line", {"x.txt": b"\nsks, a"}, "x.png", ".txt", False),
    ("only-newline", {"x.txt": b"\n"}, "x.png", ".txt", False),
    ("empty", {"x.txt": b""}, "x.png", ".txt", False),
    ("bom", {"x.txt": b"\xef\xbb\xbfsks, a"}, "x.png", ".txt", False),
    ("nul", {"x.txt": b"sks, a\x00b, \x1b[31mred"}, "x.png", ".txt", False),
    ("latin1", {"x.txt": b"sks, caf\xe9"}, "x.png", ".txt", False),
    ("blanks", {"x.txt": b"  sks, a \t\n"}, "x.png", ".txt", False),
    ("wildcard", {"x.txt": b"one\n\n  two \nthree\n"}, "x.png", ".txt", True),
    ("wildcard-one-line", {"x.txt": b"one, {a|b}"}, "x.png", ".txt", True),
    ("no-dot", {"x.txt": b"sks"}, "x.png", "txt", False),
    ("caption-default", {"x.txt": b"sks"}, "x.png", ".caption", False),
    ("face-crop", {"face.txt": b"sks, face"}, "face_1_2_3_4.png", ".txt", False),
    ("face-crop-own-first", {"face.txt": b"base", "face_1_2_3_4.txt": b"own"}, "face_1_2_3_4.png",
     ".txt", False),
    ("four-fields", {"a.txt": b"sks"}, "a_b_c_d.png", ".txt", False),
    ("six-fields", {"a_b.txt": b"sks"}, "a_b_c_d_e_f.png", ".txt", False),
    ("missing", {}, "x.png", ".txt", False),
    ("other-ext", {"x.caption": b"sks"}, "x.png", ".txt", False),
]
# (name, caption, subset fields) for process_caption
PROCESS: list[tuple[str, str, dict[str, Any]]] = [
    ("separator-literal", "sks ||| 1girl, solo", {"keep_tokens_separator": "|||"}),
    ("separator-shuffled", "sks ||| 1girl, solo", {"keep_tokens_separator": "|||", "shuffle_caption": True}),
    ("separator-tail", "sks ||| 1girl, solo ||| end", {"keep_tokens_separator": "|||",
                                                       "shuffle_caption": True}),
    ("prefix", "1girl, solo", {"caption_prefix": "sks,"}),
    ("prefix-suffix", "1girl", {"caption_prefix": "sks", "caption_suffix": ", end"}),
    ("wildcard-lines", "sks, one\nsks, two", {"enable_wildcard": True}),
    ("wildcard-braces", "sks, {red|blue} hair, {{x}}", {"enable_wildcard": True}),
    ("no-wildcard-lines", "sks, one\nsks, two", {}),
    ("keep-tokens", "sks, a, b, c", {"shuffle_caption": True, "keep_tokens": 1}),
]
# Captions compiled by curate.tagging.compile from fixed annotations, run through process_caption with
# the subset keys the compiler asks for: (name, inputs). Tags are [name, category, confidence,
# source, removed]; texts [text, source]; "format" holds CaptionFormat fields.
SENTENCE = "A woman with long blonde hair, wearing a blue dress, stands in a garden."
CHARACTER_TAGS: list[list[Any]] = [
    ["1girl", "general", 0.99, "wd14", ""], ["solo", "general", 0.97, "wd14", ""],
    ["long_hair", "general", 0.93, "wd14", ""], ["long hair", "general", 1.0, "gallery-dl", ""],
    ["blonde hair", "general", 0.88, "wd14", ""], ["blue eyes", "general", 0.81, "wd14", ""],
    ["blue dress", "general", 0.76, "wd14", ""], ["smile", "general", 0.64, "wd14", ""],
    ["outdoors", "general", 0.58, "wd14", ""], ["garden", "general", 0.41, "wd14", ""],
    ["blurry", "general", 0.37, "wd14", "rule:threshold"],
    ["saber_\\(fate\\)", "character", 0.95, "wd14", ""],
    ["fate/stay night", "copyright", 1.0, "gallery-dl", ""],
    ["highres", "meta", 1.0, "gallery-dl", ""], ["absurdres", "meta", 1.0, "gallery-dl", ""],
    ["commentary request", "meta", 1.0, "gallery-dl", ""],
    ["takeuchi takashi", "artist", 1.0, "gallery-dl", ""],
    ["general", "rating", 0.9, "wd14", ""], ["sks woman", "general", 1.0, ".txt", ""],
]


def _case(fmt: dict[str, Any], tags: list[list[Any]] = CHARACTER_TAGS, texts: list[list[str]] | None = None
          ) -> dict[str, Any]:
    return {"format": fmt, "tags": tags, "texts": texts or [], "trigger": "sks", "class_tokens": "woman"}


BLIP = [[SENTENCE, ".caption"]]
KAOMOJI_TAG = ["^_^", "general", 0.9, "wd14", ""]
COMPILED: list[tuple[str, dict[str, Any]]] = [
    ("compiled-tags", _case({"format": "tags"})),
    ("compiled-tags-booru-spelling", _case({"format": "tags", "underscores": True, "escape_parentheses": True,
                                            "max_tags": 6}, [*CHARACTER_TAGS, KAOMOJI_TAG])),
    ("compiled-nl", _case({"format": "nl"}, texts=[[SENTENCE, "img2dataset"]])),
    ("compiled-hybrid", _case({"format": "hybrid"}, texts=BLIP)),
    ("compiled-hybrid-no-tags", _case({"format": "hybrid"}, [], BLIP)),
    ("compiled-hybrid-fallback", _case({"format": "hybrid"})),
    ("compiled-hybrid-shuffle-off", _case({"format": "hybrid", "shuffle": False}, texts=BLIP)),
    ("compiled-json", _case({"format": "json"}, texts=BLIP)),
]
# (name, general, dataset, subset) tables for generate_params_by_fallbacks
CONFIGS: list[tuple[str, dict[str, Any], dict[str, Any], dict[str, Any]]] = [
    ("nothing-set", {}, {}, {}),
    ("general-caption-extension", {"caption_extension": ".txt"}, {}, {}),
    ("dataset-over-general", {"num_repeats": 2, "keep_tokens": 1}, {"num_repeats": 5}, {}),
    ("subset-over-dataset", {}, {"keep_tokens": 1, "shuffle_caption": True}, {"keep_tokens": 2}),
    ("general-class-tokens", {"class_tokens": "woman"}, {}, {"is_reg": True}),
    ("false-wins-over-true", {"shuffle_caption": True, "flip_aug": True}, {"shuffle_caption": False},
     {"flip_aug": False}),
    ("dataset-settings", {"resolution": 768, "batch_size": 4, "enable_bucket": True},
     {"resolution": 1024, "min_bucket_reso": 320}, {}),
    ("every-level", {"caption_prefix": "g", "caption_suffix": "g", "keep_tokens_separator": "|||"},
     {"caption_prefix": "d"}, {"caption_suffix": "s", "alpha_mask": True, "num_repeats": 10}),
]
SCHEMAS = ("SUBSET_ASCENDABLE_SCHEMA", "DO_SUBSET_ASCENDABLE_SCHEMA", "DB_SUBSET_ASCENDABLE_SCHEMA",
           "DB_SUBSET_DISTINCT_SCHEMA", "FT_SUBSET_DISTINCT_SCHEMA", "DATASET_ASCENDABLE_SCHEMA")
SUBSET_DEFAULTS = {"caption_prefix": None, "caption_suffix": None, "caption_dropout_rate": 0.0,
                   "caption_dropout_every_n_epochs": 0, "enable_wildcard": False, "shuffle_caption": False,
                   "token_warmup_step": 0, "token_warmup_min": 1, "caption_tag_dropout_rate": 0.0,
                   "keep_tokens_separator": None, "keep_tokens": 0, "caption_separator": ",",
                   "secondary_separator": None}


def source(repo: str, commit: str, path: str) -> ast.Module:
    text = subprocess.run(["git", "--git-dir", repo, "show", f"{commit}:{path}"], check=True,
                          capture_output=True, text=True).stdout
    return ast.parse(text)


def find(tree: ast.AST, kind: type, name: str) -> Any:
    for node in ast.walk(tree):
        if isinstance(node, kind) and getattr(node, "name", None) == name:
            return node
    raise LookupError(name)


def namespace(repo: str, commit: str) -> dict[str, Any]:
    """sd-scripts' definitions, executed unchanged, in one namespace."""
    config_util = source(repo, commit, "library/config_util.py")
    train_util = source(repo, commit, "library/train_util.py")
    ns: dict[str, Any] = {"os": os, "glob": glob, "random": random, "re": re, "math": math, "Path": Path,
                          "Tuple": tuple, "logger": logging.getLogger("sd-scripts")}
    extensions = next(n for n in train_util.body if isinstance(n, ast.Assign)
                      and getattr(n.targets[0], "id", None) == "IMAGE_EXTENSIONS")
    cls_subset = find(train_util, ast.ClassDef, "DreamBoothSubset")
    dot = next(n for n in ast.walk(find(cls_subset, ast.FunctionDef, "__init__"))
               if isinstance(n, ast.If) and "caption_extension" in ast.unparse(n.test))
    dot_fn = ast.parse("def add_dot(self):\n    pass")
    dot_fn.body[0].body = [dot]
    defs = [extensions, find(config_util, ast.FunctionDef, "extract_dreambooth_params"),
            find(train_util, ast.FunctionDef, "glob_images"),
            find(find(train_util, ast.ClassDef, "DreamBoothDataset"), ast.FunctionDef, "read_caption"),
            find(find(train_util, ast.ClassDef, "BaseDataset"), ast.FunctionDef, "process_caption"),
            dot_fn.body[0]]
    module = ast.fix_missing_locations(ast.Module(body=defs, type_ignores=[]))
    exec(compile(module, "sd-scripts", "exec"), ns)  # sd-scripts' own code, run to pin its answers
    return ns


def config_namespace(repo: str, commit: str) -> dict[str, Any]:
    """config_util's parameter classes and BlueprintGenerator, executed unchanged."""
    config_util = source(repo, commit, "library/config_util.py")
    names = ("BaseSubsetParams", "DreamBoothSubsetParams", "BaseDatasetParams", "DreamBoothDatasetParams",
             "BlueprintGenerator")
    defs = [find(config_util, ast.ClassDef, name) for name in names]
    ns: dict[str, Any] = {"dataclass": dataclasses.dataclass, "asdict": dataclasses.asdict, "Any": Any,
                          "Optional": Optional, "Tuple": tuple, "Dict": dict, "Sequence": Sequence,
                          "argparse": argparse, "Blueprint": object}
    module = ast.fix_missing_locations(ast.Module(body=defs, type_ignores=[]))
    exec(compile(module, "sd-scripts", "exec"), ns)  # sd-scripts' own code, run to pin its answers
    sanitizer = find(config_util, ast.ClassDef, "ConfigSanitizer")
    ns["schemas"] = {}
    for node in sanitizer.body:
        if isinstance(node, ast.Assign) and getattr(node.targets[0], "id", None) in SCHEMAS:
            keys = [k.args[0] if isinstance(k, ast.Call) else k for k in node.value.keys]
            ns["schemas"][node.targets[0].id] = sorted(k.value for k in keys)
    return ns


def jsonable(value: Any) -> Any:
    return list(value) if isinstance(value, tuple) else value


def config_cases(ns: dict[str, Any]) -> dict[str, Any]:
    generate = ns["BlueprintGenerator"].generate_params_by_fallbacks
    subset_cls, dataset_cls = ns["DreamBoothSubsetParams"], ns["DreamBoothDatasetParams"]
    cases = []
    for name, general, dataset, subset in CONFIGS:
        sub = dataclasses.asdict(generate(subset_cls, [subset, dataset, general, {}, {}]))
        data = dataclasses.asdict(generate(dataset_cls, [dataset, general, {}, {}]))
        cases.append({"name": name, "general": general, "dataset": dataset, "subset": subset,
                      "subset_params": {k: jsonable(v) for k, v in sub.items()},
                      "dataset_params": {k: jsonable(v) for k, v in data.items()}})
    return {"schemas": ns["schemas"], "cases": cases,
            "subset_defaults": {k: jsonable(v) for k, v in dataclasses.asdict(subset_cls()).items()},
            "dataset_defaults": {k: jsonable(v) for k, v in dataclasses.asdict(dataset_cls()).items()}}


def folder_cases(ns: dict[str, Any]) -> list[dict[str, Any]]:
    out = []
    for name in FOLDER_NAMES:
        repeats, tokens = ns["extract_dreambooth_params"](name)
        out.append({"name": name, "read": repeats >= 1, "repeats": repeats, "class_tokens": tokens})
    return out


def glob_cases(ns: dict[str, Any]) -> dict[str, list[str]]:
    out = {}
    base = list(ns["IMAGE_EXTENSIONS"])
    with tempfile.TemporaryDirectory() as tmp:
        for name in GLOB_FILES:
            Path(tmp, name).write_bytes(b"")
        for label, extra in (("base", []), ("plugins", [".avif", ".AVIF", ".jxl", ".JXL"])):
            ns["IMAGE_EXTENSIONS"][:] = base + extra
            out[label] = sorted(os.path.basename(p) for p in ns["glob_images"](tmp, "*"))
    ns["IMAGE_EXTENSIONS"][:] = base
    return out


def caption_cases(ns: dict[str, Any]) -> list[dict[str, Any]]:
    out = []
    here = os.getcwd()
    with tempfile.TemporaryDirectory() as tmp:
        os.chdir(tmp)
        try:
            for n, (name, files, image, ext, wildcard) in enumerate(CAPTIONS):
                folder = f"case{n}"
                os.mkdir(folder)
                for file, data in files.items():
                    Path(folder, file).write_bytes(data)
                subset = types.SimpleNamespace(caption_extension=ext)
                ns["add_dot"](subset)
                try:
                    answer = {"caption": ns["read_caption"](os.path.join(folder, image),
                                                            subset.caption_extension, wildcard)}
                except (AssertionError, UnicodeDecodeError) as exc:
                    answer = {"error": type(exc).__name__}
                out.append({"name": name, "files": {k: v.decode("latin-1") for k, v in files.items()},
                            "image": image, "caption_extension": ext,
                            "read_extension": subset.caption_extension,
                            "enable_wildcard": wildcard, **answer})
        finally:
            os.chdir(here)
    return out


def process_cases(ns: dict[str, Any]) -> list[dict[str, Any]]:
    dataset = types.SimpleNamespace(current_epoch=1, replacements={}, max_train_steps=100, current_step=0)
    out = []
    for name, caption, fields, *inputs in [*PROCESS, *compiled_cases()]:
        outcomes = set()
        for seed in range(40):
            random.seed(seed)
            subset = types.SimpleNamespace(**{**SUBSET_DEFAULTS, **fields})
            outcomes.add(ns["process_caption"](dataset, subset, caption))
        case = {"name": name, "caption": caption, "subset": fields, "outcomes": sorted(outcomes)}
        out.append({**case, "compiled": inputs[0]} if inputs else case)
    return out


def compile_inputs(inputs: dict[str, Any]) -> Any:
    """curate.tagging.compile's answer for one COMPILED entry (also used by tests/test_caption_compile.py)."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
    from curate.record import Tag, Text
    from curate.tagging.compile import CaptionFormat, compile_caption

    return compile_caption([Tag(*tag) for tag in inputs["tags"]], [Text(*text) for text in inputs["texts"]],
                           CaptionFormat(**inputs["format"]), trigger=inputs.get("trigger"),
                           class_tokens=inputs.get("class_tokens"), user_caption=inputs.get("user_caption"))


def compiled_cases() -> list[tuple[str, str, dict[str, Any], dict[str, Any]]]:
    """(name, caption, subset fields, inputs) for each COMPILED entry."""
    out = []
    for name, inputs in COMPILED:
        made = compile_inputs(inputs)
        fields: dict[str, Any] = {"shuffle_caption": made.shuffle_caption, "keep_tokens": made.keep_tokens,
                                  "caption_separator": made.caption_separator}
        if made.keep_tokens_separator:
            fields["keep_tokens_separator"] = made.keep_tokens_separator
        out.append((name, made.text, fields, inputs))
    return out


def extract(repo: str, commit: str) -> dict[str, Any]:
    full = subprocess.run(["git", "--git-dir", repo, "rev-parse", commit], check=True, capture_output=True,
                          text=True).stdout.strip()
    ns = namespace(repo, full)
    return {"source": "https://github.com/kohya-ss/sd-scripts", "commit": full,
            "image_extensions": list(ns["IMAGE_EXTENSIONS"]), "folders": folder_cases(ns),
            "glob": {"files": GLOB_FILES, **glob_cases(ns)}, "captions": caption_cases(ns),
            "process_caption": process_cases(ns), "config": config_cases(config_namespace(repo, full))}


def main(argv: list[str]) -> None:
    repo = argv[1] if len(argv) > 1 else "/work/.mirror/kohya-ss+sd-scripts/repo"
    commit = argv[2] if len(argv) > 2 else "HEAD"
    data = extract(repo, commit)
    OUT.write_text(json.dumps(data, indent=1, sort_keys=True, ensure_ascii=True) + "\n", encoding="utf-8")
    print(f"{OUT}: {len(data['folders'])} folder names, {len(data['captions'])} captions, "
          f"{len(data['process_caption'])} process_caption cases from {data['commit'][:12]}")


if __name__ == "__main__":
    main(sys.argv)
