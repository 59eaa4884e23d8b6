"""Settings tables checked by msgspec against a dataclass's annotated fields, refused in one line naming the key.

The speech settings, the training recipe's sections and a checkpoint's model config are dataclasses whose field
annotations state every rule a type can (``Annotated[int, msgspec.Meta(ge=1)]``, ``Literal[...]``);
:func:`checked` converts a table of values against them. Rules across fields stay with each dataclass.

Torch-free and part of the core: the light agent reads its speech settings through it.
"""
from __future__ import annotations

import dataclasses
import functools
import re
import reprlib
import types
import typing
from typing import Annotated, Any, Literal, Union

import msgspec

# A value is quoted in a refusal; a checkpoint's nested tables would not fit on one line.
_quote = reprlib.Repr()
_quote.maxstring = _quote.maxother = 80
_quote.maxlist = _quote.maxdict = 6

_PLURALS = {int: "integers", float: "numbers", str: "strings", bool: "true/false values"}


class SettingError(ValueError):
    """One refused key: `reason` completes "<key> ..."; `unknown` when the key is no setting of the table."""

    def __init__(self, key: str, reason: str = "", unknown: bool = False) -> None:
        super().__init__(f"unknown key {key!r}" if unknown else f"{key} {reason}")
        self.key, self.reason, self.unknown = key, reason, unknown


def checked(values: dict[str, Any], kind: type) -> dict[str, Any]:
    """The given `values` (any of dataclass `kind`'s fields) as their annotated types: a whole number given
    for a float field becomes a float, nothing else is coerced. SettingError on the first key that breaks a rule."""
    try:
        table = msgspec.convert(values, _table_type(kind))
    except msgspec.ValidationError as error:
        raise _refusal(str(error), values, kind) from None
    return {key: value for key, value in msgspec.structs.asdict(table).items() if value is not msgspec.UNSET}


def expectation(hint: Any) -> str:
    """What a value of this annotation is, as the end of "must be ...": "an integer >= 1", "one of a, b"."""
    metas: list[msgspec.Meta] = []
    if typing.get_origin(hint) is Annotated:
        hint, *extras = typing.get_args(hint)
        metas = [extra for extra in extras if isinstance(extra, msgspec.Meta)]
    described = [meta.description for meta in metas if meta.description]
    if described:
        return described[0]
    bounds = "".join(_bounds(meta) for meta in metas)
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is bool:
        return "true or false"
    if hint is int:
        return "an integer" + bounds
    if hint is float:
        return "a number" + bounds
    if hint is str:
        return "a string"
    if origin is Literal:
        return "one of " + ", ".join(str(choice) for choice in args)
    if origin in (Union, types.UnionType):
        choices = " or ".join(expectation(arg) for arg in args if arg is not type(None))
        return choices + (" or none" if type(None) in args else "")
    if origin is list:
        return "a list" + (f" of {_PLURALS[args[0]]}" if args and args[0] in _PLURALS else "")
    if origin is dict:
        return "a table" + (f" of {_PLURALS[args[1]]}" if len(args) == 2 and args[1] in _PLURALS else "")
    return f"a {getattr(hint, '__name__', hint)}"


@functools.cache
def _table_type(kind: type) -> type:
    # A struct with the dataclass's fields, each optional: a table names only the keys it sets.
    hints = typing.get_type_hints(kind, include_extras=True)
    fields = [(field.name, hints[field.name], msgspec.UNSET) for field in dataclasses.fields(kind)]
    return msgspec.defstruct(f"{kind.__name__}Table", fields, forbid_unknown_fields=True)


def _refusal(message: str, values: dict[str, Any], kind: type) -> ValueError:
    unknown = re.match(r"Object contains unknown field `(.+)`", message)
    if unknown:
        return SettingError(unknown[1], unknown=True)
    located = re.search(r" - at `\$\.(\w+)", message)
    if not located or not isinstance(values, dict) or located[1] not in values:
        return ValueError(message)
    key = located[1]
    value = values[key]
    reason = f"must be {expectation(typing.get_type_hints(kind, include_extras=True)[key])}, got {_quote.repr(value)}"
    if "`, got `" in message:  # the wrong kind of value, not one out of range
        reason += f" ({type(value).__name__})"
    return SettingError(key, reason)


def _bounds(meta: msgspec.Meta) -> str:
    lower = ("[", meta.ge) if meta.ge is not None else ("(", meta.gt) if meta.gt is not None else None
    upper = (meta.le, "]") if meta.le is not None else (meta.lt, ")") if meta.lt is not None else None
    if lower and upper:
        return f" in {lower[0]}{lower[1]:g}, {upper[0]:g}{upper[1]}"
    if lower:
        return f" {'>=' if lower[0] == '[' else '>'} {lower[1]:g}"
    if upper:
        return f" {'<=' if upper[1] == ']' else '<'} {upper[0]:g}"
    return ""
