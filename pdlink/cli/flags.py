"""Flags from config dataclasses: each flag's type and default come from the field, once.

    add_flags(p, CloudConfig, ["max_prompt_tokens", "ttft_budget_s"])   # --max-prompt-tokens, --ttft-budget-s
    CloudConfig(**flag_values(args, ["max_prompt_tokens", "ttft_budget_s"]))
"""

from __future__ import annotations

import argparse
import dataclasses
import typing
from typing import Iterable


def _fields(config_cls) -> dict[str, object]:
    """Field name -> default (``dataclasses.MISSING`` when none), for a dataclass or a msgspec Struct."""
    if dataclasses.is_dataclass(config_cls):
        out = {}
        for f in dataclasses.fields(config_cls):
            if f.default is not dataclasses.MISSING:
                out[f.name] = f.default
            elif f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
                out[f.name] = f.default_factory()  # type: ignore[misc]
            else:
                out[f.name] = dataclasses.MISSING
        return out
    import msgspec

    return {f.name: (dataclasses.MISSING if f.default is msgspec.NODEFAULT else f.default)
            for f in msgspec.structs.fields(config_cls)}


def _flag_type(annotation) -> tuple[type, type | None]:
    """(kind, element type): int / float / str / bool out of ``int``, ``int | None``..., or (tuple, element)
    for ``tuple[int, ...]``."""
    args = [a for a in typing.get_args(annotation) if a is not type(None)] or [annotation]
    tup = next((a for a in (annotation, *args) if typing.get_origin(a) is tuple), None)
    if tup is not None:  # before the scalars: tuple[int, ...]'s own args hold int
        return tuple, typing.get_args(tup)[0]
    for candidate in (bool, int, float, str):
        if candidate in args:
            return candidate, None
    raise TypeError(f"no flag for a field of type {annotation!r}")


def add_flags(parser: argparse.ArgumentParser, config_cls, names: Iterable[str], *, prefix: str = "",
              defaults: dict | None = None, helps: dict | None = None, rename: dict | None = None) -> None:
    """Add ``--{prefix}{name}`` for each field ``name`` of ``config_cls``, typed and defaulted by the field
    (``defaults`` overrides a default for this command; ``rename`` maps a field to another flag name;
    tuple fields take several values: ``--lengths 128 512`` for numbers, a repeated ``--stop A --stop B`` for
    strings; bool fields with default False become switches)."""
    hints, fields = typing.get_type_hints(config_cls), _fields(config_cls)
    defaults, helps, rename = defaults or {}, helps or {}, rename or {}
    for name in names:
        flag = "--" + prefix + rename.get(name, name).replace("_", "-")
        default = defaults.get(name, fields[name])
        kind, element = _flag_type(hints[name])
        extra = {"dest": name, "help": helps.get(name)}
        if kind is bool and default is False:
            parser.add_argument(flag, action="store_true", **extra)
        elif kind is tuple and element is str:
            parser.add_argument(flag, action="append", default=list(default or ()), **extra)
        elif kind is tuple:
            parser.add_argument(flag, nargs="+", type=element, default=list(default or ()), **extra)
        elif default is dataclasses.MISSING:
            parser.add_argument(flag, type=kind, required=True, **extra)
        else:
            parser.add_argument(flag, type=kind, default=default, **extra)


def flag_values(args: argparse.Namespace, names: Iterable[str]) -> dict:
    """The parsed values of the fields ``names`` (repeatable flags as tuples), ready for the config."""
    return {n: tuple(v) if isinstance(v := getattr(args, n), list) else v for n in names}
