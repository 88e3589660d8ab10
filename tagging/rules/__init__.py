"""Tag rules: which tags exclude, imply or combine with which, read from TOML.

`load_rules()` reads the built-in `default.toml` beside this file, then each user file in
order; the comment at the top of `default.toml` says how a user file edits the defaults. All
names are stored in comparison form (`curate.tagging.tags.tag_key`). Every problem in a file is a
`CurateError` naming the file and, where it can be found, the line.
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from types import MappingProxyType
from typing import Any

from curate.errors import CurateError
from curate.tagging.tags import tag_key

DEFAULT_SOURCE = "tagging/rules/default.toml"
SECTIONS = ("blacklist", "intrinsic", "exclusive", "people", "patterns", "pattern", "implies", "merge")


@dataclass(frozen=True)
class Merge:
    """An image with every tag of `parts` and without `into` gets the parts replaced by `into`."""

    parts: tuple[str, ...]
    into: str


@dataclass(frozen=True)
class Rules:
    """All names in `tag_key` form. Build with `load_rules`, not by hand."""

    exclusive: Mapping[str, tuple[str, ...]]  # group -> its tags, in the file's order
    implies: Mapping[str, frozenset[str]]  # specific tag -> every tag it makes redundant (closed)
    merges: tuple[Merge, ...]
    intrinsic: frozenset[str]  # the character's fixed look, for prune_intrinsic
    blacklist: frozenset[str]
    multi_person: frozenset[str]  # any one of these: more than one person in the image
    person_counts: frozenset[str]  # two different ones of these: more than one person
    sources: tuple[str, ...] = ()


class _File:
    """One TOML file being read: its name and text, for error messages with line numbers."""

    def __init__(self, source: str, text: str) -> None:
        self.source, self.text = source, text

    def error(self, where: tuple[str | int, ...], what: str) -> CurateError:
        line = _locate(self.text, where)
        at = f", line {line}" if line else ""
        return CurateError(f"{self.source}{at}: {what}")

    def parse(self) -> dict[str, Any]:
        try:
            return tomllib.loads(self.text)
        except tomllib.TOMLDecodeError as exc:
            match = re.search(r"\(at line (\d+), column (\d+)\)", str(exc))
            msg = str(exc)[: match.start()].strip() if match else str(exc)
            at = f", line {match[1]} column {match[2]}" if match else ""
            raise CurateError(f"{self.source}{at}: not valid TOML: {msg}") from None


@dataclass
class _State:
    """Rules as read so far, before patterns are expanded and implications closed."""

    lists: dict[str, list[str]] = field(default_factory=dict)
    exclusive: dict[str, list[str]] = field(default_factory=dict)
    words: dict[str, list[str]] = field(default_factory=dict)
    patterns: list[tuple[_File, int, dict[str, Any]]] = field(default_factory=list)
    implies: list[tuple[bool, dict[str, list[str]]]] = field(default_factory=list)  # (is default, layer)
    merges: dict[str, list[str]] = field(default_factory=dict)
    intrinsic_groups: tuple[_File, list[str]] | None = None
    sources: list[str] = field(default_factory=list)


def load_rules(paths: Sequence[Path] = ()) -> Rules:
    """The built-in rules, edited by each file of `paths` in turn."""
    state = _State()
    default = resources.files("curate.tagging.rules").joinpath("default.toml").read_text(encoding="utf-8")
    _read(state, _File(DEFAULT_SOURCE, default), is_default=True)
    for path in paths:
        try:
            text = Path(path).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise CurateError(f"{path}: cannot read rules file: {exc}") from None
        _read(state, _File(str(path), text), is_default=False)
    return _build(state)


def _read(state: _State, file: _File, is_default: bool) -> None:
    data = file.parse()
    for key in data:
        if key not in SECTIONS:
            raise file.error((key,), f"unknown section [{key}]; expected one of: {', '.join(SECTIONS)}")
    for name, extra in (("blacklist", set()), ("intrinsic", {"groups"})):
        section = _table(file, data.get(name, {}), (name,))
        _no_extra(file, section, (name,), {"tags", "add", "remove"} | extra)
        _edit_list(file, state.lists, name, section, (name,))
        if "groups" in section:
            state.intrinsic_groups = (file, _strings(file, section["groups"], (name, "groups"), False))
    for group, value in _table(file, data.get("exclusive", {}), ("exclusive",)).items():
        section = _table(file, value, ("exclusive", group))
        _no_extra(file, section, ("exclusive", group), {"tags", "add", "remove"})
        _edit_list(file, state.exclusive, group, section, ("exclusive", group))
    people = _table(file, data.get("people", {}), ("people",))
    _no_extra(file, people, ("people",), {"multiple", "single"})
    for key, value in people.items():
        state.lists[f"people {key}"] = _strings(file, value, ("people", key), True)
    for key, value in _table(file, data.get("patterns", {}), ("patterns",)).items():
        state.words[key] = _strings(file, value, ("patterns", key), False)
    for index, entry in enumerate(_array(file, data, "pattern")):
        state.patterns.append((file, index, entry))
    state.implies.append((is_default, _read_implies(file, data)))
    _read_merges(state, file, data)
    state.sources.append(file.source)


def _read_implies(file: _File, data: dict[str, Any]) -> dict[str, list[str]]:
    layer: dict[str, list[str]] = {}
    for index, entry in enumerate(_array(file, data, "implies")):
        where: tuple[str | int, ...] = ("implies", index)
        _no_extra(file, entry, where, {"tag", "drops"})
        if not isinstance(entry.get("tag"), str) or "drops" not in entry:
            raise file.error(where, "an [[implies]] entry needs tag = \"...\" and drops = [...]")
        tag = _name(file, entry["tag"], (*where, "tag"))
        layer.setdefault(tag, []).extend(_strings(file, entry["drops"], (*where, "drops"), True))
    return layer


def _read_merges(state: _State, file: _File, data: dict[str, Any]) -> None:
    for index, entry in enumerate(_array(file, data, "merge")):
        where: tuple[str | int, ...] = ("merge", index)
        _no_extra(file, entry, where, {"tags", "into"})
        if not isinstance(entry.get("into"), str) or "tags" not in entry:
            raise file.error(where, "a [[merge]] entry needs tags = [...] and into = \"...\"")
        into = _name(file, entry["into"], (*where, "into"))
        parts = _strings(file, entry["tags"], (*where, "tags"), True)
        if parts and (len(parts) < 2 or into in parts):
            raise file.error(where, "a merge needs two or more tags, none of them the merged tag")
        state.merges[into] = parts


def _build(state: _State) -> Rules:
    implies, merges = _expand_patterns(state)
    for is_default, layer in state.implies:
        for tag, drops in layer.items():
            implies[tag] = (implies.get(tag, set()) | set(drops)) if is_default else set(drops)
    for into, parts in state.merges.items():
        if not parts:  # `tags = []` in a later file switches the merge off
            merges.pop(into, None)
            continue
        merges[into] = tuple(parts)
        implies.setdefault(into, set()).update(parts)
    exclusive = {group: tuple(dict.fromkeys(tags)) for group, tags in state.exclusive.items() if tags}
    intrinsic = set(state.lists.get("intrinsic", []))
    file, groups = state.intrinsic_groups or (None, [])
    for group in groups:
        if file is not None and group not in state.exclusive:
            known = ", ".join(state.exclusive)
            raise file.error(("intrinsic", "groups"), f"'{group}' is not an exclusive group ({known})")
        intrinsic.update(state.exclusive[group])
    return Rules(
        exclusive=MappingProxyType(exclusive),
        implies=MappingProxyType(_close(implies)),
        merges=tuple(Merge(parts, into) for into, parts in merges.items()),
        intrinsic=frozenset(intrinsic),
        blacklist=frozenset(state.lists.get("blacklist", [])),
        multi_person=frozenset(state.lists.get("people multiple", [])),
        person_counts=frozenset(state.lists.get("people single", [])),
        sources=tuple(state.sources),
    )


def _expand_patterns(state: _State) -> tuple[dict[str, set[str]], dict[str, tuple[str, ...]]]:
    """"{word} {item}" rules from every [[pattern]], with the word lists as finally edited."""
    implies: dict[str, set[str]] = {}
    merges: dict[str, tuple[str, ...]] = {}
    for file, index, entry in state.patterns:
        where: tuple[str | int, ...] = ("pattern", index)
        _no_extra(file, entry, where, {"words", "items", "implies", "merge"})
        words = entry.get("words")
        if words not in state.words:
            raise file.error(where, f"words = {words!r} names no [patterns] list ({', '.join(state.words)})")
        items = _strings(file, entry.get("items", []), (*where, "items"), False)
        templates = _strings(file, entry.get("implies", ["{item}"]), (*where, "implies"), False)
        merge = entry.get("merge", False)
        if not isinstance(merge, bool):
            raise file.error((*where, "merge"), "merge must be true or false")
        for word in state.words[words]:
            for item in items:
                try:
                    drops = tuple(tag_key(t.format(word=word, item=item)) for t in templates)
                except (KeyError, IndexError, ValueError) as exc:
                    msg = f"bad template ({exc}): use {{word}} and {{item}}"
                    raise file.error((*where, "implies"), msg) from None
                specific = tag_key(f"{word} {item}")
                implies.setdefault(specific, set()).update(drops)
                if merge:
                    merges[specific] = drops
    return implies, merges


def _close(implies: dict[str, set[str]]) -> dict[str, frozenset[str]]:
    """Each tag -> everything it implies, directly or through a chain; a cycle is an error
    because it would make each tag of the cycle drop the other."""
    closed: dict[str, frozenset[str]] = {}

    def visit(tag: str, chain: tuple[str, ...]) -> frozenset[str]:
        if tag in chain:
            cycle = " > ".join((*chain[chain.index(tag):], tag))
            raise CurateError(f"rules: implications form a cycle: {cycle}")
        if tag not in closed:
            found: set[str] = set()
            for general in implies.get(tag, ()):
                found |= {general} | visit(general, (*chain, tag))
            closed[tag] = frozenset(found)
        return closed[tag]

    for tag in implies:
        visit(tag, ())
    return {tag: found for tag, found in closed.items() if found}


def _table(file: _File, value: Any, where: tuple[str, ...]) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise file.error(where, f"[{'.'.join(where)}] must be a table")
    return value


def _array(file: _File, data: dict[str, Any], key: str) -> list[dict[str, Any]]:
    value = data.get(key, [])
    if not isinstance(value, list) or not all(isinstance(entry, dict) for entry in value):
        raise file.error((key,), f"{key} must be written as [[{key}]] tables")
    return value


def _edit_list(file: _File, into: dict[str, list[str]], name: str, section: dict, where: tuple) -> None:
    if "tags" in section:
        into[name] = _strings(file, section["tags"], (*where, "tags"), True)
    current = into.setdefault(name, [])
    current.extend(_strings(file, section.get("add", []), (*where, "add"), True))
    removed = set(_strings(file, section.get("remove", []), (*where, "remove"), True))
    into[name] = [tag for tag in dict.fromkeys(current) if tag not in removed]


def _strings(file: _File, value: Any, where: tuple[str | int, ...], as_tags: bool) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        raise file.error(where, f"{where[-1]} must be a list of strings")
    return [_name(file, item, where) for item in value] if as_tags else list(value)


def _name(file: _File, value: str, where: tuple[str | int, ...]) -> str:
    key = tag_key(value)
    if not key or "," in key or "\n" in key:
        raise file.error(where, f"{value!r} is not a tag name (empty, or has a comma or newline)")
    return key


def _no_extra(file: _File, section: dict, where: tuple[str | int, ...], allowed: set[str]) -> None:
    for key in section:
        if key not in allowed:
            expected = ", ".join(sorted(allowed))
            raise file.error((*where, key), f"unknown key '{key}'; expected one of: {expected}")


def _locate(text: str, where: tuple[str | int, ...]) -> int | None:
    """Best-effort 1-based line of a table or key path such as ("implies", 2, "drops") or
    ("exclusive", "hair_colour", "tags"); None when it cannot be found (inline tables)."""
    header: tuple[str | int, ...] = ()
    arrays: dict[str, int] = {}
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.split("#", 1)[0].strip()
        if line.startswith("[["):
            name = line.strip("[] ")
            arrays[name] = arrays.get(name, -1) + 1
            header = (*name.split("."), arrays[name])
        elif line.startswith("["):
            header = tuple(part.strip().strip('"') for part in line.strip("[] ").split("."))
        elif "=" in line:
            key = tuple(part.strip().strip('"') for part in line.split("=", 1)[0].split("."))
            if (*header, *key)[: len(where)] == where:
                return number
            continue
        else:
            continue
        if header[: len(where)] == where:
            return number
    return None
