"""Frozen, validated configuration models and the one-line rendering of their errors."""

from __future__ import annotations

from typing import Annotated, Any, TypeVar

from pydantic import BaseModel, BeforeValidator, ConfigDict, ValidationError

from decompbench.errors import UserError

M = TypeVar("M", bound="StrictModel")


class StrictModel(BaseModel):
    """Base for every config: unknown keys are rejected, instances are immutable, and
    types are strict (pydantic strict mode): no ``"16"``, ``true`` or ``16.0`` for an
    integer, no ``"1e-3"`` or ``true`` for a float. An integer is accepted for a float
    (``l1: 1`` means 1.0: every int is a valid float, nothing is lost)."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)

    @classmethod
    def __pydantic_init_subclass__(cls, **kwargs: Any) -> None:
        """A field redeclared only to change its default keeps its parent's description."""
        super().__pydantic_init_subclass__(**kwargs)
        for name, info in cls.model_fields.items():
            if info.description:
                continue
            for base in cls.__mro__[1:]:
                parent = getattr(base, "model_fields", {}).get(name)
                if parent is not None and parent.description:
                    info.description = parent.description
                    break


def _as_tuple(value: Any) -> Any:
    return tuple(value) if isinstance(value, list) else value


# A ``[lo, hi]`` pair: YAML and JSON give lists, strict mode would take only tuples.
FloatPair = Annotated[tuple[float, float], BeforeValidator(_as_tuple)]


def describe_validation_error(err: ValidationError, where: str) -> str:
    """One line naming the first offending key, its location and the source."""
    first = err.errors()[0]
    loc = ".".join(str(p) for p in first["loc"])
    if first["type"] == "extra_forbidden":
        return f"{where}: unknown key '{loc}'"
    msg = first["msg"].replace("\n", " ").removeprefix("Value error, ")
    return f"{where}: {loc}: {msg}" if loc else f"{where}: {msg}"


def validate(model: type[M], data: Any, where: str) -> M:
    """Validate ``data`` against ``model``; raise a one-line ``UserError`` naming ``where``."""
    if data is None:
        data = {}
    try:
        return model.model_validate(data)
    except ValidationError as err:
        raise UserError(describe_validation_error(err, where)) from None
