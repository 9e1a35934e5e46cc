"""`decompbench params NAME`: every parameter of a method or toy, from its ``Params`` model.

One line per field: name, type, default, bounds and description, all read from the pydantic
model (``Field(description=...)``, ``ge``/``gt``/``le``/``lt``, ``min_length``), so the
listing cannot drift from what the suite loader accepts.
"""

from __future__ import annotations

import json
import types
import typing
from typing import Any

import annotated_types as at
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined

from decompbench.errors import UserError
from decompbench.registry import all_methods, all_toys

BOUNDS = ((at.Ge, "ge", ">="), (at.Gt, "gt", ">"), (at.Le, "le", "<="), (at.Lt, "lt", "<"))


def type_name(tp: Any) -> str:
    """``int``, ``float | list[float]``, ``'a' | 'b'``, ``[float, float]`` for a pair."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is typing.Annotated:
        return type_name(args[0])
    if origin is typing.Literal:
        return " | ".join(repr(a) for a in args)
    if origin in (typing.Union, types.UnionType):
        return " | ".join(type_name(a) for a in args)
    if origin is tuple:
        return "[" + ", ".join(type_name(a) for a in args) + "]"
    if origin is list:
        return f"list[{type_name(args[0])}]"
    if tp is type(None):
        return "None"
    return getattr(tp, "__name__", str(tp))


def bounds(info: FieldInfo) -> str:
    parts = []
    for item in info.metadata:
        for kind, attr, sign in BOUNDS:
            if isinstance(item, kind):
                parts.append(f"{sign} {getattr(item, attr)}")
        if isinstance(item, at.MinLen):
            parts.append(f"len >= {item.min_length}")
    return ", ".join(parts) or "-"


def default(info: FieldInfo) -> str:
    if info.default_factory is not None:
        value = info.default_factory()  # type: ignore[call-arg]
    elif info.default is PydanticUndefined:
        return "(required)"
    else:
        value = info.default
    if isinstance(value, tuple):
        value = list(value)
    return value if isinstance(value, str) else json.dumps(value)


def rows(model: type[Any]) -> list[list[str]]:
    fields: dict[str, FieldInfo] = model.model_fields
    return [
        [name, type_name(info.annotation), default(info), bounds(info), info.description or ""]
        for name, info in fields.items()
    ]


def listing(title: str, model: type[Any]) -> str:
    """``title`` and an aligned table (never cut) of the model's fields."""
    table = [["name", "type", "default", "bounds", "description"], *rows(model)]
    widths = [max(len(r[i]) for r in table) for i in range(4)]
    lines = [title]
    for r in table:
        lines.append(
            "  " + "  ".join(c.ljust(w) for c, w in zip(r, widths, strict=False)) + "  " + r[4]
        )
    return "\n".join(line.rstrip() for line in lines)


def describe_params(name: str) -> str:
    """The parameter listing of method and/or toy ``name``."""
    out = []
    methods, toys = all_methods(), all_toys()
    if name in methods:
        m = methods[name]
        kind = "activation-only" if m.access == "activation_only" else "downstream-aware"
        out.append(listing(f"method {name} ({kind}): {m.summary}", m.Params))
    if name in toys:
        out.append(listing(f"toy {name}: {toys[name].summary}", toys[name].Params))
    if not out:
        known = ", ".join([*methods, *toys])
        raise UserError(f"unknown method or toy '{name}' (known: {known})")
    return "\n\n".join(out)
