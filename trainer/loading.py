"""Reading a user's model files without tracebacks and without running code from them.

A base model comes from anywhere, so any of its files may be broken: a `model_index.json`
holding a list, a config that is not UTF-8 or has wrong-typed fields, truncated weights. The
libraries that read them (diffusers, transformers, safetensors, torch) raise whatever type
suits them, over several lines. `loading(path, what)` turns every such failure into one
CurateError naming the file or folder and the first line of the cause, so each loader states
what it reads and the CLI prints one line, never "internal error".

Pickles: a component folder whose weights exist only as `.bin` / `.ckpt` / `.pt` is refused
unless allow_pickle (diffusers and transformers would otherwise fall back to unpickling it),
and a pickle that holds anything besides tensors is refused even then: torch.load's
weights_only mode declines to build its objects, and `loading` says so in one line.
"""

from __future__ import annotations

import json
import pickle
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from curate.errors import CurateError
from curate.paths import display, first_line, printable

PICKLE_SUFFIXES = (".ckpt", ".pt", ".pth", ".bin")
PREDICTION_TYPES = ("epsilon", "v_prediction")


def pickle_refused(path: Path) -> CurateError:
    return CurateError(f"{display(path)}: a pickle, which can run code when loaded; pass --allow-pickle to "
                       "read its tensors only (torch.load weights_only), or convert it to .safetensors")


def pickled_code(path: Path) -> CurateError:
    return CurateError(f"{display(path)}: holds pickled Python objects besides tensors, code that curate "
                       "will not run even with --allow-pickle (which reads tensors only); if you trust its "
                       "source, convert it to .safetensors with the tool that made it")


def _weights_only_refusal(exc: BaseException) -> bool:
    """torch.load(weights_only=True) met an object it would have had to build by running code."""
    return isinstance(exc, pickle.UnpicklingError) and "weights only load failed" in str(exc).lower()


@contextmanager
def loading(path: Path, what: str) -> Iterator[None]:
    """Any failure to read `path` (the `what` of a model) becomes one CurateError naming it."""
    try:
        yield
    except (CurateError, MemoryError):
        raise
    except Exception as exc:  # diffusers, transformers, safetensors and torch raise types of their own
        cause = exc
        while cause is not None and not _weights_only_refusal(cause):
            cause = cause.__cause__ or cause.__context__  # transformers re-raises torch's as OSError
        if cause is not None:
            raise pickled_code(path) from exc
        raise CurateError(f"{display(path)}: cannot load the {what} ({first_line(exc)}); re-download it "
                          "or replace the file") from exc


def read_json_object(path: Path, what: str) -> dict[str, Any]:
    """A JSON file that must hold an object (model_index.json, a config), or one-line CurateError."""
    try:
        value = json.loads(path.read_bytes().decode("utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CurateError(f"{display(path)}: cannot read the {what} ({first_line(exc)}); it must be "
                          "UTF-8 JSON: re-download it or replace the file") from exc
    if not isinstance(value, dict):
        raise CurateError(f"{display(path)}: the {what} holds a JSON {type(value).__name__}, not an "
                          "object; re-download it or replace the file")
    return value


def prediction_type(config_dir: Path) -> str:
    """epsilon or v_prediction, from `scheduler/scheduler_config.json` (epsilon when absent)."""
    path = config_dir / "scheduler" / "scheduler_config.json"
    if not path.is_file():
        return "epsilon"
    value = read_json_object(path, "scheduler config").get("prediction_type", "epsilon")
    if value not in PREDICTION_TYPES:
        raise CurateError(f"{display(path)}: prediction_type {printable(repr(value))} is not one curate "
                          f"trains ({' or '.join(PREDICTION_TYPES)}); fix the file or use another model")
    return str(value)


def refuse_pickle_only(folder: Path, allow_pickle: bool) -> None:
    """A component folder whose weights are pickles only is refused unless allow_pickle."""
    if allow_pickle or not folder.is_dir():
        return
    files = sorted(p for p in folder.iterdir() if p.is_file())
    if any(p.suffix == ".safetensors" for p in files):
        return
    pickles = [p for p in files if p.suffix.lower() in PICKLE_SUFFIXES]
    if pickles:
        name = printable(pickles[0].name)
        raise CurateError(f"{display(folder)}: its weights are only in {name}, a pickle that can run "
                          "code when loaded; pass --allow-pickle to read its tensors only "
                          "(torch.load weights_only), or convert it to .safetensors (load it where you "
                          "trust it and save_pretrained(..., safe_serialization=True))")


def safetensors_only(allow_pickle: bool) -> dict[str, Any]:
    """from_pretrained keywords: without allow_pickle, never fall back to a .bin pickle."""
    return {} if allow_pickle else {"use_safetensors": True}
