"""Where a suite's runs execute: in this process, in a pool of local processes, or on Ray.

All three sit behind one small interface: ``Executor.imap_unordered(fn, tasks)`` calls the
picklable top-level function ``fn`` on every task and yields ``Outcome(index, value,
error)`` as each call finishes, in completion order. The caller (the runner) owns every
side effect that must happen once: appending records, writing artefacts, the progress bar.
Workers only compute and return.

* ``serial``: in this process, in task order (``--jobs 1``). An ``Exception`` from ``fn``
  becomes an outcome with ``error``; ``KeyboardInterrupt`` propagates.
* ``process``: ``--jobs N`` spawned processes (``spawn``: no forked torch state). At most N
  tasks are in flight, so a dead worker (segfault, OOM kill) is traced to the tasks it may
  have run: those are run again one at a time in a fresh single-worker pool, and a task
  that kills its worker while alone comes back with an error; the others go on. Workers
  ignore SIGINT (the parent handles Ctrl-C and kills them) and exit when the parent dies.
* ``ray``: Ray tasks (``--executor ray [--address ADDR]``), at most ``jobs`` in flight (by
  default the cluster's CPUs); a task whose worker dies comes back with an error (no
  retries). Without an address a local Ray instance is started (and stopped afterwards)
  unless one is already connected or ``RAY_ADDRESS`` names one.

``WorkerSetup`` makes a worker look like the parent where it matters: torch threads and
the registry entries the tasks use (so toys and methods registered at run time, e.g. by a
test, are found; their classes travel by reference and must be importable).
"""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Callable, Generator, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from multiprocessing import get_context
from typing import Any, Generic, Literal, Protocol, TypeVar

from decompbench import registry
from decompbench.errors import UserError

T = TypeVar("T")
R = TypeVar("R")

Kind = Literal["local", "ray"]
WORKER_DIED = "WorkerDied: the worker process running it exited abruptly"
PARENT_POLL_S = 1.0


def describe(err: BaseException) -> str:
    text = f"{type(err).__name__}: {err}" if str(err) else type(err).__name__
    return " ".join(text.split())


@dataclass(frozen=True)
class WorkerSetup:
    """What every worker applies before running a task (idempotent, cheap)."""

    threads: int = 1
    toys: dict[str, type] = field(default_factory=dict)
    methods: dict[str, type] = field(default_factory=dict)
    plugins: tuple[Any, ...] = ()  # decompbench.plugins.Plugin records, imported by name

    def apply(self) -> None:
        import torch  # here: workers that draw report figures never import it

        if torch.get_num_threads() != self.threads:
            torch.set_num_threads(self.threads)
        if self.plugins:
            from decompbench.plugins import activate

            activate(self.plugins)
        if self.toys or self.methods:
            registry.all_toys()  # load the built-ins first
        for table, extra in ((registry.TOYS, self.toys), (registry.METHODS, self.methods)):
            for name, cls in extra.items():
                table.setdefault(name, cls)


@dataclass(frozen=True)
class Outcome(Generic[R]):
    """Task ``index`` finished with ``value``, or failed with ``error`` (``Type: message``)."""

    index: int
    value: R | None = None
    error: str | None = None


Outcomes = Generator[Outcome[R], None, None]


class Executor(Protocol):
    jobs: int

    def __enter__(self) -> Executor: ...
    def __exit__(self, *exc: object) -> None: ...
    def imap_unordered(self, fn: Callable[[T], R], tasks: Sequence[T]) -> Outcomes[R]: ...


def call(setup: WorkerSetup, fn: Callable[[T], R], task: T) -> R:
    """What a worker runs: set up, then ``fn(task)``."""
    setup.apply()
    return fn(task)


# --- in this process -------------------------------------------------------------------


class Serial:
    """Runs every task here, in order."""

    jobs = 1

    def __init__(self, setup: WorkerSetup) -> None:
        self.setup = setup

    def __enter__(self) -> Serial:
        return self

    def __exit__(self, *exc: object) -> None:
        pass

    def imap_unordered(self, fn: Callable[[T], R], tasks: Sequence[T]) -> Outcomes[R]:
        for i, task in enumerate(tasks):
            try:
                value = fn(task)
            except Exception as err:
                yield Outcome(i, error=describe(err))
            else:
                yield Outcome(i, value)


# --- local processes ---------------------------------------------------------------------


def watch_parent(parent: int) -> None:
    """Exit this worker soon after its parent is gone (e.g. SIGKILLed)."""
    while os.getppid() == parent:
        time.sleep(PARENT_POLL_S)
    os._exit(1)


def init_worker(setup: WorkerSetup, parent: int) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle
    threading.Thread(target=watch_parent, args=(parent,), daemon=True).start()
    setup.apply()


def kill_pool(pool: ProcessPoolExecutor) -> None:
    """Stop a pool now: drop queued tasks and terminate workers mid-task."""
    procs = list((getattr(pool, "_processes", None) or {}).values())  # no public API in 3.11
    pool.shutdown(wait=False, cancel_futures=True)
    for p in procs:
        p.terminate()
    for p in procs:
        p.join(timeout=5)


class ProcessPool:
    """``jobs`` spawned worker processes, at most ``jobs`` tasks in flight."""

    def __init__(self, jobs: int, setup: WorkerSetup) -> None:
        self.jobs, self.setup = jobs, setup

    def __enter__(self) -> ProcessPool:
        return self

    def __exit__(self, *exc: object) -> None:
        pass

    def pool(self, workers: int) -> ProcessPoolExecutor:
        return ProcessPoolExecutor(
            workers, mp_context=get_context("spawn"), initializer=init_worker,
            initargs=(self.setup, os.getpid()),
        )  # fmt: skip

    def run_batch(
        self, fn: Callable[[T], R], tasks: Sequence[T], todo: list[int], workers: int
    ) -> Generator[Outcome[R], None, list[int]]:
        """Run (and pop) ``todo`` in a fresh pool; yield outcomes as they come. Returns the
        tasks in flight when a worker died (their outcomes unknown), else ``[]``."""
        pool = self.pool(workers)
        running: dict[Future[R], int] = {}
        finished = False
        try:
            while todo or running:
                while todo and len(running) < workers:
                    i = todo.pop(0)
                    running[pool.submit(fn, tasks[i])] = i
                done, _ = wait(running, return_when=FIRST_COMPLETED)
                broken = []
                for fut in done:
                    i = running.pop(fut)
                    if isinstance(fut.exception(), BrokenProcessPool):
                        broken.append(i)
                    else:
                        yield outcome(i, fut)
                if broken:
                    return broken + list(running.values())
            finished = True
        finally:
            if finished:
                pool.shutdown(wait=True)
            else:  # interrupted, failed or broken: do not wait for tasks in flight
                kill_pool(pool)
        return []

    def imap_unordered(self, fn: Callable[[T], R], tasks: Sequence[T]) -> Outcomes[R]:
        todo = list(range(len(tasks)))
        suspects: list[int] = []  # in flight when a worker died: rerun one at a time
        while todo or suspects:
            if suspects:
                dead = yield from self.run_batch(fn, tasks, suspects, 1)
            else:
                dead = yield from self.run_batch(fn, tasks, todo, self.jobs)
            if len(dead) == 1:  # it ran alone: it killed its worker
                yield Outcome(dead[0], error=WORKER_DIED)
            else:
                suspects += dead


def outcome(i: int, fut: Future[R]) -> Outcome[R]:
    err = fut.exception()
    return Outcome(i, error=describe(err)) if err is not None else Outcome(i, fut.result())


# --- Ray ---------------------------------------------------------------------------------


def import_ray() -> Any:
    try:
        import ray
    except ImportError:
        raise UserError("--executor ray needs Ray: pip install ray") from None
    return ray


class RayPool:
    """Ray tasks on the cluster at ``address`` (or a local instance started here)."""

    def __init__(self, jobs: int | None, setup: WorkerSetup, address: str | None) -> None:
        self.jobs, self.setup, self.address = jobs or 0, setup, address
        self.started = False

    def __enter__(self) -> RayPool:
        ray = import_ray()
        if not ray.is_initialized():
            local = self.address in (None, "local") and not os.environ.get("RAY_ADDRESS")
            extra = {"num_cpus": self.jobs} if local and self.jobs else {}
            try:
                ray.init(address=self.address, include_dashboard=False, log_to_driver=False,
                         configure_logging=False, **extra)  # fmt: skip
            except (ConnectionError, ValueError, RuntimeError) as err:
                raise UserError(f"cannot start or reach Ray at {self.address}: {err}") from None
            self.started = True
        if not self.jobs:
            self.jobs = max(1, int(ray.cluster_resources().get("CPU", 1)))
        return self

    def __exit__(self, *exc: object) -> None:
        if self.started:
            import_ray().shutdown()

    def imap_unordered(self, fn: Callable[[T], R], tasks: Sequence[T]) -> Outcomes[R]:
        ray = import_ray()
        remote = ray.remote(num_cpus=1, max_retries=0)(call)
        setup = ray.put(self.setup)
        todo = list(range(len(tasks)))
        running: dict[Any, int] = {}
        try:
            while todo or running:
                while todo and len(running) < self.jobs:
                    i = todo.pop(0)
                    running[remote.remote(setup, fn, tasks[i])] = i
                done, _ = ray.wait(list(running), num_returns=1)
                for ref in done:
                    i = running.pop(ref)
                    yield self.collect(ray, ref, i)
        finally:
            for ref in running:
                ray.cancel(ref, force=True)

    @staticmethod
    def collect(ray: Any, ref: Any, i: int) -> Outcome[Any]:
        try:
            return Outcome(i, ray.get(ref))
        except ray.exceptions.RayTaskError as err:  # fn raised: report its own exception
            cause = err.cause if isinstance(err.cause, BaseException) else err
            return Outcome(i, error=describe(cause))
        except ray.exceptions.RayError as err:  # worker died, task lost, ...
            return Outcome(i, error=f"{WORKER_DIED} ({type(err).__name__})")


def make_executor(
    kind: Kind, jobs: int | None, setup: WorkerSetup, address: str | None = None
) -> Executor:
    """The executor for ``kind``; a local one with ``jobs`` of 1 (or ``None``) is serial."""
    if kind == "ray":
        return RayPool(jobs, setup, address)
    if address is not None:
        raise UserError("--address needs --executor ray")
    if jobs is None or jobs <= 1:
        return Serial(setup)
    return ProcessPool(jobs, setup)


def usable_cores() -> int:
    """CPU cores this process may run on (its affinity mask where the OS has one)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - macOS, Windows
        return max(1, os.cpu_count() or 1)
