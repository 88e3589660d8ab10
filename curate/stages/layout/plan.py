"""Which image goes to which concept folder, and how many repeats each concept gets.

The seeds' formula: steps = images x repeats x epochs / batch_size (regularisation images
double it). Given a target, every concept gets about the same images x repeats per epoch, so
one concept with many images does not take over the others.
"""

from __future__ import annotations

import tomllib
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from curate.errors import CurateError
from curate.paths import check_name, printable
from curate.record import Record
from curate.stages.layout.config import LayoutConfig
from curate.tagging.captions import caption_of, parse_caption
from curate.tagging.tags import tag_key


@dataclass(frozen=True)
class ConceptRule:
    name: str
    tags: tuple[str, ...] = ()
    folders: tuple[str, ...] = ()
    class_tokens: str | None = None
    format: str | None = None  # this concept's caption format ([captions] format otherwise)

    def matches(self, record: Record) -> bool:
        keys = {tag_key(t) for t in parse_caption(caption_of(record) or "")}
        keys |= {tag_key(t.name) for t in record.tags}
        if self.tags and not {tag_key(t) for t in self.tags} <= keys:
            return False
        return not self.folders or any(
            f in o.source_path.replace("\\", "/").split("/") for o in record.origins for f in self.folders)


@dataclass
class Concept:
    name: str
    class_tokens: str | None
    records: list[Record] = field(default_factory=list)
    repeats: int = 1
    # from an imported Kohya dataset: its repeats, class tokens and reg flag are kept
    kohya: bool = False
    is_reg: bool = False

    @property
    def folder(self) -> str:
        # the name comes from user data (concepts file, trigger word, --name): one plain component
        check_name(self.name, "concept name")
        return f"{self.repeats}_{self.name}"


CONCEPT_KEYS = {"tags": "a list of strings", "folders": "a list of strings", "class_tokens": "a string",
                "format": "one of 'tags', 'nl', 'hybrid', 'json'"}


def read_concepts(path: Path) -> list[ConceptRule]:
    """The [concept.NAME] tables of a concepts file; anything else in it is an error naming the
    file, the concept and the key, so a typo never silently changes which image goes where."""
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise CurateError(f"{path}: cannot read concepts ({exc})") from exc
    unknown = sorted(set(data) - {"concept"})
    if unknown:
        raise CurateError(f"{path}: unknown section(s) {', '.join(printable(k) for k in unknown)}; "
                          "a concepts file holds only [concept.NAME] tables")
    concepts = data.get("concept", {})
    if not isinstance(concepts, dict):
        raise CurateError(f"{path}: concept must be tables ([concept.NAME]), not a value")
    rules = [_concept_rule(path, name, table) for name, table in concepts.items()]
    if not rules:
        raise CurateError(f"{path}: no [concept.NAME] tables")
    return rules


def _concept_rule(path: Path, name: str, table: object) -> ConceptRule:
    where = f"{path}: [concept.{printable(repr(name))}]"
    check_name(name, f"{path}: concept name")  # it becomes the folder N_NAME
    if not isinstance(table, dict):
        raise CurateError(f"{where} must be a table with {', '.join(CONCEPT_KEYS)}")
    unknown = sorted(set(table) - set(CONCEPT_KEYS))
    if unknown:
        raise CurateError(f"{where} has unknown keys {unknown}; use {', '.join(CONCEPT_KEYS)}")
    for key, wanted in CONCEPT_KEYS.items():
        value = table.get(key)
        if key == "format":
            ok = value is None or value in ("tags", "nl", "hybrid", "json")
        else:
            ok = value is None or (isinstance(value, str) if key == "class_tokens" else
                                   isinstance(value, list) and all(isinstance(v, str) for v in value))
        if not ok:
            raise CurateError(f"{where} {key} = {printable(repr(value))}: expected {wanted}")
    return ConceptRule(name, tuple(table.get("tags", ())), tuple(table.get("folders", ())),
                       table.get("class_tokens"), table.get("format"))


def assign_concepts(records: Sequence[Record], rules: Sequence[ConceptRule], default: Concept
                    ) -> tuple[list[Concept], list[Record]]:
    """Concepts in rule order with their images; images no rule takes are returned apart."""
    if not rules:
        default.records = list(records)
        return [default], []
    concepts = [Concept(r.name, r.class_tokens) for r in rules]
    left = []
    for record in records:
        index = next((i for i, rule in enumerate(rules) if rule.matches(record)), None)
        if index is None:
            left.append(record)
        else:
            concepts[index].records.append(record)
    return [c for c in concepts if c.records], left


def kohya_concepts(records: Sequence[Record]) -> tuple[list[Concept], list[Record]]:
    """The subsets of imported Kohya datasets (each image's first origin with `kohya` metadata,
    see curate.stages.ingest.kohya), as concepts with their repeats, class tokens and reg flag;
    and the records that came from no Kohya dataset."""
    by_folder: dict[tuple[bool, int, str], Concept] = {}
    rest = []
    for record in records:
        meta = next((o.metadata["kohya"] for o in record.origins
                     if isinstance(o.metadata.get("kohya"), dict)), None)
        tokens = str(meta.get("class_tokens") or "") if meta else ""
        if meta is None or not isinstance(meta.get("repeats"), int) or not _plain(tokens or "concept"):
            rest.append(record)
            continue
        key = (bool(meta.get("is_reg")), meta["repeats"], tokens)
        concept = by_folder.setdefault(key, Concept(tokens or "concept", tokens or None, repeats=key[1],
                                                    kohya=True, is_reg=key[0]))
        concept.records.append(record)
    return sorted(by_folder.values(), key=lambda c: (c.is_reg, c.folder)), rest


def merge_folders(concepts: Sequence[Concept]) -> list[Concept]:
    """Concepts that ended up with the same folder (imported subsets of one class given the
    user's repeats) as one, in first-seen order."""
    out: dict[tuple[bool, str], Concept] = {}
    for concept in concepts:
        key = (concept.is_reg, concept.folder)
        if key in out:
            out[key].records.extend(concept.records)
        else:
            out[key] = concept
    return list(out.values())


def _plain(name: str) -> bool:
    try:
        check_name(name, "concept name")
    except CurateError:
        return False
    return True


def set_repeats(concepts: Sequence[Concept], config: LayoutConfig, reg_images: int = 0) -> None:
    """Fill in each concept's repeats (the steps follow from the written subsets: run._steps)."""
    if config.repeats is not None or config.target_steps is None:
        for c in concepts:
            c.repeats = config.repeats or 1
    else:
        # images x repeats per concept, per epoch, so that the whole run hits target_steps
        per_epoch = config.target_steps * config.batch_size / config.epochs / (2 if reg_images else 1)
        share = per_epoch / len(concepts)
        for c in concepts:
            c.repeats = max(1, round(share / len(c.records)))
