"""Finding a tagger's files: a local folder in SmilingWolf's layout, or a Hugging Face repo id.

A tagger is two files side by side: `model.onnx` and `selected_tags.csv` (columns
`tag_id,name,category,count`; category 9 = rating, 0 = general, 4 = character). Nothing here
imports onnxruntime, and huggingface_hub is imported only when a repo id must be downloaded.
Only plain files are read: no pickles, no code from the model repo.
"""

from __future__ import annotations

import csv
import re
from dataclasses import dataclass
from pathlib import Path

from curate.errors import CurateError
from curate.paths import first_line

MODEL_FILE = "model.onnx"
TAGS_FILE = "selected_tags.csv"
TAGS_HEADER = ("tag_id", "name", "category", "count")
# Danbooru's category numbers, as in the CSVs; WD14 models use 9, 0 and 4 only.
CATEGORY_NAMES = {0: "general", 1: "artist", 3: "copyright", 4: "character", 5: "meta", 9: "rating"}
REPO_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*/[A-Za-z0-9][A-Za-z0-9_.-]*$")


@dataclass(frozen=True)
class ModelFiles:
    """Where a tagger's two files are, and a name to record with its tags."""

    model_path: Path
    tags_path: Path
    name: str


@dataclass(frozen=True)
class TagInfo:
    """One row of selected_tags.csv: the raw (underscored) name and its category number."""

    name: str
    category: int

    @property
    def category_name(self) -> str:
        return CATEGORY_NAMES[self.category]


def resolve_model(spec: str, cache_dir: Path | None = None) -> ModelFiles:
    """A local folder (or its model.onnx) if `spec` names one, else a Hub repo id downloaded
    into huggingface_hub's cache (or `cache_dir`). Raises CurateError saying what to do."""
    path = Path(spec).expanduser()
    if path.is_dir():
        return _local(path)
    if path.is_file() and path.name == MODEL_FILE:
        return _local(path.parent)
    if path.exists() or not REPO_ID.match(spec):
        raise CurateError(f"{spec}: not a tagger folder (with {MODEL_FILE} and {TAGS_FILE}) "
                          "nor a Hugging Face repo id such as SmilingWolf/wd-swinv2-tagger-v3")
    return _download(spec, cache_dir)


def _local(folder: Path) -> ModelFiles:
    missing = [name for name in (MODEL_FILE, TAGS_FILE) if not (folder / name).is_file()]
    if missing:
        raise CurateError(f"{folder}: missing {' and '.join(missing)}; a tagger folder needs "
                          f"{MODEL_FILE} and {TAGS_FILE} side by side (SmilingWolf layout)")
    return ModelFiles(folder / MODEL_FILE, folder / TAGS_FILE, folder.resolve().name)


def download_hint(repo: str) -> str:
    """How to get a repo's files by hand, for machines that cannot reach the Hub."""
    urls = " and ".join(f"https://huggingface.co/{repo}/resolve/main/{name}"
                        for name in (MODEL_FILE, TAGS_FILE))
    return f"download {urls} into one folder and pass that folder with --model FOLDER"


def _download(repo: str, cache_dir: Path | None) -> ModelFiles:
    try:
        from huggingface_hub import hf_hub_download
        from huggingface_hub.errors import (
            EntryNotFoundError,
            LocalEntryNotFoundError,
            RepositoryNotFoundError,
        )
    except ImportError:
        raise CurateError(f"cannot download {repo}: huggingface_hub is not installed "
                          f"(pip install 'curate[tag]'), or {download_hint(repo)}") from None
    # huggingface_hub retries a refused connection for ~25 s before giving up: one quick probe
    # first, and then only the cache, when the Hub cannot be reached
    offline = hub_offline()
    paths = []
    for name in (MODEL_FILE, TAGS_FILE):
        try:
            paths.append(Path(hf_hub_download(repo, name, cache_dir=cache_dir,
                                              local_files_only=offline is not None)))
        # LocalEntryNotFoundError (offline, not cached) subclasses EntryNotFoundError: test it first
        except LocalEntryNotFoundError as exc:
            raise _offline(repo, offline or "the Hugging Face Hub is unreachable") from exc
        except RepositoryNotFoundError:
            raise CurateError(f"{repo}: no such model on the Hugging Face Hub (or it is private or "
                              "gated); check the name, e.g. SmilingWolf/wd-swinv2-tagger-v3") from None
        except EntryNotFoundError:
            raise CurateError(f"{repo} has no {name}: it is not a WD14-style tagger "
                              f"({MODEL_FILE} + {TAGS_FILE})") from None
        except OSError as exc:  # network errors after the probe: DNS, timeouts, a dropped connection
            raise _offline(repo, f"the Hugging Face Hub is unreachable ({first_line(exc, 200)})") from exc
    return ModelFiles(paths[0], paths[1], repo)


def hub_offline() -> str | None:
    """Why downloads must come from the Hugging Face cache only (HF_HUB_OFFLINE, or the Hub not
    answering one quick request), or None when the Hub can be asked. huggingface_hub retries a
    refused connection for ~25 s before giving up: every download here probes first."""
    from huggingface_hub import constants

    return "HF_HUB_OFFLINE is set" if constants.HF_HUB_OFFLINE else _unreachable(constants.ENDPOINT)


def _unreachable(endpoint: str, timeout_s: float = 5.0) -> str | None:
    """Why the Hub endpoint cannot be reached (one request, no retries), or None when it answers.

    huggingface_hub's own HTTP client is used, so proxies and certificates set for it apply.
    """
    from huggingface_hub.utils import get_session

    try:
        get_session().head(endpoint, timeout=timeout_s)
    except Exception as exc:  # the client's transport errors (httpx types, OSError)
        return f"{endpoint} cannot be reached ({first_line(exc, 200)})"
    return None


def _offline(repo: str, why: str) -> CurateError:
    # huggingface_hub's own messages run to several sentences; --debug shows the chained one
    return CurateError(f"cannot download {repo}: {why}, and the files are not in the Hugging Face cache; "
                       f"{download_hint(repo)}")


def read_tags(csv_path: Path) -> list[TagInfo]:
    """The rows of a selected_tags.csv, in order (the model's outputs follow this order)."""
    try:
        text = Path(csv_path).read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise CurateError(f"{csv_path}: cannot read the tag list ({exc})") from None
    rows = csv.reader(text.splitlines())
    header = tuple(next(rows, ()))
    if header != TAGS_HEADER:
        raise CurateError(f"{csv_path}: not a WD14 tag list: the header is {','.join(header) or '(empty)'}, "
                          f"expected {','.join(TAGS_HEADER)}")
    tags = []
    for line_no, row in enumerate(rows, start=2):
        tags.append(_row(csv_path, line_no, row))
    if not tags:
        raise CurateError(f"{csv_path}: the tag list has a header but no tags")
    return tags


def _row(csv_path: Path, line_no: int, row: list[str]) -> TagInfo:
    where = f"{csv_path}, line {line_no}"
    if len(row) != len(TAGS_HEADER):
        raise CurateError(f"{where}: expected {len(TAGS_HEADER)} columns, found {len(row)}")
    name = row[1].strip()
    if not name:
        raise CurateError(f"{where}: empty tag name")
    try:
        category = int(row[2])
    except ValueError:
        raise CurateError(f"{where}: category {row[2]!r} is not a number") from None
    if category not in CATEGORY_NAMES:
        raise CurateError(f"{where}: unknown category {category} (known: "
                          f"{', '.join(f'{k}={v}' for k, v in CATEGORY_NAMES.items())})")
    return TagInfo(name, category)
