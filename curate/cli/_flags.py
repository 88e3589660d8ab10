"""Command-line flags made from a stage's config dataclass, so an option is declared once.

`@config_flags(TagConfig, "threshold", "rating", ...)` adds `--threshold`, `--rating`, ... to a
command: the type from the field's hint (a Literal becomes a choice, a bool a `--x/--no-x` pair,
a tuple of strings a comma-separated list), the help from `option(help=...)` with the default
that the dataclass declares, and None as the value when the flag is not given, so that
curate.toml and `--set` win over a default. The command receives them as one dict, `flags`,
keyed by field name, ready for `curate.config.stage_config`.
"""

from __future__ import annotations

import dataclasses
import functools
import types
import typing
from collections.abc import Callable
from typing import Any, TypeVar

import click

from curate.config import default_text, help_of, toml_value

F = TypeVar("F", bound=Callable[..., Any])
PREFIX = "config__"  # the keyword click passes a config flag under (never clashes with a command's own)


@dataclasses.dataclass(frozen=True)
class Flag:
    """A config field exposed as a flag other than the plain `--field-name`.

    `decls`: the option names (e.g. `("--multi-character",)`); with `sets`, a one-way switch that
    sets the field to that value. `multiple`: repeatable instead of a comma-separated list.
    `type`: a click type (e.g. a `click.Path` that must exist); `choices`: for a list of names
    that is not a Literal; `convert`: applied to the given value (e.g. "none" -> no checks);
    `note`: said after the field's help; `metavar`: the value's name in --help.
    """

    field: str
    decls: tuple[str, ...] = ()
    sets: Any = None
    multiple: bool = False
    type: click.ParamType | None = None
    choices: tuple[str, ...] = ()
    convert: Callable[[Any], Any] | None = None
    note: str = ""  # what only the flag form needs saying ("--skip none runs them all")
    metavar: str | None = None


class ConfigOption(click.Option):
    """A flag made from a config field (`config_flag` says how); tests check every one."""

    def __init__(self, *args: Any, config_flag: Flag, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.config_flag = config_flag
        self.config_field = config_flag.field


def flag_help(item: dataclasses.Field[Any], spec: Flag) -> str:
    """--help for a config flag: the field's help and its default, as the template shows them."""
    text = " ".join(part for part in (help_of(item), spec.note,
                                      "Repeatable." if spec.multiple else "") if part)
    if spec.sets is not None:
        return f"{text} (sets {item.name} = {toml_value(spec.sets)}; default: {default_text(item)})"
    return f"{text} (default: {default_text(item)})"


def _plain(hint: Any) -> Any:
    """The hint without `| None`."""
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        rest = [h for h in typing.get_args(hint) if h is not type(None)]
        return rest[0] if len(rest) == 1 else hint
    return hint


def _comma_list(value: str | None) -> tuple[str, ...] | None:
    return None if value is None else tuple(t.strip() for t in value.split(",") if t.strip())


def _option_kwargs(item: dataclasses.Field[Any], hint: Any, spec: Flag) -> tuple[dict[str, Any], Any]:
    """click.option's keywords for one field, and the converter of its given value."""
    base = typing.get_origin(hint) or hint
    if spec.sets is not None:
        return {"flag_value": spec.sets, "default": None}, None
    if spec.choices:
        return {"type": click.Choice(spec.choices), "multiple": spec.multiple}, None
    if base is typing.Literal:
        values = {str(v): v for v in typing.get_args(hint)}
        return {"type": click.Choice(list(values))}, lambda text: values[text]
    if base is tuple:
        if spec.multiple:
            return {"multiple": True, "type": spec.type}, None
        return {"metavar": "A,B,..."}, _comma_list
    if base in (dict, list):
        raise TypeError(f"{item.name}: a {base.__name__} option has no flag; it is set with --set")
    simple = {int: click.INT, float: click.FLOAT, str: click.STRING, bool: click.BOOL}
    return {"type": spec.type or simple[base]}, None


def _decls(item: dataclasses.Field[Any], hint: Any, spec: Flag) -> list[str]:
    if spec.decls:
        return list(spec.decls)
    name = "--" + item.name.replace("_", "-")
    return [f"{name}/--no-{name[2:]}"] if hint is bool and spec.sets is None else [name]


def config_flags(cls: type, *specs: str | Flag) -> Callable[[F], F]:
    """Add a flag per named field of `cls` (in this order); the command gets them as `flags`."""
    fields = {f.name: f for f in dataclasses.fields(cls)}
    hints = typing.get_type_hints(cls)
    wanted = [spec if isinstance(spec, Flag) else Flag(spec) for spec in specs]
    converters: dict[str, tuple[Flag, Callable[[Any], Any] | None]] = {}  # in the order given

    def decorate(fn: F) -> F:
        @functools.wraps(fn)
        def command(*args: Any, **kwargs: Any) -> Any:
            flags: dict[str, Any] = kwargs.pop("flags", {})  # from a second config_flags above
            given: dict[str, str] = {}  # field -> the flag that set it, as typed
            for dest, (spec, convert) in converters.items():
                name, raw = spec.field, kwargs.pop(dest)
                value = None if raw == () else raw  # () = a repeatable flag not given
                if value is not None and convert is not None:
                    value = convert(value)
                if value is None:
                    flags.setdefault(name, None)
                    continue
                typed = spec.decls[0] if spec.sets is not None else f"--{name.replace('_', '-')} {raw}"
                if flags.get(name) not in (None, value):
                    raise click.UsageError(f"{given[name]} and {typed} disagree: give one of them")
                flags[name], given[name] = value, typed
            return fn(*args, flags=flags, **kwargs)

        for i, spec in enumerate(wanted):
            converters[f"{PREFIX}{i}_{spec.field}"] = (spec, None)
        for i, spec in reversed(list(enumerate(wanted))):
            item = fields[spec.field]
            hint = _plain(hints[spec.field])
            kwargs, convert = _option_kwargs(item, hint, spec)
            dest = f"{PREFIX}{i}_{spec.field}"
            converters[dest] = (spec, spec.convert or convert)
            kwargs.setdefault("default", None)
            if spec.metavar:
                kwargs["metavar"] = spec.metavar
            if hint is bool and spec.sets is None:
                kwargs.pop("type", None)
            click.option(*_decls(item, hint, spec), dest, cls=ConfigOption, config_flag=spec,
                         help=flag_help(item, spec), **kwargs)(command)
        return command  # type: ignore[return-value]

    return decorate
