"""Frozen, validated configuration models and the one-line rendering of their errors."""

from __future__ import annotations

from typing import Any, TypeVar

from pydantic import BaseModel, ConfigDict, ValidationError

from decompbench.errors import UserError

M = TypeVar("M", bound="StrictModel")


class StrictModel(BaseModel):
    """Base for every config: unknown keys are rejected, instances are immutable."""

    model_config = ConfigDict(extra="forbid", frozen=True)


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
