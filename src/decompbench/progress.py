"""Progress reporting that long loops use without being handed a progress object.

The runner opens a ``rich`` progress display and installs a reporter; the training loop
(and anything else slow) calls ``report_steps``. With no reporter installed (tests,
library use, ``--quiet``) the calls do nothing.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Protocol


class Reporter(Protocol):
    def start(self, label: str, total: int) -> None: ...
    def advance(self, n: int, info: str = "") -> None: ...
    def finish(self) -> None: ...


_current: ContextVar[Reporter | None] = ContextVar("decompbench_reporter", default=None)


@contextmanager
def reporting(reporter: Reporter | None) -> Iterator[None]:
    token = _current.set(reporter)
    try:
        yield
    finally:
        _current.reset(token)


def reporter() -> Reporter | None:
    return _current.get()
