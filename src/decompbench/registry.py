"""The one place that maps names to toys and methods.

The CLI, the suite loader and the parametrised tests all read these two tables.
Register with the decorators; importing ``decompbench.toys`` / ``decompbench.methods``
fills them.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, TypeVar

from decompbench.errors import UserError

if TYPE_CHECKING:
    from decompbench.methods.base import Decomposition
    from decompbench.toys.base import Toy

T = TypeVar("T")


class NameTaken(ValueError):
    """A second class registered under a name already in the table."""


TOYS: dict[str, type[Toy]] = {}
METHODS: dict[str, type[Decomposition]] = {}


def _register(
    table: dict[str, type[T]], kind: str
) -> Callable[[str], Callable[[type[T]], type[T]]]:
    def by_name(name: str) -> Callable[[type[T]], type[T]]:
        def add(cls: type[T]) -> type[T]:
            if name in table:
                have = table[name]
                raise NameTaken(
                    f"{kind} name '{name}' is already taken "
                    f"(by {have.__module__}.{have.__qualname__})"
                )
            table[name] = cls
            cls.name = name  # type: ignore[attr-defined]
            return cls

        return add

    return by_name


register_toy = _register(TOYS, "toy")
register_method = _register(METHODS, "method")


def _load_builtins() -> None:
    import decompbench.methods
    import decompbench.toys  # noqa: F401
    from decompbench.plugins import load_entry_points

    load_entry_points()  # installed plugins (entry point group ``decompbench.plugins``)


def get_toy(name: str) -> type[Toy]:
    _load_builtins()
    if name not in TOYS:
        raise UserError(f"unknown toy '{name}' (known: {', '.join(sorted(TOYS))})")
    return TOYS[name]


def get_method(name: str) -> type[Decomposition]:
    _load_builtins()
    if name not in METHODS:
        raise UserError(f"unknown method '{name}' (known: {', '.join(sorted(METHODS))})")
    return METHODS[name]


def all_toys() -> dict[str, type[Toy]]:
    _load_builtins()
    return dict(sorted(TOYS.items()))


def all_methods() -> dict[str, type[Decomposition]]:
    _load_builtins()
    return dict(sorted(METHODS.items()))
