"""Plugins: methods and toys registered from outside the package.

Three ways in, all ending in the same registry (``decompbench.registry``):

* installed packages that declare an entry point in the group ``decompbench.plugins``
  (its value a module, or ``module:function`` to call once imported); loaded with the
  built-ins, so every command and every worker sees them;
* ``--plugin MODULE`` on the command line (repeatable): a dotted module name, found on
  ``sys.path`` or in the current directory, or a path to a ``.py`` file;
* ``plugins: [MODULE, ...]`` in a suite file (file paths relative to the suite file).

Importing a plugin runs its ``@register_method`` / ``@register_toy`` decorators. Every entry
it adds is then checked against the protocol (a ``Decomposition`` or ``Toy`` subclass with
a ``Params`` model and every abstract method defined, a valid ``access``). A plugin that
fails to import, takes a registered name or breaks the protocol is a one-line
``UserError`` and its entries are removed again.

Workers (``--jobs N`` processes, Ray tasks) get the list of loaded plugins as ``Plugin``
records (module name and the ``sys.path`` entry it was found under) and import them the
same way before running a task (``activate``), so plugin classes never travel by pickle.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from importlib.metadata import entry_points
from pathlib import Path
from types import ModuleType
from typing import Any

from decompbench.errors import UserError

GROUP = "decompbench.plugins"
ACCESS = ("activation_only", "downstream_aware")


@dataclass(frozen=True)
class Plugin:
    """A loaded plugin module and the ``sys.path`` entry it was imported from."""

    module: str
    path: str | None = None


LOADED: dict[str, Plugin] = {}  # module name -> plugin, in load order
_entry_points_state = {"loaded": False}


def loaded() -> tuple[Plugin, ...]:
    """Every plugin loaded in this process (entry points included)."""
    return tuple(LOADED.values())


def provides(cls: type) -> bool:
    """Whether ``cls`` comes from a loaded plugin module (or a submodule of one)."""
    mod = cls.__module__
    return any(mod == p or mod.startswith(p + ".") for p in LOADED)


# --- checking what a plugin registered ------------------------------------------------------


def _abstract(cls: type) -> list[str]:
    return sorted(getattr(cls, "__abstractmethods__", ()) or ())


def class_problem(cls: Any, base: type, base_name: str) -> str | None:
    """What every plugin class needs: a concrete subclass of ``base`` with a ``Params``."""
    from decompbench.config import StrictModel

    if not isinstance(cls, type) or not issubclass(cls, base):
        return f"is not a subclass of decompbench.{base_name}"
    missing = _abstract(cls)
    if missing:
        return f"does not define {', '.join(missing)}"
    params = getattr(cls, "Params", None)
    if not isinstance(params, type) or not issubclass(params, StrictModel):
        return "has no Params class (a decompbench.StrictModel subclass)"
    return None


def method_problem(cls: Any) -> str | None:
    """Why ``cls`` cannot be a method, or ``None``."""
    from decompbench.methods.base import Decomposition

    problem = class_problem(cls, Decomposition, "Decomposition")
    if problem is not None:
        return problem
    if getattr(cls, "access", None) not in ACCESS:
        return f"has access {getattr(cls, 'access', None)!r} (allowed: {', '.join(ACCESS)})"
    if not isinstance(getattr(cls, "directions_kind", None), str):
        return "has a directions_kind that is not a string"
    return None


def toy_problem(cls: Any) -> str | None:
    """Why ``cls`` cannot be a toy, or ``None``."""
    from decompbench.toys.base import Toy

    return class_problem(cls, Toy, "Toy")


def check_added(label: str, added: dict[str, dict[str, Any]]) -> None:
    """Raise a one-line error naming the first registered entry that breaks the protocol."""
    for kind, entries in added.items():
        check = method_problem if kind == "method" else toy_problem
        for name, cls in entries.items():
            why = check(cls)
            if why is not None:
                qual = getattr(cls, "__qualname__", repr(cls))
                raise UserError(f"plugin {label}: {kind} '{name}' ({qual}) {why}")


@contextmanager
def checked(label: str) -> Iterator[None]:
    """Run an import; on any failure or protocol breach undo its registrations, one line."""
    from decompbench import registry

    tables: dict[str, dict[str, Any]] = {"method": registry.METHODS, "toy": registry.TOYS}
    before = {k: dict(t) for k, t in tables.items()}
    try:
        yield
        added = {k: {n: c for n, c in t.items() if n not in before[k]} for k, t in tables.items()}
        check_added(label, added)
    except BaseException as err:
        for kind, table in tables.items():
            for name in set(table) - set(before[kind]):
                del table[name]
        if isinstance(err, UserError | KeyboardInterrupt | SystemExit):
            raise
        raise UserError(f"plugin {label}: {why_failed(err)}") from None


def why_failed(err: BaseException) -> str:
    from decompbench.registry import NameTaken

    if isinstance(err, NameTaken):
        return str(err)
    if isinstance(err, ModuleNotFoundError):
        return f"cannot import it: no module named {err.name!r}"
    text = " ".join(f"{type(err).__name__}: {err}".split())
    return f"failed while importing: {text}"


# --- finding and importing ------------------------------------------------------------------


def root_of(module: ModuleType) -> str | None:
    """The ``sys.path`` entry ``module`` was imported from (``None`` if it has no file)."""
    file = getattr(module, "__file__", None)
    if not file:
        return None
    depth = len(module.__name__.split("."))
    path = Path(file).resolve()
    up = depth if path.name == "__init__.py" else depth - 1
    return str(path.parents[up])


def add_path(entry: str) -> None:
    if entry not in sys.path:
        sys.path.append(entry)
        importlib.invalidate_caches()


def from_file(path: Path, label: str) -> Plugin:
    """Import the ``.py`` file at ``path`` as a module named after its stem."""
    if not path.is_file():
        raise UserError(f"plugin {label}: no such file")
    name, root = path.stem, str(path.resolve().parent)
    if not name.isidentifier():
        raise UserError(f"plugin {label}: '{name}' is not a valid module name")
    have = sys.modules.get(name)
    if have is not None and root_of(have) != root:
        raise UserError(f"plugin {label}: a module named '{name}' is already imported")
    add_path(root)
    return from_module(name, label)


def from_module(name: str, label: str) -> Plugin:
    """Import the dotted module ``name`` (also looking in the current directory)."""
    top = name.split(".")[0]
    if not all(part.isidentifier() for part in name.split(".")):
        raise UserError(f"plugin {label}: not a module name or a .py file")
    if importlib.util.find_spec(top) is None and (
        Path(top + ".py").is_file() or Path(top, "__init__.py").is_file()
    ):
        add_path(str(Path.cwd()))
    try:
        with checked(label):
            module = importlib.import_module(name)
    except UserError:
        sys.modules.pop(name, None)  # a second attempt imports (and checks) it again
        raise
    plugin = Plugin(name, root_of(module))
    LOADED.setdefault(name, plugin)
    return plugin


def load_plugin(spec: str, base: Path | None = None) -> Plugin:
    """Load one plugin given as a module name or a ``.py`` path (relative to ``base``)."""
    from decompbench.registry import all_toys

    all_toys()  # built-ins and entry points first: a plugin may not take their names
    label = f"'{spec}'"
    if spec.endswith(".py") or "/" in spec or "\\" in spec:
        path = Path(spec).expanduser()
        if base is not None and not path.is_absolute():
            path = base / path
        return from_file(path, label)
    return from_module(spec, label)


def load_plugins(specs: Iterable[str], base: Path | None = None) -> list[Plugin]:
    return [load_plugin(s, base) for s in specs]


def load_entry_points() -> None:
    """Import every installed ``decompbench.plugins`` entry point (once per process)."""
    if _entry_points_state["loaded"]:
        return
    _entry_points_state["loaded"] = True
    for ep in sorted(entry_points(group=GROUP), key=lambda e: e.name):
        label = f"'{ep.name}' (entry point {ep.value})"
        with checked(label):
            obj = ep.load()
            if not isinstance(obj, ModuleType) and callable(obj):
                obj()
        module = sys.modules.get(ep.module)
        LOADED.setdefault(ep.module, Plugin(ep.module, root_of(module) if module else None))


def activate(plugins: Iterable[Plugin]) -> None:
    """In a worker: make the parent's plugins importable here and import them."""
    for p in plugins:
        if p.module in sys.modules and p.module in LOADED:
            continue
        if p.path is not None:
            add_path(p.path)
        from_module(p.module, f"'{p.module}'")
