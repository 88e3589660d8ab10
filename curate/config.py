"""Options from `curate.toml`, overridden by command-line flags and `--set section.key=value`.

Each stage owns a frozen dataclass of options (its typed config). The TOML file has one table
per stage (`[import]`, later `[dedupe]`, `[tag]`...). Precedence, lowest first: dataclass
defaults, `curate.toml`, `--set`, explicit flags. Unknown sections and keys are errors that list
the valid ones, so a typo never silently does nothing.

An option is declared once, on its field: `hash_size: int = option(8, ge=4, le=64, help="...")`.
From that one declaration come the range `build` holds every given value to (so an extreme value
is refused with the range named when the config is read, not deep in a stage), the command-line
flags and their `--help` (`curate.cli._flags`), and the commented curate.toml `curate init`
writes (`template`).

Table names are the command names: `[filter]` is `curate filter`, `[tags-filter]` is `curate tags
filter` (also `curate run`'s stage names). The old names (`[quality]`, and `[filter]` holding
tags-filter keys) are still read, with a one-line note (`migrate_tables`).

SECTIONS names each table's dataclass as a "module:Class" string, imported only when its keys are
listed or the template is written: this base module holds the names (one line per stage), never
an import of a stage, so importing it imports no stage (see architecture.md, "Layers").
"""

from __future__ import annotations

import dataclasses
import importlib
import json
import math
import re
import sys
import textwrap
import tomllib
import types
import typing
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, TypeVar

from curate.errors import CurateError

CONFIG_NAME = "curate.toml"
BARE_KEY = re.compile(r"^[A-Za-z0-9_-]+$")
T = TypeVar("T")
FILE_OR_SET = "curate.toml or --set"
FLAG = "command-line option"

# Every table curate.toml may hold, and the dataclass that reads it (imported only to list its
# keys, so that `--set dedupe.hash_sise=4` given to another command is not silently ignored).
SECTIONS = {
    "run": "curate.pipeline.config:RunConfig",
    "import": "curate.stages.ingest.config:ImportConfig",
    "dedupe": "curate.stages.dedupe.config:DedupeConfig",
    "filter": "curate.stages.quality.config:QualityConfig",
    "bg": "curate.stages.background.config:BgConfig",
    "crop": "curate.stages.crop.config:CropConfig",
    "tag": "curate.stages.tag.config:TagConfig",
    "tags-filter": "curate.stages.captions.filter:FilterStageConfig",
    "caption": "curate.stages.caption.config:CaptionConfig",
    "layout": "curate.stages.layout.config:LayoutConfig",
    "captions": "curate.tagging.compile:CaptionFormat",  # the caption format `curate layout` compiles
    "check": "curate.check.config:CheckConfig",
    "train": "curate.trainer.config:TrainConfig",
}


@dataclasses.dataclass(frozen=True)
class Range:
    """Bounds of a numeric option (None = open); gt/lt are strict."""

    ge: float | None = None
    le: float | None = None
    gt: float | None = None
    lt: float | None = None

    def holds(self, value: float) -> bool:
        return not ((self.ge is not None and not value >= self.ge)
                    or (self.gt is not None and not value > self.gt)
                    or (self.le is not None and not value <= self.le)
                    or (self.lt is not None and not value < self.lt))

    def describe(self) -> str:
        if self.ge is not None and self.le is not None:
            return f"must be between {_num(self.ge)} and {_num(self.le)}"
        low = (f"at least {_num(self.ge)}" if self.ge is not None
               else f"greater than {_num(self.gt)}" if self.gt is not None else "")
        high = (f"at most {_num(self.le)}" if self.le is not None
                else f"below {_num(self.lt)}" if self.lt is not None else "")
        return "must be " + " and ".join(part for part in (low, high) if part)


def _num(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else str(value)


def option(default: Any = dataclasses.MISSING, *, ge: float | None = None, le: float | None = None,
           gt: float | None = None, lt: float | None = None, help: str = "", example: Any = None,
           factory: Any = None) -> Any:
    """A dataclass field: its default (or `factory` for a mutable one), the range `build` holds
    every given value to, the `help` that --help and the curate.toml template show, and for an
    option unset by default (None) an `example` value the template shows."""
    metadata = {"range": Range(ge, le, gt, lt), "help": " ".join(help.split()), "example": example}
    if factory is not None:
        return dataclasses.field(default_factory=factory, metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


def help_of(item: dataclasses.Field[Any]) -> str:
    """The help text declared on a config field ("" when none was)."""
    return item.metadata.get("help", "")


def default_of(item: dataclasses.Field[Any]) -> Any:
    if item.default_factory is not dataclasses.MISSING:
        return item.default_factory()
    return item.default


def default_text(item: dataclasses.Field[Any]) -> str:
    """The default as a user writes it in curate.toml ("unset" for None)."""
    value = default_of(item)
    return "unset" if value is None else toml_value(value)


def load_toml(path: Path) -> dict[str, Any]:
    """Read `path` (missing file => empty); a syntax error names the file and line."""
    if not path.is_file():
        return {}
    try:
        with path.open("rb") as fh:
            return tomllib.load(fh)
    except tomllib.TOMLDecodeError as exc:
        raise CurateError(f"{path}: not valid TOML ({exc}); fix the file or move it away") from exc
    except UnicodeDecodeError as exc:
        raise CurateError(f"{path}: not UTF-8 ({exc}); re-save it as UTF-8") from exc


def toml_key(name: str) -> str:
    """A TOML key: bare when it can be, else quoted."""
    return name if BARE_KEY.match(name) else json.dumps(name)


def toml_value(value: Any) -> str:
    """A TOML literal for the values curate writes (dataset.toml, the resolved train config)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)  # a JSON string is a TOML basic string
    if isinstance(value, list | tuple):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{toml_key(k)} = {toml_value(v)}" for k, v in value.items()) + " }"
    raise CurateError(f"{value!r}: cannot be written as a TOML value")


def parse_value(text: str) -> Any:
    """`--set` values are TOML literals (`true`, `0.4`, `["a", "b"]`); anything else is a string."""
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


def apply_overrides(data: dict[str, Any], overrides: Iterable[str]) -> dict[str, Any]:
    """Apply `section.key=value` strings to a nested dict (returns a new dict)."""
    out = {k: dict(v) if isinstance(v, dict) else v for k, v in data.items()}
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise CurateError(f"--set {item!r}: expected key=value, e.g. --set import.workers=4")
        node = out
        *parents, leaf = [part.strip() for part in key.split(".")]
        for part in parents:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise CurateError(f"--set {item!r}: {part!r} is a value, not a table")
            node = child
        node[leaf] = parse_value(value.strip())
    return out


def _check_type(section: str, name: str, value: Any, hint: Any) -> Any:
    origin = typing.get_origin(hint)
    allowed: tuple[Any, ...] = typing.get_args(hint) if origin in (typing.Union, types.UnionType) else (hint,)
    for kind in allowed:
        base = typing.get_origin(kind) or kind
        if base is typing.Literal:
            if value in typing.get_args(kind):
                return value
            continue
        if kind is type(None) and value is None:
            return value
        if base is float and isinstance(value, int) and not isinstance(value, bool):
            return float(value)
        if base is int and isinstance(value, bool):
            continue  # TOML's true is not the number 1
        if base is tuple and isinstance(value, list):
            return tuple(value)
        if isinstance(base, type) and isinstance(value, base) and base is not type(None):
            return value
    raise CurateError(f"{section}.{name} = {value!r}: expected {' or '.join(_kind(k) for k in allowed)}")


def _kind(hint: Any) -> str:
    """A type hint as a user reads it: "an integer", "one of 'skip', 'first'"."""
    base = typing.get_origin(hint) or hint
    if base is typing.Literal:
        return "one of " + ", ".join(repr(v) for v in typing.get_args(hint))
    names = {int: "an integer", float: "a number", str: "a string", bool: "true or false",
             tuple: "a list", list: "a list", dict: "a table", type(None): "nothing (unset)"}
    return names.get(base, str(hint))


def _check_range(section: str, item: dataclasses.Field[Any], value: Any, source: str) -> None:
    if not isinstance(value, int | float) or isinstance(value, bool):
        return
    where = f"{section}.{item.name} = {value!r}"
    if isinstance(value, float) and not math.isfinite(value):
        raise CurateError(f"{where} is not a finite number ({source})")
    bounds = item.metadata.get("range")
    if bounds is not None and not bounds.holds(value):
        raise CurateError(f"{where} is out of range: {bounds.describe()} ({source})")


def check_ranges(config: Any, section: str, source: str = "") -> None:
    """Every field of a config dataclass within its declared range: for configs a library caller
    made directly, which did not pass through `build`."""
    for item in dataclasses.fields(config):
        _check_range(section, item, getattr(config, item.name), source or "its declared range")


def build(cls: type[T], section: str, values: Mapping[str, Any], *, source: str = FILE_OR_SET,
          flags: Iterable[str] = ()) -> T:
    """Make the dataclass `cls` from a TOML table, checking names, types and ranges, then the
    dataclass's own `check()` (options that constrain each other) when it has one.

    `source` says where the values came from, for the messages; `flags` names the keys that
    came from command-line options instead.
    """
    fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    hints = typing.get_type_hints(cls)
    unknown = sorted(set(values) - set(fields))
    if unknown:
        raise CurateError(f"[{section}] has unknown option(s) {', '.join(unknown)}; valid: "
                          f"{', '.join(fields)}{_elsewhere(section, unknown)}")
    from_flags = set(flags)
    kwargs = {}
    for key, value in values.items():
        kwargs[key] = _check_type(section, key, value, hints[key])
        _check_range(section, fields[key], kwargs[key], FLAG if key in from_flags else source)
    config = cls(**kwargs)
    check = getattr(config, "check", None)
    if callable(check):
        check()
    return config


def section_class(section: str) -> type:
    """The dataclass that reads a curate.toml table (see SECTIONS), imported now."""
    module, _, name = SECTIONS[section].partition(":")
    return getattr(importlib.import_module(module), name)  # type: ignore[no-any-return]


def section_keys(section: str) -> list[str]:
    """The option names of a curate.toml table (see SECTIONS)."""
    return [f.name for f in dataclasses.fields(section_class(section))]


# Old table names, still read: [quality] is now [filter]; [filter] with `curate tags filter`'s
# keys is now [tags-filter]. Each use prints one note (once per process: `curate run` reads the
# file once per stage).
OLD_QUALITY, NEW_QUALITY, NEW_TAGS_FILTER = "quality", "filter", "tags-filter"
_NOTED: set[str] = set()


def _note(text: str) -> None:
    if text not in _NOTED:
        _NOTED.add(text)
        print(f"note: {text}", file=sys.stderr)


def _is_old_tags_filter(table: Any) -> bool:
    """A [filter] table written for `curate tags filter` (before the tables were renamed)."""
    if not isinstance(table, dict) or not table:
        return False
    old = set(section_keys(NEW_TAGS_FILTER))
    return set(table) <= old and not set(table) & set(section_keys(NEW_QUALITY))


def migrate_tables(data: Mapping[str, Any], where: str) -> dict[str, Any]:
    """Read the old table names as the new ones (with a note); both forms at once is an error."""
    out = dict(data)
    if _is_old_tags_filter(out.get(NEW_QUALITY)):
        if NEW_TAGS_FILTER in out:
            raise CurateError(f"{where}: both [filter] with `curate tags filter` options (the old name) "
                              f"and [{NEW_TAGS_FILTER}]: move them into [{NEW_TAGS_FILTER}]")
        _note(f"{where}: [filter] with `curate tags filter` options is read as [{NEW_TAGS_FILTER}]; "
              f"rename the table to [{NEW_TAGS_FILTER}] ([filter] is now `curate filter`)")
        out[NEW_TAGS_FILTER] = out.pop(NEW_QUALITY)
    if OLD_QUALITY in out:
        if NEW_QUALITY in out:
            raise CurateError(f"{where}: both [{OLD_QUALITY}] (the old name) and [{NEW_QUALITY}] for "
                              f"`curate filter`: move the options into [{NEW_QUALITY}]")
        _note(f"{where}: [{OLD_QUALITY}] is read as [{NEW_QUALITY}]; rename the table "
              f"(`curate filter` reads [{NEW_QUALITY}])")
        out[NEW_QUALITY] = out.pop(OLD_QUALITY)
    return out


def migrate_override(item: str) -> str:
    """`--set quality.x=v` as `filter.x=v`, `--set filter.min_share=v` as `tags-filter.min_share=v`."""
    key, sep, value = item.partition("=")
    section, dot, rest = key.strip().partition(".")
    option_name = rest.partition(".")[0].strip()
    if not dot:
        return item
    if section == OLD_QUALITY:
        _note(f"--set {OLD_QUALITY}.{rest}: [{OLD_QUALITY}] is now [{NEW_QUALITY}]; "
              f"write --set {NEW_QUALITY}.{rest}")
        return f"{NEW_QUALITY}.{rest}{sep}{value}"
    if (section == NEW_QUALITY and option_name in section_keys(NEW_TAGS_FILTER)
            and option_name not in section_keys(NEW_QUALITY)):
        _note(f"--set filter.{rest}: `curate tags filter` options are now [{NEW_TAGS_FILTER}]; "
              f"write --set {NEW_TAGS_FILTER}.{rest}")
        return f"{NEW_TAGS_FILTER}.{rest}{sep}{value}"
    return item


def check_names(data: Mapping[str, Any], overrides: Iterable[str], where: str) -> None:
    """Unknown tables in the file or --set, and unknown keys given with --set to any table, are
    errors that list the known ones (the table being read checks its own keys in `build`)."""
    unknown = sorted(set(data) - set(SECTIONS))
    if unknown:
        raise CurateError(f"{where}: unknown section(s) {', '.join(unknown)}; known: "
                          f"{', '.join(sorted(SECTIONS))} (--set takes section.key=value)")
    for item in overrides:
        section, _, key = item.partition("=")[0].strip().partition(".")
        key = key.partition(".")[0].strip()
        if section.strip() not in SECTIONS:
            continue  # an unknown table given with --set is in `data`, reported above
        valid = section_keys(section.strip())
        if key not in valid:
            raise CurateError(f"--set {item!r}: [{section.strip()}] has unknown option(s) {key}; "
                              f"valid: {', '.join(valid)}{_elsewhere(section.strip(), [key])}")


def _elsewhere(section: str, keys: Iterable[str]) -> str:
    """Where misplaced keys belong: [caption] (the captioner) and [captions] (the caption format
    layout compiles) differ by one letter, and a key in the wrong one is the likely mistake."""
    hints = []
    for key in keys:
        tables = [name for name in SECTIONS if name != section and key in section_keys(name)]
        if tables:
            hints.append(f"{key} is an option of " + " and ".join(f"[{t}]" for t in tables))
    return f" ({'; '.join(hints)})" if hints else ""


def stage_config(
    cls: type[T],
    section: str,
    config_file: Path | None,
    overrides: Iterable[str] = (),
    flags: Mapping[str, Any] | None = None,
) -> T:
    """The typed options of one stage: defaults < curate.toml < --set < flags (None = unset)."""
    name = config_file.name if config_file else CONFIG_NAME
    overrides = [migrate_override(item) for item in overrides]
    data = migrate_tables(load_toml(config_file) if config_file else {}, name)
    data = apply_overrides(data, overrides)
    check_names(data, overrides, f"{name} or --set")
    table = data.get(section, {})
    if not isinstance(table, dict):
        raise CurateError(f"{section} in {config_file} must be a table ([{section}])")
    given = {k: v for k, v in (flags or {}).items() if v is not None}
    return build(cls, section, {**table, **given}, flags=given)


def _example(item: dataclasses.Field[Any]) -> Any:
    """What the template shows for an option unset by default: its declared example, else the
    least value its range allows."""
    if item.metadata.get("example") is not None:
        return item.metadata["example"]
    bounds = item.metadata.get("range") or Range()
    low = bounds.ge if bounds.ge is not None else bounds.gt
    if low is None:
        raise CurateError(f"{item.name}: an option unset by default needs option(..., example=...)")
    return int(low) if float(low).is_integer() else low


def template_table(section: str, width: int = 96) -> str:
    """One commented table of curate.toml: the dataclass's summary, then each option's help and
    its default as a `# key = value` line (an example, marked so, for one unset by default)."""
    cls = section_class(section)
    summary = (cls.__doc__ or "").strip().split("\n\n")[0]
    lines = [f"[{section}]", *textwrap.wrap(" ".join(summary.split()), width, initial_indent="# ",
                                            subsequent_indent="# ")]
    for item in dataclasses.fields(cls):
        lines.append("")
        lines += textwrap.wrap(help_of(item), width, initial_indent="# ", subsequent_indent="# ")
        value = default_of(item)
        if value is None:
            example = toml_value(_example(item))
            lines.append(f"# {toml_key(item.name)} = {example}  # an example: unset by default")
        else:
            lines.append(f"# {toml_key(item.name)} = {toml_value(value)}")
    return "\n".join(lines) + "\n"


def template(sections: Iterable[str] = ()) -> str:
    """Every table of curate.toml (or those named), commented, as `curate init` writes them."""
    return "\n".join(template_table(section) for section in (sections or SECTIONS))
