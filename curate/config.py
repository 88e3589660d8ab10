"""Options from `curate.toml`, overridden by command-line flags and `--set section.key=value`.

Each stage owns a frozen dataclass of options (its typed config). The TOML file has one table
per stage (`[import]`, later `[dedupe]`, `[tag]`...). Precedence, lowest first: dataclass
defaults, `curate.toml`, `--set`, explicit flags. Unknown sections and keys are errors that list
the valid ones, so a typo never silently does nothing.

A numeric option declares its range once, on its field: `hash_size: int = option(8, ge=4, le=64)`.
`build` checks every value it is given (from the file, `--set` or a flag) against it, so an
extreme value is refused with the range named when the config is read, not deep in a stage.
"""

from __future__ import annotations

import dataclasses
import importlib
import json
import math
import re
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
    "quality": "curate.stages.quality.config:QualityConfig",
    "bg": "curate.stages.background.config:BgConfig",
    "crop": "curate.stages.crop.config:CropConfig",
    "tag": "curate.stages.tag.config:TagConfig",
    "filter": "curate.stages.captions.filter:FilterStageConfig",
    "layout": "curate.stages.layout.config:LayoutConfig",
    "check": "curate.check.config:CheckConfig",
    "train": "trainer.config:TrainConfig",
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


def option(default: Any, *, ge: float | None = None, le: float | None = None,
           gt: float | None = None, lt: float | None = None) -> Any:
    """A dataclass field with a default and the range `build` holds every given value to."""
    return dataclasses.field(default=default, metadata={"range": Range(ge, le, gt, lt)})


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
        raise CurateError(
            f"[{section}] has unknown option(s) {', '.join(unknown)}; valid: {', '.join(fields)}"
        )
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


def section_keys(section: str) -> list[str]:
    """The option names of a curate.toml table (see SECTIONS)."""
    module, _, name = SECTIONS[section].partition(":")
    cls = getattr(importlib.import_module(module), name)
    return [f.name for f in dataclasses.fields(cls)]


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
        valid = section_keys(section.strip())
        if key not in valid:
            raise CurateError(f"--set {item!r}: [{section.strip()}] has unknown option(s) {key}; "
                              f"valid: {', '.join(valid)}")


def stage_config(
    cls: type[T],
    section: str,
    config_file: Path | None,
    overrides: Iterable[str] = (),
    flags: Mapping[str, Any] | None = None,
) -> T:
    """The typed options of one stage: defaults < curate.toml < --set < flags (None = unset)."""
    overrides = list(overrides)
    data = load_toml(config_file) if config_file else {}
    data = apply_overrides(data, overrides)
    check_names(data, overrides, f"{config_file.name if config_file else CONFIG_NAME} or --set")
    table = data.get(section, {})
    if not isinstance(table, dict):
        raise CurateError(f"{section} in {config_file} must be a table ([{section}])")
    given = {k: v for k, v in (flags or {}).items() if v is not None}
    return build(cls, section, {**table, **given}, flags=given)
