"""Reading what scrapers leave beside an image: tags, captions and metadata.

Supported (REFERENCE.md §8): gallery-dl `<name>.<ext>.json` (`tags`, `tag_string_*`,
`tags_<category>`) and its tags post-processor `<name>.<ext>.txt` (one tag per line); Hydrus
and imgbrd-grabber `.txt` / `.json` with namespaced tags (`character:name`); img2dataset
shards (`<key>.txt` caption + `<key>.json`); Kohya datasets (`N_name/` folders, caption in
`<stem>.txt` or `<stem>.caption`). A sidecar that cannot be read never stops the import: the
image comes in without it and the reason is recorded: one over `import.max_sidecar_kb`, one
the walk refused (a symlink out of SRC, a FIFO), one whose parsing fails in any way.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from curate.paths import printable
from curate.stages.ingest.kohya import kohya_subset
from curate.stages.ingest.sources import Refused, SourceTree, TooLarge
from tagging.normalize import normalize_tag, split_namespace

SIDECAR_LIMIT = 1024 * 1024  # the default of import.max_sidecar_kb, in bytes
# Keys only gallery-dl writes into its metadata files.
GALLERY_DL_KEYS = frozenset({"category", "subcategory", "extension", "filename"})
TAG_STRING_KEYS = {
    "tag_string_general": "general",
    "tag_string_character": "character",
    "tag_string_copyright": "copyright",
    "tag_string_artist": "artist",
    "tag_string_meta": "meta",
}
METADATA_LIMIT = 64 * 1024  # larger JSON is summarised, not stored whole


@dataclass
class Sidecars:
    kind: str
    tags: list[tuple[str, str]] = field(default_factory=list)  # (tag, category)
    caption: str | None = None
    metadata: dict[str, Any] = field(default_factory=dict)
    paths: list[str] = field(default_factory=list)
    warnings: list[tuple[str, str]] = field(default_factory=list)  # (subject, reason)
    # the tags as a set: a list membership test made 40k tags take 10 s (quadratic)
    seen: set[tuple[str, str]] = field(default_factory=set)

    def add_tag(self, raw: str, category: str | None = None) -> None:
        if not raw.strip():
            return
        if category is None:
            category, name = split_namespace(raw)
        else:
            name = normalize_tag(raw)
        if name and (name, category) not in self.seen:
            self.seen.add((name, category))
            self.tags.append((name, category))

    def snapshot(self) -> tuple[int, str | None, str, dict[str, Any]]:
        return len(self.tags), self.caption, self.kind, dict(self.metadata)

    def restore(self, snap: tuple[int, str | None, str, dict[str, Any]]) -> None:
        """Undo what a sidecar that failed half-way added: one bad file adds nothing."""
        count, self.caption, self.kind, self.metadata = snap
        for tag in self.tags[count:]:
            self.seen.discard(tag)
        del self.tags[count:]


def candidates(tree: SourceTree, relpath: str) -> list[str]:
    """Sidecar files that exist for the image at `relpath`, most specific first."""
    stem = relpath.rsplit(".", 1)[0]
    names = [f"{relpath}.json", f"{relpath}.txt", f"{stem}.json", f"{stem}.txt", f"{stem}.caption"]
    return [n for n in names if tree.has(n)]


def read_sidecars(tree: SourceTree, relpath: str, found: list[str],
                  limit: int = SIDECAR_LIMIT) -> Sidecars:
    """Tags, caption and metadata from the sidecars `found` beside the image at `relpath`;
    each one that cannot be read or parsed becomes a warning naming it, and adds nothing."""
    folder = relpath.rpartition("/")[0]
    kohya = kohya_subset(tree, folder)  # a Kohya subset by content and place, not by name alone
    out = Sidecars(kind=tree.kind)
    if kohya:
        out.kind = "kohya"
        out.metadata["kohya"] = kohya
    for path in found:
        shown, snap = tree.shown(path), out.snapshot()
        try:
            text = _read_text(tree, path, shown, out, limit)
            if text is None:
                continue
            if path.endswith(".json"):
                _from_json(out, shown, text)
            else:
                _from_text(out, text, caption_file=bool(kohya) or path.endswith(".caption"),
                           gallery_dl=path == f"{relpath}.txt")
        except Exception as exc:  # a parser's failure (nesting too deep...) is the file's
            out.restore(snap)
            out.warnings.append((shown, f"sidecar not read ({type(exc).__name__}: "
                                        f"{_first_line(exc)}): its tags are ignored; fix or delete it"))
            continue
        out.paths.append(path)
    return out


def _first_line(exc: BaseException) -> str:
    return printable((str(exc).splitlines() or [""])[0][:200])


def _read_text(tree: SourceTree, path: str, shown: str, out: Sidecars, limit: int) -> str | None:
    try:
        data = tree.read(path, limit)
    except Refused as exc:
        out.warnings.append((shown, f"sidecar not read: {exc}"))
        return None
    except TooLarge:
        out.warnings.append((shown, f"sidecar is over the {limit // 1024} KiB limit: not read, the "
                                    "image comes in without its tags; raise import.max_sidecar_kb "
                                    "to read it"))
        return None
    except OSError as exc:  # unreadable, vanished: the image still imports
        out.warnings.append((shown, f"sidecar not read ({exc.strerror or exc}): its tags are "
                                    "missing; check the file"))
        return None
    if data.startswith((b"\xff\xfe", b"\xfe\xff")):
        return data.decode("utf-16")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError:
        pass
    try:
        text = data.decode("cp1252")
    except UnicodeDecodeError:
        out.warnings.append((shown, "sidecar is not UTF-8 (nor Windows-1252) text: its tags "
                                    "are ignored; re-save it as UTF-8"))
        return None
    out.warnings.append((shown, "sidecar is not UTF-8: read as Windows-1252; re-save it as "
                                "UTF-8 to be sure the tags are right"))
    return text


def _from_json(out: Sidecars, shown: str, text: str) -> None:
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        out.warnings.append((shown, f"malformed JSON sidecar (line {exc.lineno}: {exc.msg}): "
                                    "its tags are ignored; fix or delete it"))
        return
    if isinstance(data, list):  # Hydrus: a bare list of (namespaced) tags
        out.kind = "hydrus"
        for tag in data:
            if isinstance(tag, str):
                out.add_tag(tag)
        return
    if not isinstance(data, dict):
        out.warnings.append((shown, "JSON sidecar holds neither an object nor a tag list: ignored"))
        return
    _tags_from_dict(out, data)
    out.metadata["sidecar"] = _bounded(data)
    if GALLERY_DL_KEYS & data.keys() or any(k in data for k in TAG_STRING_KEYS):
        out.kind = "gallery-dl"
    elif "key" in data and ("status" in data or "url" in data):
        out.kind = "img2dataset"
        if isinstance(data.get("caption"), str) and out.caption is None:
            out.caption = data["caption"].strip() or None


def _tags_from_dict(out: Sidecars, data: dict[str, Any]) -> None:
    for key, category in TAG_STRING_KEYS.items():
        if isinstance(data.get(key), str):
            for tag in data[key].split():
                out.add_tag(tag, category)
    for key, value in data.items():  # gallery-dl "tags: categorize" writes tags_<category>
        if key.startswith("tags_") and isinstance(value, list | str):
            items = value.split() if isinstance(value, str) else value
            for tag in items:
                if isinstance(tag, str):
                    out.add_tag(tag, split_namespace(f"{key[5:]}:x")[0])
    tags = data.get("tags", data.get("tag_string"))
    if isinstance(tags, str):
        for tag in tags.split():
            out.add_tag(tag)
    elif isinstance(tags, list):
        for tag in tags:
            if isinstance(tag, str):
                out.add_tag(tag)
    elif isinstance(tags, dict):  # e621-style {"general": [...], "artist": [...]}
        for key, items in tags.items():
            category = split_namespace(f"{key}:x")[0]
            for tag in items if isinstance(items, list) else []:
                if isinstance(tag, str):
                    out.add_tag(tag, category)


def _from_text(out: Sidecars, text: str, *, caption_file: bool, gallery_dl: bool) -> None:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    if not lines:
        return
    if caption_file or out.kind == "img2dataset":
        # Kohya reads only the first line; img2dataset captions are prose.
        out.caption = lines[0]
        if out.kind != "img2dataset":
            for tag in lines[0].split(","):
                out.add_tag(tag, "general")
        return
    if len(lines) > 1:
        namespaced = False
        for line in lines:
            category, _ = split_namespace(line)
            namespaced = namespaced or (category != "general" and ":" in line)
            out.add_tag(line)
        if out.kind in ("folder", "zip"):
            out.kind = "gallery-dl" if gallery_dl else ("hydrus" if namespaced else "txt")
        return
    line = lines[0]
    if "," in line:
        out.caption = line
        for tag in line.split(","):
            out.add_tag(tag)
    elif len(line.split()) >= 4:  # a sentence, not a tag
        out.caption = line
    else:
        out.add_tag(line)
    if out.kind in ("folder", "zip"):
        out.kind = "gallery-dl" if gallery_dl else "txt"


def _bounded(data: dict[str, Any]) -> dict[str, Any]:
    text = json.dumps(data, ensure_ascii=False, default=str)
    if len(text) <= METADATA_LIMIT:
        return data
    return {k: v for k, v in data.items() if isinstance(v, int | float | bool) or
            (isinstance(v, str) and len(v) < 512)}
