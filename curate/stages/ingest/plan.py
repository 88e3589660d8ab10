"""First half of an import: walk the sources and work out which files are new or changed.

A file is identified by its path (an archive member by archive path + member name); its
fingerprint joins the size/mtime (or CRC) of the file and of every sidecar that belongs to it
(`candidates`), so editing a tag file re-imports the image, and a re-import of untouched
sources reads nothing.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from curate.errors import CurateError
from curate.paths import is_url
from curate.stages.ingest.archives import open_archive, open_source
from curate.stages.ingest.identity import canonical_source
from curate.stages.ingest.remote import open_url
from curate.stages.ingest.sources import METADATA_DIR, Archive, Entry, Problem, SourceTree, location


def candidates(tree: SourceTree, relpath: str) -> list[str]:
    """The sidecar files of the image at `relpath` that exist, most specific first:

    - `<name>.json` / `<name>.txt`: gallery-dl's metadata post-processor (json, and `mode: tags`)
      and Hydrus' exporters (gallery_dl/postprocessor/metadata.py `_filename`; hydrus
      ClientMetadataMigrationCore.GetSidecarPath);
    - `<stem>.json` / `<stem>.txt` / `<stem>.caption`: gallery-dl `extension-format`,
      img2dataset (`key.txt`, `key.json`), sd-scripts / Kohya captions (WD14 `.txt`, BLIP `.caption`);
    - the same names in a `metadata/` folder beside the image (gallery-dl `"directory"`);
    - `<name>.<suffix>.txt|json` and `<stem>.<suffix>...`: Hydrus exporters with a suffix
      (`a.jpg.tags.txt`);
    - the shard's parquet table (img2dataset), read once per shard.
    """
    folder, _, name = relpath.rpartition("/")
    stem = name.rsplit(".", 1)[0]
    meta = f"{folder}/{METADATA_DIR}" if folder else METADATA_DIR

    def at(where: str, file: str) -> str:
        return f"{where}/{file}" if where else file

    names = [at(folder, f) for f in (f"{name}.json", f"{name}.txt", f"{stem}.json",
                                     f"{stem}.txt", f"{stem}.caption")]
    names += [at(meta, f) for f in (f"{name}.json", f"{name}.txt", f"{stem}.json", f"{stem}.txt")]
    suffixed = tree.suffixed(folder)
    names += [at(folder, f) for f in (*suffixed.get(name, ()), *suffixed.get(stem, ()))]
    table = tree.shard_table(relpath)
    found = [n for n in dict.fromkeys(names) if tree.has(n)]
    return [*found, table] if table else found


@dataclass(frozen=True)
class Work:
    """A file to import now: new, or changed since the last import."""

    entry: Entry
    fingerprint: str
    sidecars: tuple[str, ...]
    source_root: str


@dataclass
class Plan:
    work: list[Work]
    skipped: list[tuple[Problem, str, SourceTree]]  # problem, fingerprint, where it was found
    ignored: list[Problem]
    unchanged: int


def open_trees(sources: Iterable[Path | str], workspace: Path) -> list[SourceTree]:
    """Open every SRC up front, so a typo fails before anything is read."""
    exclude = frozenset({os.path.realpath(workspace)})
    # canonical: `../raw` from curate run and `./raw` from the cwd are one source (identity.py)
    trees = [open_url(src, exclude) if is_url(src) else open_source(canonical_source(Path(src)), exclude)
             for src in sources]
    if not trees:
        raise CurateError("nothing to import: name at least one folder, image or .zip")
    return trees


def make_plan(trees: list[SourceTree], known: dict[str, str]) -> Plan:
    plan = Plan([], [], [], 0)
    seen: set[str] = set()
    for tree, item in _walk(trees):
        if isinstance(item, Problem):
            if item.severity == "ignored":
                plan.ignored.append(item)
            elif item.subject not in seen:
                seen.add(item.subject)
                fingerprint = f"problem:{item.reason}"
                if known.get(item.subject) == fingerprint:
                    plan.unchanged += 1
                else:
                    plan.skipped.append((item, fingerprint, tree))
            continue
        shown = item.shown
        if shown in seen:  # the same file named twice on the command line
            continue
        seen.add(shown)
        found = candidates(tree, item.relpath)
        try:
            fingerprint = "|".join(tree.stamp(p) for p in (item.relpath, *found))
        except OSError as exc:
            plan.skipped.append((Problem(shown, f"cannot read ({exc.strerror or exc}): check the "
                                 "file and its permissions (or the server)"), "problem:stat", tree))
            continue
        if known.get(shown) == fingerprint:
            plan.unchanged += 1
        else:
            plan.work.append(Work(item, fingerprint, tuple(found), tree.label))
    return plan


def _walk(trees: list[SourceTree]) -> Iterator[tuple[SourceTree, Entry | Problem]]:
    for tree in trees:
        for item in tree.entries():
            if isinstance(item, Archive):
                yield from _walk_archive(tree, item)
            else:
                yield tree, item


def _walk_archive(parent: SourceTree, archive: Archive) -> Iterator[tuple[SourceTree, Entry | Problem]]:
    try:
        tree = open_archive(archive.path)
    except CurateError as exc:
        yield parent, Problem(location(archive.path), str(exc).split(": ", 1)[-1])
        return
    for item in tree.entries():
        if not isinstance(item, Archive):
            yield tree, item
