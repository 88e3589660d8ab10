"""Reading what scrapers leave beside an image: tags, sentence captions and metadata.

Every tag goes through `curate.tagging.normalize.parse_tag` (one canonical name, a category, the
namespace kept when we do not know it) and lands in `Sidecars.annotations` as a
`curate.record.Tag` with its source; every sentence caption lands in `Sidecars.texts` as a
`curate.record.Text`. Which files belong to an image: `plan.candidates`; the formats, each as
its tool writes it: `sidecar_formats`. A sidecar that cannot be read never stops the import:
the image comes in without it and the reason is recorded: one over `import.max_sidecar_kb`,
one the walk refused (a symlink out of SRC, a FIFO), one whose parsing fails in any way.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from curate.paths import first_line
from curate.record import Tag, Text
from curate.stages.ingest.kohya import kohya_subset
from curate.stages.ingest.sources import Refused, SourceTree, TooLarge
from curate.tagging.normalize import parse_tag

SIDECAR_LIMIT = 1024 * 1024  # the default of import.max_sidecar_kb, in bytes


@dataclass
class Sidecars:
    """What the sidecars of one image say. `annotations` and `texts` are the data; `tags` and
    `caption` are the (name, category) / one-string views older writers read."""

    kind: str
    annotations: list[Tag] = field(default_factory=list)
    texts: list[Text] = field(default_factory=list)
    raw_caption: str | None = None  # a Kohya caption file's first line, as sd-scripts reads it
    metadata: dict[str, Any] = field(default_factory=dict)
    paths: list[str] = field(default_factory=list)
    warnings: list[tuple[str, str]] = field(default_factory=list)  # (subject, reason)
    # name -> its index in annotations: a list membership test made 40k tags take 10 s
    seen: dict[str, int] = field(default_factory=dict)

    @property
    def tags(self) -> list[tuple[str, str]]:
        return [(t.name, t.category) for t in self.annotations]

    @property
    def caption(self) -> str | None:
        return self.texts[0].text if self.texts else self.raw_caption

    def add_tag(self, raw: str, category: str | None = None, *, source: str = "",
                namespaced: bool = False, namespace: str = "") -> str | None:
        """One raw tag, normalised; returns its canonical name. A namespace we do not know (the
        tag's own, or the `namespace` its source filed it under) is kept in
        metadata["namespaces"], never glued into the name."""
        parsed = parse_tag(raw, category, namespaced=namespaced)
        if parsed is None:
            return None
        tag = Tag(parsed.name, parsed.category, 1.0, source or self.kind)
        at = self.seen.get(parsed.name)
        if at is None:
            self.seen[parsed.name] = len(self.annotations)
            self.annotations.append(tag)
        elif self.annotations[at].category == "general" != parsed.category:
            self.annotations[at] = tag  # `saber (fate)` and `character:saber (fate)`: one tag
        else:
            return parsed.name
        if parsed.namespace or namespace:
            names = self.metadata.setdefault("namespaces", {}).setdefault(parsed.namespace or namespace, [])
            names.append(parsed.name)
        return parsed.name

    def add_text(self, text: str, source: str) -> None:
        text = " ".join(text.split())
        if text and all(t.text != text for t in self.texts):
            self.texts.append(Text(text, source))

    def snapshot(self) -> tuple[int, int, str | None, str, dict[str, Any]]:
        return len(self.annotations), len(self.texts), self.raw_caption, self.kind, \
            {k: v for k, v in self.metadata.items() if k != "namespaces"}

    def restore(self, snap: tuple[int, int, str | None, str, dict[str, Any]]) -> None:
        """Undo what a sidecar that failed half-way added: one bad file adds nothing."""
        tags, texts, self.raw_caption, self.kind, metadata = snap
        del self.annotations[tags:]  # (a category it upgraded stays: the same tag either way)
        self.seen = {t.name: i for i, t in enumerate(self.annotations)}
        del self.texts[texts:]
        self.metadata = {**metadata, **({"namespaces": self.metadata["namespaces"]}
                                        if "namespaces" in self.metadata else {})}


def read_sidecars(tree: SourceTree, relpath: str, found: list[str],
                  limit: int = SIDECAR_LIMIT) -> Sidecars:
    """Tags, texts and metadata from the sidecars `found` beside the image at `relpath`;
    each one that cannot be read or parsed becomes a warning naming it, and adds nothing."""
    from curate.stages.ingest import sidecar_formats as formats

    folder = relpath.rpartition("/")[0]
    kohya = kohya_subset(tree, folder)  # a Kohya subset by content and place, not by name alone
    out = Sidecars(kind=tree.kind)
    if kohya:
        out.kind = "kohya"
        out.metadata["kohya"] = kohya
    plain: list[formats.PlainFile] = []  # the .txt/.caption files, compared at the end
    for path in found:
        shown, snap = tree.shown(path), out.snapshot()
        try:
            if path.endswith(".parquet"):
                if not formats.from_table(tree, path, relpath, out):
                    continue
            elif (text := _read_text(tree, path, shown, out, limit)) is None:
                continue
            elif path.endswith(".json"):
                formats.from_json(out, shown, text, site_hint=path)
            else:
                plain.append(formats.from_text(out, shown, text, formats.text_role(
                    relpath, path, kohya=bool(kohya))))
        except Exception as exc:  # a parser's failure (nesting too deep...) is the file's
            out.restore(snap)
            out.warnings.append((shown, f"sidecar not read ({type(exc).__name__}: "
                                        f"{first_line(exc, 200)}): its tags are ignored; fix or delete it"))
            continue
        out.paths.append(path)
    formats.report_contradictions(tree, out, plain)
    formats.report_namespaces(tree, relpath, out)
    return out


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
