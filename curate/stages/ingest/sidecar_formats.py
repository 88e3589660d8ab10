"""The sidecar formats, each read as its tool writes it (fixtures/scrapers.py builds each one
from the tool's own code):

- gallery-dl's metadata post-processor (gallery_dl/postprocessor/metadata.py): `.json` with the
  site's post fields: Danbooru `tag_string_<category>`, Gelbooru `tags_<type>` (`tags_metadata`),
  e621 `tags: {"general": [...], "species": [...], "lore": [...], "meta": [...]}`, the post's
  `rating`; `mode: tags` writes one tag per line;
- Hydrus' sidecar exporters (hydrus/client/metadata/ClientMetadataMigrationExporters.py): TXT
  one namespaced tag per line, JSON a bare list or the list under nested object names;
- imgbrd-grabber: one namespaced tag per line, or `%all%` (one line, spaces between tags,
  underscores inside them);
- img2dataset (img2dataset/writer.py): `key.txt` is a sentence caption, `key.json` the sample's
  metadata, `{shard}.parquet` the shard table;
- sd-scripts / Kohya: the first line of `.txt` (WD14 tags) or `.caption` (BLIP sentence).
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass
from itertools import pairwise
from typing import Any

from curate.stages.ingest.sidecars import Sidecars
from curate.stages.ingest.sources import SourceTree
from curate.tagging.normalize import category_for, has_namespace, parse_tag, rating_name, split_tag_line

# Keys only gallery-dl writes into its metadata files.
GALLERY_DL_KEYS = frozenset({"category", "subcategory", "extension", "filename"})
METADATA_LIMIT = 64 * 1024  # larger JSON is summarised, not stored whole
TABLE_LIMIT = 256 * 1024 * 1024  # an img2dataset shard table (10k rows are a few MiB)
GENERIC_KINDS = frozenset({"folder", "url", "zip", "tar"})


@dataclass(frozen=True)
class PlainFile:
    """What one .txt/.caption file said, to compare caption files of one image."""

    shown: str
    tags: frozenset[str]
    text: str | None


def text_role(relpath: str, path: str, *, kohya: bool) -> str:
    """How a text sidecar is read: "caption" (.caption), "kohya" (a caption in an N_name folder),
    "gallery-dl" (`<name>.txt`), "suffix:<s>" (Hydrus `<name>.<s>.txt`) or "txt"."""
    name, image = path.rpartition("/")[2], relpath.rpartition("/")[2]
    if name.endswith(".caption"):
        return "caption"
    if kohya:
        return "kohya"
    if name == f"{image}.txt":
        return "gallery-dl"
    for base in (image, image.rsplit(".", 1)[0]):
        suffix = name.removeprefix(f"{base}.").removesuffix(".txt")
        if name.startswith(f"{base}.") and suffix and "." not in suffix and suffix != "txt":
            return f"suffix:{suffix}"
    return "txt"


def from_text(out: Sidecars, shown: str, text: str, role: str) -> PlainFile:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    if not lines:
        return PlainFile(shown, frozenset(), None)
    if role.startswith("suffix:") and "tag" not in role:
        return _other_suffixed(out, shown, lines, role[7:])
    if out.kind == "img2dataset":  # its `.txt` is the sample's caption: a sentence, kept whole
        out.add_text(" ".join(lines), "img2dataset")
        return PlainFile(shown, frozenset(), " ".join(lines))
    if role in ("kohya", "caption") or len(lines) == 1:
        return _one_line(out, shown, lines[0], role)
    namespaced = any(has_namespace(line) for line in lines)
    kind = "hydrus" if namespaced or role.startswith("suffix:") else (
        "gallery-dl" if role == "gallery-dl" else "txt")
    names = [out.add_tag(line, source=kind, namespaced=namespaced) for line in lines]
    _set_kind(out, kind)
    return PlainFile(shown, frozenset(n for n in names if n), None)


def _one_line(out: Sidecars, shown: str, line: str, role: str) -> PlainFile:
    """sd-scripts reads a caption file's first line only; any one-line file is read the same way:
    a tag list (commas, or imgbrd-grabber's `%all%`) or a sentence, never a sentence split."""
    source = {"kohya": "kohya", "caption": ".caption", "gallery-dl": "gallery-dl"}.get(role, "txt")
    if role in ("kohya", "caption") and out.raw_caption is None:
        out.raw_caption = line
    items = split_tag_line(line)
    if items is None:
        out.add_text(line, source)
        if role == "txt":
            _set_kind(out, "txt")
        return PlainFile(shown, frozenset(), " ".join(line.split()))
    namespaced = any(has_namespace(i) for i in items)
    if source == "txt" and len(items) > 1 and "," not in line:
        source = "imgbrd-grabber"  # %all%: the only writer of space-separated booru tags
    elif source == "txt" and namespaced:
        source = "hydrus"
    names = [out.add_tag(i, source=source, namespaced=namespaced) for i in items]
    if role not in ("kohya", "caption"):
        _set_kind(out, source)
    return PlainFile(shown, frozenset(n for n in names if n), None)


def _other_suffixed(out: Sidecars, shown: str, lines: list[str], suffix: str) -> PlainFile:
    """A Hydrus sidecar whose suffix does not say tags (`.urls.txt`, `.notes.txt`): kept as
    metadata, not read as tags."""
    if all(line.startswith(("http://", "https://")) for line in lines):
        out.metadata.setdefault("urls", []).extend(lines)
    else:
        out.metadata.setdefault("sidecar_text", {})[suffix] = "\n".join(lines)[:METADATA_LIMIT]
        out.warnings.append((shown, f"sidecar suffix '.{suffix}' is not a tag file curate knows: "
                                    "kept as metadata, not read as tags; name it `.tags.txt` if "
                                    "it holds tags"))
    return PlainFile(shown, frozenset(), None)


def _set_kind(out: Sidecars, kind: str) -> None:
    if out.kind in GENERIC_KINDS or (out.kind == "txt" and kind != "txt"):
        out.kind = kind


def from_json(out: Sidecars, shown: str, text: str, site_hint: str = "") -> None:
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        out.warnings.append((shown, f"malformed JSON sidecar (line {exc.lineno}: {exc.msg}): "
                                    "its tags are ignored; fix or delete it"))
        return
    if isinstance(data, list):  # Hydrus' JSON exporter without nested object names
        out.kind = "hydrus"
        for tag in data:
            if isinstance(tag, str):
                out.add_tag(tag, source="hydrus", namespaced=True)
        return
    if not isinstance(data, dict):
        out.warnings.append((shown, "JSON sidecar holds neither an object nor a tag list: ignored"))
        return
    site = data.get("category") if isinstance(data.get("category"), str) else ""
    kind = ("gallery-dl" if GALLERY_DL_KEYS & data.keys() or "tag_string_general" in data
            else "img2dataset" if "key" in data and ("status" in data or "url" in data) else "")
    found = _tags_from_dict(out, data, kind or "json", site)
    if kind == "img2dataset" and isinstance(data.get("caption"), str):
        out.add_text(data["caption"], "img2dataset")
    if not kind and not found:
        nested = _nested_tags(data)
        if nested is not None:
            kind = "hydrus"  # Hydrus' JSON exporter with nested object names
            for tag in nested:
                out.add_tag(tag, source="hydrus", namespaced=True)
        else:
            keys = ", ".join(sorted(map(str, data))[:8])
            out.warnings.append((shown, f"JSON sidecar with no tags where curate looks for them "
                                        f"(keys: {keys}): kept as metadata only; put the tags "
                                        "under a `tags` key to import them"))
    out.metadata["sidecar"] = _bounded(data)
    if kind and out.kind != "kohya":
        out.kind = kind


def _tags_from_dict(out: Sidecars, data: dict[str, Any], source: str, site: str) -> int:
    """Tags from a post's fields; returns how many were read. The site's categories win: a
    flat `tags`/`tag_string` only adds the names no category listed (Danbooru has both)."""
    before = len(out.annotations)
    for key, value in data.items():
        if key.startswith(("tag_string_", "tags_")) and isinstance(value, str | list):
            _add_category(out, key, value.split() if isinstance(value, str) else value, source)
    tags = data.get("tags", data.get("tag_string"))
    if isinstance(tags, dict):  # e621's API: {"general": [...], "species": [...], ...}
        for key, items in tags.items():
            _add_category(out, str(key), items if isinstance(items, list) else [], source)
    elif isinstance(tags, str | list):
        known = {t.name for t in out.annotations}
        for tag in _flat(tags):
            parsed = parse_tag(tag)
            if parsed is not None and parsed.name not in known:
                out.add_tag(tag, source=source)
    rating = data.get("rating")
    if isinstance(rating, str) and (name := rating_name(rating, site)):
        out.add_tag(name, "rating", source=source)
    return len(out.annotations) - before


def _add_category(out: Sidecars, key: str, items: list[Any], source: str) -> None:
    category = category_for(key)
    word = key.removeprefix("tag_string_").removeprefix("tags_")
    for tag in items:
        if isinstance(tag, str):
            out.add_tag(tag, category or "other", source=source, namespace="" if category else word)


def _flat(tags: str | list[Any]) -> list[str]:
    """A tag list as gallery-dl's `_write_tags` reads it: a string splits at ", " when that
    gives enough parts, else at spaces (a booru tag string has no ", " at all); a list may hold
    {"name": ...} objects (pixiv)."""
    if isinstance(tags, str):
        parts = tags.split(", ")
        return parts if len(parts) > 1 and len(parts) >= len(tags) / 16 else tags.split()
    out = []
    for tag in tags:
        if isinstance(tag, dict):
            tag = tag.get("name", tag.get("tag"))
        if isinstance(tag, str):
            out.append(tag)
    return out


def _nested_tags(data: dict[str, Any], depth: int = 0) -> list[str] | None:
    """The string list under Hydrus' nested object names (`{"metadata": {"tags": [...]}}`): a
    key naming tags first, else the one string list that is not URLs."""
    lists: list[tuple[str, list[str]]] = []

    def walk(node: dict[str, Any], level: int) -> None:
        for key, value in node.items():
            if isinstance(value, list) and value and all(isinstance(v, str) for v in value):
                lists.append((str(key), value))
            elif isinstance(value, dict) and level < 8:
                walk(value, level + 1)

    walk(data, depth)
    tagged = [v for k, v in lists if "tag" in k.lower()]
    if tagged:
        return [t for v in tagged for t in v]
    plain = [v for _, v in lists if not all(s.startswith(("http://", "https://")) for s in v)]
    return plain[0] if len(plain) == 1 else None


def from_table(tree: SourceTree, path: str, relpath: str, out: Sidecars) -> bool:
    """The image's row of its img2dataset shard table (`{shard}.parquet`); False when the table
    is not read (said once per source: pyarrow missing, or the table unreadable)."""
    rows = _table(tree, path)
    if isinstance(rows, str):
        if tree.report_once(f"table:{rows}"):
            out.warnings.append((tree.shown(path), rows))
        return False
    row = rows.get(relpath.rpartition("/")[2].rsplit(".", 1)[0])
    if row is None:
        return False
    out.metadata["img2dataset"] = _bounded(row)
    if isinstance(row.get("caption"), str):
        out.add_text(row["caption"], "img2dataset")
    _set_kind(out, "img2dataset")
    return True


def _table(tree: SourceTree, path: str) -> dict[str, dict[str, Any]] | str:
    """key -> row of a shard table, read once per tree (under its lock), or why not."""
    with tree.cache_lock:
        cached = tree.cache.get(path)
        if cached is None:
            cached = tree.cache[path] = _load_table(tree, path)
    return cached  # type: ignore[return-value]


def _load_table(tree: SourceTree, path: str) -> dict[str, dict[str, Any]] | str:
    try:
        import pyarrow.parquet as pq
    except ImportError:
        return ("img2dataset shard table not read: pyarrow is not installed (pip install pyarrow "
                "to read .parquet tables); each image's .json/.txt sidecars are read anyway")
    try:
        data = tree.read(path, TABLE_LIMIT)
        schema = pq.read_schema(io.BytesIO(data))
        columns = [c for c in schema.names if c not in ("jpg", "png", "webp")]  # image bytes
        table = pq.read_table(io.BytesIO(data), columns=columns)
    except Exception as exc:  # pyarrow raises its own types for a broken file
        return f"img2dataset shard table not read ({type(exc).__name__}): check or delete it"
    return {str(row.get("key")): row for row in table.to_pylist()}


def report_contradictions(tree: SourceTree, out: Sidecars, plain: list[PlainFile]) -> None:
    """Two caption files of one image that disagree (tags vs tags, or sentence vs sentence):
    both are kept; said once per source with what to do."""
    tagged = [p for p in plain if p.tags]
    texts = [p for p in plain if p.text]
    clash = next(((a, b) for a, b in pairwise(tagged) if a.tags != b.tags), None)
    clash = clash or next(((a, b) for a, b in pairwise(texts) if a.text != b.text), None)
    if clash and tree.report_once("contradicting captions"):
        out.warnings.append((clash[0].shown, f"caption files disagree ({clash[0].shown} and "
                             f"{clash[1].shown}): both are kept; delete or fix the one you do not "
                             "want (said once for this source)"))


def report_namespaces(tree: SourceTree, relpath: str, out: Sidecars) -> None:
    namespaces = out.metadata.get("namespaces")
    if namespaces and tree.report_once("namespaces"):
        out.warnings.append((tree.shown(relpath), "tag namespaces not understood ("
                             + ", ".join(sorted(namespaces)) + "): those tags are kept as category "
                             "'other' with their namespace, out of captions; rename the namespace "
                             "(character:, creator:, series:, meta:...) in the export to use them "
                             "(said once for this source)"))


def _bounded(data: dict[str, Any]) -> dict[str, Any]:
    text = json.dumps(data, ensure_ascii=False, default=str)
    if len(text) <= METADATA_LIMIT:
        return data
    return {k: v for k, v in data.items() if isinstance(v, int | float | bool) or
            (isinstance(v, str) and len(v) < 512)}

