"""Finding a vision-language model's files: a local folder, or a Hub repo id downloaded.

Only safetensors weights are ever loaded: a folder whose weights are pickles (.bin, .pt, .pth,
.ckpt) is refused, and a download fetches the JSON, tokenizer, template and safetensors files
only, so no pickle reaches the disk. huggingface_hub is imported only for a repo id.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

from curate.errors import CurateError
from curate.paths import first_line
from curate.tagging.model import REPO_ID, hub_offline

PICKLES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")
# What a transformers model repo needs besides the weights: configs, tokenizer, chat template
# (tokenizer.model: sentencepiece's protobuf, not a pickle; merges.txt / vocab.json: BPE)
ALLOW = ["*.json", "*.safetensors", "*.jinja", "*.txt", "tokenizer.model", "*.tiktoken"]
HINT_FILES = ("config.json, the *.safetensors weights (with model.safetensors.index.json when "
              "sharded), tokenizer.json, tokenizer_config.json, processor/preprocessor_config.json "
              "and chat_template.* if the repo has them")


@dataclass(frozen=True)
class ModelFolder:
    """A folder holding a model's files, the name to record captions under, its content id."""

    folder: Path
    name: str
    revision: str


def resolve(spec: str, revision: str | None = None, cache_dir: Path | None = None) -> ModelFolder:
    """A local folder if `spec` names one, else a Hub repo id downloaded (or found in the cache)."""
    path = Path(spec).expanduser()
    if path.is_dir():
        check_folder(path)
        return ModelFolder(path, path.resolve().name, folder_revision(path))
    if path.exists() or not REPO_ID.match(spec):
        raise CurateError(f"{spec}: not a model folder (with config.json and *.safetensors weights) nor a "
                          "Hugging Face repo id such as microsoft/Florence-2-base")
    return _download(spec, revision, cache_dir)


def check_folder(folder: Path) -> None:
    """Refuse a folder without config.json, or whose weights are pickles only."""
    if not (folder / "config.json").is_file():
        raise CurateError(f"{folder}: no config.json; a transformers model folder has config.json, "
                          "the *.safetensors weights and the tokenizer/processor files side by side")
    if any(folder.glob("*.safetensors")):
        return
    pickles = sorted(p.name for p in folder.iterdir() if p.suffix in PICKLES)
    if pickles:
        raise CurateError(f"{folder}: the weights are pickle files only ({', '.join(pickles[:3])}); curate "
                          "loads *.safetensors only (a pickle can run code): download the repo's safetensors "
                          "files, or convert them where you trust the file (safetensors' convert script)")
    raise CurateError(f"{folder}: no *.safetensors weights beside config.json; "
                      "download them into this folder")


def folder_revision(folder: Path) -> str:
    """A content id for a local folder: the JSON/template files' bytes and the weights' names,
    sizes and mtimes (hashing gigabytes of weights on every run would cost more than captioning)."""
    digest = hashlib.sha256()
    for path in sorted(folder.iterdir()):
        if not path.is_file():
            continue
        if path.suffix in (".json", ".jinja", ".txt", ".model"):
            digest.update(f"{path.name}\0".encode() + path.read_bytes() + b"\0")
        elif path.suffix == ".safetensors":
            stat = path.stat()
            digest.update(f"{path.name}\0{stat.st_size}\0{stat.st_mtime_ns}\0".encode())
    return digest.hexdigest()[:16]


def download_hint(repo: str) -> str:
    return (f"download {HINT_FILES} from https://huggingface.co/{repo}/tree/main into one folder "
            "and pass that folder as the model")


def _download(repo: str, revision: str | None, cache_dir: Path | None) -> ModelFolder:
    try:
        from huggingface_hub import snapshot_download
        from huggingface_hub.errors import (
            LocalEntryNotFoundError,
            RepositoryNotFoundError,
            RevisionNotFoundError,
        )
    except ImportError:
        raise CurateError(f"cannot download {repo}: huggingface_hub is not installed "
                          f"(pip install huggingface_hub), or {download_hint(repo)}") from None
    # one quick probe, as the tagger does: huggingface_hub retries a refused connection for ~25 s
    offline = hub_offline()
    try:
        folder = Path(snapshot_download(repo, revision=revision, cache_dir=cache_dir, allow_patterns=ALLOW,
                                        local_files_only=offline is not None))
    except LocalEntryNotFoundError as exc:
        why = offline or "the Hugging Face Hub is unreachable"
        raise CurateError(f"cannot download {repo}: {why}, and it is not in the Hugging Face cache; "
                          f"{download_hint(repo)}") from exc
    except RepositoryNotFoundError:
        raise CurateError(f"{repo}: no such model on the Hugging Face Hub (or it is private or gated); "
                          "check the name, e.g. microsoft/Florence-2-base") from None
    except RevisionNotFoundError:
        raise CurateError(f"{repo} has no revision {revision!r}: check the branch, tag or commit") from None
    except OSError as exc:  # network errors after the probe: DNS, timeouts, a dropped connection
        raise CurateError(f"cannot download {repo}: the Hugging Face Hub is unreachable "
                          f"({first_line(exc, 200)}); {download_hint(repo)}") from exc
    check_folder(folder)
    # snapshot folders are named by the commit they hold: the content id to key captions on
    return ModelFolder(folder, repo, folder.name)


def read_json(path: Path) -> dict:
    """A JSON object from a model folder, or {} when the file is absent."""
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CurateError(f"{path}: cannot read it ({first_line(exc)}); re-download the model") from None
    if not isinstance(data, dict):
        raise CurateError(f"{path}: not a JSON object; re-download the model")
    return data
