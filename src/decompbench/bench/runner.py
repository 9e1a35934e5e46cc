"""Run a validated suite: every toy x site x method x seed, one record each, resumably.

Reliability contract:

* Resume. Runs already recorded in ``DIR/results.jsonl`` (matched by ``run_id``, the
  content hash of their settings) are skipped; the rest run. If the directory holds a
  record that is *not* part of the suite (other toys, parameters, seeds or sample sizes,
  or a file from before run ids) the run is refused: pass ``force`` to start over. A suite
  that grew (more seeds, methods, toys) resumes into the old directory.
* Crash safety. Records are appended one fsync'ed line at a time; a torn last line left by
  a kill is cut before appending (see ``results``). One runner per directory (a lock).
* Guarded runs. Any ``Exception`` from building a toy, sampling a site, fitting a method
  or scoring it becomes a ``failed`` record (``"Type: message"``) and the suite goes on;
  so do non-finite or exploded directions, latents or reconstructions. KeyboardInterrupt
  and SystemExit propagate (the records written so far stay; rerun to resume).
* Parallel runs (``jobs``, ``executor``; see ``executors``). Runs are independent tasks
  computed by workers (local processes or Ray tasks) and returned; the runner alone appends
  records and writes artefacts, in completion order, so every guarantee above holds as in
  a serial run. Each worker keeps the last toys and site samples it built, so runs of one
  toy share them; a toy build is serialised by a file lock in the toy cache, so two
  workers never train the same cached toy at once. After a complete run the file is
  rewritten (atomically) in plan order, so its content does not depend on ``jobs``.
* Cost guard. Planned work (sum over runs of steps x batch_size x width, method defaults
  filled in) above ``MAX_WORK`` needs ``yes``; otherwise nothing is written.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import sys
import tempfile
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator
from contextlib import closing, contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, TypeVar

import torch
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from torch import Tensor

from decompbench import plugins
from decompbench.bench.artefacts import (
    ARTEFACTS,
    ArtefactData,
    run_artefacts,
    write_run_artefacts,
)
from decompbench.bench.evaluate import score
from decompbench.bench.executors import (
    Executor,
    Kind,
    Serial,
    WorkerSetup,
    make_executor,
    usable_cores,
)
from decompbench.bench.results import (
    RESULTS,
    SUITE_COPY,
    Record,
    Stored,
    append_record,
    drop_torn_tail,
    rewrite_records,
    scan_results,
    write_bytes_atomic,
    write_plan,
    write_text_atomic,
)
from decompbench.bench.suite import PlannedRun, Suite, load_suite, normalised, plan_runs, site_dim
from decompbench.errors import TrainingFailed, UserError
from decompbench.methods import batched
from decompbench.methods.base import Decomposition, build_method
from decompbench.progress import reporting
from decompbench.registry import get_method, get_toy
from decompbench.seeding import derive_seed
from decompbench.toys.base import ActivationSite, Toy, build_toy, downstream_site
from decompbench.toys.trained import cache_root

try:
    import fcntl
except ImportError:  # pragma: no cover - not on Linux/macOS: no directory lock
    fcntl = None  # type: ignore[assignment]

LOCK = ".decompbench.lock"
MAX_WORK = 2e10  # ~12x the built-in suite (1.7e9: about two minutes on 2 CPU cores)
EXPLODED = 1e6  # reconstruction larger than this times the data's largest |value|
MAX_ERROR_CHARS = 500
RUNS_PER_WORKER = 4  # the default --jobs starts no more workers than runs / this


@dataclass(frozen=True)
class SiteData:
    """Activations and true features of one toy site, on training and evaluation samples."""

    name: str
    train_ND: Tensor
    eval_ND: Tensor
    eval_feats_NK: Tensor


def site_data(toy: Toy, site: str, n_train: int, n_eval: int, seed: int) -> SiteData:
    """Samples drawn from seeds derived from the run seed only (never from toy params)."""
    train = toy.sample(n_train, derive_seed(seed, "data/train"))
    evals = toy.sample(n_eval, derive_seed(seed, "data/eval"))
    return SiteData(
        site,
        toy.acts(site, train.inputs).detach(),
        toy.acts(site, evals.inputs).detach(),
        evals.features[site],
    )


def site_view(toy: Toy, data: SiteData, method: Decomposition) -> ActivationSite:
    """What ``method`` may see: activations only, unless it declares itself downstream-aware."""
    if method.access == "downstream_aware":
        return downstream_site(toy, data.name, data.train_ND)
    return ActivationSite(data.name, data.train_ND)


def describe_error(err: BaseException) -> str:
    """``Type: message`` on one line, capped in length."""
    text = f"{type(err).__name__}: {err}" if str(err) else type(err).__name__
    text = " ".join(text.split())
    return text if len(text) <= MAX_ERROR_CHARS else text[: MAX_ERROR_CHARS - 3] + "..."


@torch.no_grad()
def check_outputs(method: Decomposition, X_ND: Tensor) -> None:
    """Raise ``TrainingFailed`` when the fitted dictionary is non-finite or has exploded."""
    Z_NM = method.encode(X_ND)
    Xhat_ND = method.decode(Z_NM)
    for what, t in (("directions", method.directions()), ("latents", Z_NM),
                    ("reconstruction", Xhat_ND)):  # fmt: skip
        bad = int((~torch.isfinite(t)).sum())
        if bad:
            raise TrainingFailed(f"{what} not finite ({bad} of {t.numel()} entries)")
    if X_ND.numel() == 0:
        return
    limit = EXPLODED * max(float(X_ND.abs().max()), 1.0)
    biggest = float(Xhat_ND.abs().max())
    if biggest > limit:
        raise TrainingFailed(f"reconstruction exploded (max |x_hat| = {biggest:.3g})")


def base_fields(run: PlannedRun, suite: Suite) -> dict[str, Any]:
    cls = get_method(run.method.name)
    return dict(
        run_id=run.run_id, toy=run.toy.name, toy_params=run.toy.params, site=run.site,
        method=run.method.name, method_params=run.method.params, access=cls.access,
        directions=cls.directions_kind, seed=run.seed, n_train=suite.n_train,
        n_eval=suite.n_eval,
    )  # fmt: skip


def failed_record(run: PlannedRun, suite: Suite, error: str, wall_s: float = 0.0) -> Record:
    return Record(**base_fields(run, suite), status="failed", error=error, wall_s=wall_s)


@dataclass(frozen=True)
class RunResult:
    """What a worker hands back: the run's record and, for an ok run, its artefacts."""

    record: Record
    artefacts: ArtefactData | None = None


def run_one(toy: Toy, data: SiteData, run: PlannedRun, suite: Suite, artefacts: bool) -> RunResult:
    """Fit one method on one site and score it; any exception becomes a failed record."""
    t0 = time.perf_counter()
    try:
        method = build_method(run.method.name, run.method.params)
        method.fit(site_view(toy, data, method), run.seed)
    except Exception as err:  # a bug in a method must not kill the suite
        return RunResult(failed_record(run, suite, describe_error(err), time.perf_counter() - t0))
    return scored(toy, data, run, suite, method, artefacts, time.perf_counter() - t0)


def run_batch(
    toy: Toy, data: SiteData, runs: tuple[PlannedRun, ...], suite: Suite, artefacts: bool
) -> list[RunResult]:
    """Fit ``runs`` (SAEs differing only in their sparsity coefficient, on one site) as one
    batched job, then score each. ``batched.fit_many`` gives each model the parameters its
    own ``fit`` gives, bit for bit, in a fraction of the time; a model whose training
    failed comes back as that failure. If the batch cannot be formed, each run alone."""
    t0 = time.perf_counter()
    try:
        methods = [build_method(r.method.name, r.method.params) for r in runs]
        sites = [site_view(toy, data, m) for m in methods]
        fitted = batched.fit_many(methods, sites, [r.seed for r in runs])
    except Exception:
        return [run_one(toy, data, r, suite, artefacts) for r in runs]
    share = (time.perf_counter() - t0) / len(runs)  # each run's wall_s: an even share
    return [
        scored(toy, data, r, suite, m, artefacts, share) for r, m in zip(runs, fitted, strict=True)
    ]


def scored(
    toy: Toy,
    data: SiteData,
    run: PlannedRun,
    suite: Suite,
    fitted: Decomposition | Exception,
    artefacts: bool,
    fit_s: float,
) -> RunResult:
    """Check and score a fitted method (or record why it failed); ``fit_s`` is its fit time.

    The scorer (never the method) uses the toy's ground truth and downstream network.
    With ``artefacts``, the run's artefacts for the report are computed (not written).
    """
    t0 = time.perf_counter() - fit_s
    saved = None
    try:
        if isinstance(fitted, Exception):
            raise fitted
        method = fitted
        check_outputs(method, data.eval_ND)
        gt = toy.ground_truth(data.name)
        f = toy.downstream(data.name)
        metrics = score(method, gt, data.eval_feats_NK, data.eval_ND, run.seed, downstream=f)
        if artefacts:
            saved = run_artefacts(str(run.run_id), method, gt, data.eval_ND, data.eval_feats_NK,
                                  f, meta=base_fields(run, suite))  # fmt: skip
    except Exception as err:
        return RunResult(failed_record(run, suite, describe_error(err), time.perf_counter() - t0))
    wall = time.perf_counter() - t0
    return RunResult(Record(**base_fields(run, suite), status="ok", metrics=metrics, wall_s=wall),
                     saved)  # fmt: skip


# --- toys and site samples, built once per worker -----------------------------------------

K = TypeVar("K")
V = TypeVar("V")


class Recent(OrderedDict[K, V]):
    """The ``size`` most recently used entries (toys and samples of the runs in flight)."""

    def __init__(self, size: int) -> None:
        super().__init__()
        self.size = size

    def get_or_make(self, key: K, make: Callable[[], V]) -> V:
        if key in self:
            self.move_to_end(key)
            return self[key]
        value = self[key] = make()
        while len(self) > self.size:
            self.popitem(last=False)
        return value


Built = tuple[Toy | None, str | None]  # the toy, or None and why
Sampled = tuple[SiteData | None, str]
TOYS_KEPT: Recent[str, Built] = Recent(4)
SITES_KEPT: Recent[str, Sampled] = Recent(4)


def toy_key(run: PlannedRun) -> str:
    cls = get_toy(run.toy.name)
    return json.dumps([run.toy.name, f"{cls.__module__}.{cls.__qualname__}",
                       normalised("toy", run.toy.name, run.toy.params), run.seed])  # fmt: skip


@contextmanager
def build_lock(key: str) -> Iterator[None]:
    """Serialise builds of one toy across processes: the second waits, then loads the
    toy its twin just trained and cached (released by the OS if the holder dies). Without
    a writable cache there is nothing to share: no lock."""
    name = hashlib.sha256(key.encode()).hexdigest()[:20]
    try:
        lock_dir = cache_root() / "locks"
        lock_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(lock_dir / f"{name}.lock", os.O_RDWR | os.O_CREAT, 0o644)
    except OSError:
        yield
        return
    try:
        if fcntl is not None:
            fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def built_toy(run: PlannedRun, lock: bool) -> Built:
    key = toy_key(run)

    def make() -> Built:
        with build_lock(key) if lock else nullcontext():
            return build_or_error(run, run.seed)

    return TOYS_KEPT.get_or_make(key, make)


def sampled_site(toy: Toy, run: PlannedRun, suite: Suite) -> Sampled:
    key = json.dumps([toy_key(run), run.site, suite.n_train, suite.n_eval])
    return SITES_KEPT.get_or_make(key, lambda: sample_or_error(toy, run.site, suite, run.seed))


def forget_built() -> None:
    TOYS_KEPT.clear()
    SITES_KEPT.clear()


@dataclass(frozen=True)
class RunTask:
    """What a worker receives: one planned run, or several on one toy sample and site that
    are fitted as one batch (see ``plan_tasks``)."""

    runs: tuple[PlannedRun, ...]
    suite: Suite
    artefacts: bool = True
    lock_builds: bool = False


def work(task: RunTask) -> list[RunResult]:
    """A worker's whole job: toy and site (kept), fit, score, artefacts; one result per run."""
    first, suite = task.runs[0], task.suite
    toy, error = built_toy(first, task.lock_builds)
    data, why = sampled_site(toy, first, suite) if toy is not None else (None, error or "")
    if toy is None or data is None:
        return [RunResult(failed_record(r, suite, why)) for r in task.runs]
    if len(task.runs) == 1:
        return [run_one(toy, data, first, suite, task.artefacts)]
    return run_batch(toy, data, task.runs, suite, task.artefacts)


def plan_tasks(todo: list[PlannedRun], batch: bool) -> list[tuple[PlannedRun, ...]]:
    """The runs to do as tasks, in plan order of their first run. With ``batch``, runs of
    one toy sample and site that ``batched`` can fit together (same SAE kind and settings
    but the sparsity coefficient) form one task."""
    if not batch:
        return [(r,) for r in todo]
    groups = batched.plan_groups(todo, data_key=lambda r: (toy_key(r), r.site))
    return [tuple(todo[i] for i in g) for g in groups]


# --- progress -------------------------------------------------------------------------


class RunsProgress(Protocol):
    def run_done(self, run: PlannedRun, record: Record) -> None: ...


class RichReporter:
    """Per-run training bar under an overall runs bar."""

    def __init__(self, progress: Progress) -> None:
        self.progress = progress
        self.task = progress.add_task("", total=1, visible=False)

    def start(self, label: str, total: int) -> None:
        self.progress.reset(self.task, total=total, description=f"  {label}", visible=True)

    def advance(self, n: int, info: str = "") -> None:
        self.progress.update(self.task, advance=n)

    def finish(self) -> None:
        self.progress.update(self.task, visible=False)


class RichRuns:
    """Overall bar on a terminal: runs done / total (skipped ones count as done), ETA."""

    def __init__(self, progress: Progress, total: int, skipped: int) -> None:
        desc = f"runs ({skipped} skipped)" if skipped else "runs"
        self.progress = progress
        self.task = progress.add_task(desc, total=total, completed=skipped)

    def run_done(self, run: PlannedRun, record: Record) -> None:
        self.progress.update(self.task, advance=1)


def hms(seconds: float) -> str:
    s = round(seconds)
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"


class PlainRuns:
    """Off a terminal (logs, CI, parallel jobs): one line per finished run, one write each,
    so lines from several processes sharing a log interleave whole."""

    def __init__(self, total: int, skipped: int) -> None:
        self.total, self.done, self.new = total, skipped, 0
        self.t0 = time.monotonic()

    def run_done(self, run: PlannedRun, record: Record) -> None:
        self.done, self.new = self.done + 1, self.new + 1
        eta = (time.monotonic() - self.t0) / self.new * (self.total - self.done)
        note = f": {record.error}" if record.error else ""
        say(f"[{self.done}/{self.total}] {record.status} {run.label} ({record.wall_s:.1f} s, "
            f"eta {hms(eta)}){note}")  # fmt: skip


def say(line: str) -> None:
    sys.stderr.write(f"decompbench: {line}\n")
    sys.stderr.flush()


@contextmanager
def runs_progress(total: int, skipped: int, quiet: bool) -> Iterator[RunsProgress | None]:
    if quiet:
        yield None
        return
    console = Console(stderr=True)
    if not console.is_terminal:
        yield PlainRuns(total, skipped)
        return
    cols = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
            TimeRemainingColumn())  # fmt: skip
    progress = Progress(*cols, console=console, transient=True)
    with progress, reporting(RichReporter(progress)):
        yield RichRuns(progress, total, skipped)


# --- cost guard -----------------------------------------------------------------------


def as_count(value: object) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 1


def planned_work(runs: list[PlannedRun]) -> float:
    """Sum over gradient-trained runs of steps x batch_size x width (defaults filled in),
    times the fits a run makes when it selects among several settings itself (its
    Params' ``sweep_fields`` holding lists, e.g. spd's four ``importance`` values)."""
    per_method: dict[int, float] = {}
    total = 0.0
    for run in runs:
        key = id(run.method)
        if key not in per_method:
            p = normalised("method", run.method.name, run.method.params)
            trained = "steps" in p
            steps, batch, width = (as_count(p.get(k)) for k in ("steps", "batch_size", "width"))
            sweeps = getattr(get_method(run.method.name).Params, "sweep_fields", ())
            fits = math.prod(len(v) if isinstance(v := p[f], list) else 1 for f in sweeps)
            per_method[key] = float(steps) * batch * width * fits if trained else 0.0
        total += per_method[key]
    return total


def check_cost(runs: list[PlannedRun], yes: bool) -> None:
    """Refuse (before anything is written) a suite far bigger than the built-in one."""
    work = planned_work(runs)
    if work > MAX_WORK and not yes:
        builtin = planned_work(plan_runs(load_suite(None)[0]))
        raise UserError(
            f"planned work of the {len(runs)} runs to do is {work:.2g} steps x batch x width, "
            f"above the bound {MAX_WORK:.2g} (the built-in suite: {builtin:.2g}, about two "
            "minutes on 2 CPU cores); pass --yes to run it anyway"
        )


MAX_SITE_BYTES = 2**30  # float32 activations of one site sample (train + eval)


def probed_dim(run: PlannedRun, seed: int) -> int | None:
    """Width of the run's site (the suite's cached one-sample probe); ``None`` if building
    the toy fails (the run will record why)."""
    try:
        return site_dim(json.dumps([run.toy.name, run.toy.params], sort_keys=True), run.site, seed)
    except Exception:
        return None


def check_memory(runs: list[PlannedRun], suite: Suite, yes: bool) -> None:
    """Refuse (before anything is written) a site whose activations alone, n_train + n_eval
    samples x its width in float32, exceed ``MAX_SITE_BYTES``, unless ``yes``."""
    if yes:
        return
    seen: set[str] = set()
    n = suite.n_train + suite.n_eval
    for run in runs:
        key = json.dumps([run.toy.name, run.toy.params, run.site], sort_keys=True)
        if key in seen:
            continue
        seen.add(key)
        d = probed_dim(run, suite.seeds[0])
        if d is not None and n * d * 4 > MAX_SITE_BYTES:
            raise UserError(
                f"toy '{run.toy.name}' site '{run.site}': n_train + n_eval = {n} samples x "
                f"{d} dims = {n * d * 4 / 1e9:.1f} GB of float32 activations, above the bound "
                f"{MAX_SITE_BYTES / 1e9:.1f} GB per site; lower n_train or pass --yes"
            )


# --- the run directory ----------------------------------------------------------------


def check_out_dir(out_dir: Path) -> None:
    try:
        if out_dir.exists() and not out_dir.is_dir():
            raise UserError(f"{out_dir}: exists and is not a directory")
    except (OSError, ValueError) as err:
        raise UserError(f"{out_dir}: unusable output directory ({err})") from None


def check_run_ids(stored: Stored, out_dir: Path) -> None:
    """Records from before run ids cannot be matched to runs: refuse to mix with them."""
    if any(r.run_id is None for r in stored.records):
        n = sum(r.run_id is None for r in stored.records)
        raise UserError(
            f"{out_dir / RESULTS} holds {n} run(s) without run ids (an older decompbench); "
            "pass --force to start over or choose another --out"
        )


def to_run(plan: list[PlannedRun], records: list[Record], keep_failed: bool) -> list[PlannedRun]:
    """The planned runs not yet recorded (or recorded as failed, unless ``keep_failed``)."""
    done = {r.run_id for r in records if keep_failed or r.status == "ok"}
    return [r for r in plan if r.run_id not in done]


def probe_dir(path: Path, out_dir: Path) -> None:
    """Create and remove a probe file in ``path``: the one test of writability that holds
    for ACLs, read-only mounts and root alike."""
    try:
        fd, name = tempfile.mkstemp(prefix=".decompbench-probe-", dir=path)
        os.close(fd)
        os.unlink(name)
    except OSError as err:
        raise UserError(
            f"{out_dir}: cannot write to {path} ({err.strerror or err}); make it writable or "
            "choose another --out"
        ) from None


def probe_file(path: Path, out_dir: Path) -> None:
    """Open an existing ``path`` for appending (nothing is written)."""
    try:
        os.close(os.open(path, os.O_WRONLY | os.O_APPEND))
    except FileNotFoundError:
        return
    except OSError as err:
        raise UserError(
            f"{out_dir}: cannot write to {path} ({err.strerror or err}); make it writable or "
            "choose another --out"
        ) from None


def check_writable(out_dir: Path) -> None:
    """Before anything is trained or written: every directory of an existing ``out_dir``
    (results, artefacts, plots) takes new files and the files appended to open for
    writing; a missing ``out_dir`` must be creatable under its nearest existing parent."""
    if not out_dir.exists():
        parent = out_dir.parent
        while not parent.exists() and parent != parent.parent:
            parent = parent.parent
        if parent.is_dir():
            probe_dir(parent, out_dir)
        return
    probe_dir(out_dir, out_dir)
    for sub in sorted(p for p in out_dir.rglob("*") if p.is_dir()):
        probe_dir(sub, out_dir)
    for name in (RESULTS, LOCK):
        probe_file(out_dir / name, out_dir)


def make_dir(out_dir: Path) -> None:
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise UserError(f"{out_dir}: cannot create: {err.strerror or err}") from None


@contextmanager
def locked(out_dir: Path) -> Iterator[None]:
    """Hold an exclusive lock on ``out_dir`` (released by the OS even on SIGKILL)."""
    try:
        fd = os.open(out_dir / LOCK, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as err:
        raise UserError(f"{out_dir}: cannot write: {err.strerror or err}") from None
    try:
        if fcntl is not None:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise UserError(
                    f"{out_dir} is in use by another decompbench run; wait for it or choose "
                    "another --out"
                ) from None
        yield
    finally:
        os.close(fd)


# --- the suite ------------------------------------------------------------------------


@dataclass(frozen=True)
class RunSummary:
    records: list[Record]  # every record of the suite, skipped ones first
    skipped: int  # runs found already recorded
    ran: int  # runs executed now
    other: int = 0  # records of runs that are not in this suite (kept)

    @property
    def failed(self) -> int:
        return sum(r.status == "failed" for r in self.records)

    def line(self, out_dir: Path) -> str:
        text = (
            f"{len(self.records)} runs: {self.ran} run now, {self.skipped} skipped (already "
            f"in {out_dir / RESULTS}), {self.failed} failed"
        )
        if self.other:
            text += (
                f"; {self.other} recorded run(s) not in this suite kept (see `decompbench show`;"
                " --prune removes them)"
            )
        return text


def build_or_error(run: PlannedRun, seed: int) -> tuple[Toy | None, str | None]:
    try:
        return build_toy(run.toy.name, run.toy.params, seed), None
    except Exception as err:  # e.g. a toy whose own training missed its target
        return None, f"{describe_error(err)} (building toy '{run.toy.name}')"


def sample_or_error(toy: Toy, site: str, suite: Suite, seed: int) -> tuple[SiteData | None, str]:
    try:
        return site_data(toy, site, suite.n_train, suite.n_eval, seed), ""
    except Exception as err:
        return None, f"{describe_error(err)} (sampling site '{site}')"


def registry_setup(plan: list[PlannedRun], threads: int) -> WorkerSetup:
    """Worker setup: torch threads, and the toys and methods not built into decompbench."""
    toys = {r.toy.name: get_toy(r.toy.name) for r in plan}
    methods = {r.method.name: get_method(r.method.name) for r in plan}

    def extra(table: dict[str, Any]) -> dict[str, type]:
        own = [k for k, c in table.items() if c.__module__.startswith("decompbench.")]
        return {k: c for k, c in table.items() if k not in own and not plugins.provides(c)}

    return WorkerSetup(threads, extra(toys), extra(methods), plugins.loaded())


def finish(result: RunResult, run: PlannedRun, suite: Suite, out_dir: Path) -> Record:
    """Write the run's artefacts (a failure there fails the run), then append its record."""
    record = result.record
    if result.artefacts is not None:
        try:
            write_run_artefacts(out_dir, result.artefacts)
        except Exception as err:
            record = failed_record(run, suite, describe_error(err), record.wall_s)
    append_record(out_dir / RESULTS, record)
    return record


def execute(
    todo: list[PlannedRun], suite: Suite, out_dir: Path, shown: RunsProgress | None,
    executor: Executor, batch: bool = True,
) -> list[Record]:  # fmt: skip
    """Run ``todo`` on ``executor``; append each record as soon as it comes back."""
    lock = not isinstance(executor, Serial)  # other processes may build the same toy
    tasks = [RunTask(runs, suite, lock_builds=lock) for runs in plan_tasks(todo, batch)]
    records = []
    with closing(executor.imap_unordered(work, tasks)) as outcomes:
        for out in outcomes:
            runs = tasks[out.index].runs
            results = out.value or [
                RunResult(failed_record(r, suite, out.error or "no result")) for r in runs
            ]
            for run, result in zip(runs, results, strict=True):
                record = finish(result, run, suite, out_dir)
                records.append(record)
                if shown is not None:
                    shown.run_done(run, record)
    return records


def in_plan_order(results: Path, plan: list[PlannedRun]) -> None:
    """Rewrite the (complete) results file with its records in plan order, atomically."""
    rank = {r.run_id: i for i, r in enumerate(plan)}
    lines = [line for line in results.read_bytes().split(b"\n") if line.strip()]
    ordered = sorted(lines, key=lambda line: rank.get(json.loads(line).get("run_id"), len(rank)))
    if ordered != lines:
        write_bytes_atomic(results, b"\n".join(ordered) + b"\n")


@dataclass(frozen=True)
class Resume:
    """How a rerun treats what ``DIR/results.jsonl`` already holds."""

    force: bool = False  # discard everything
    keep_failed: bool = False  # do not retry failed runs
    prune: bool = False  # drop records of runs that are not in the suite


def start_results(out_dir: Path, plan: list[PlannedRun], resume: Resume) -> Stored:
    """Under the lock: clear (force), or re-read the results file, drop the failed records
    about to be retried and (prune) those of runs not in the suite, and cut a torn tail."""
    results = out_dir / RESULTS
    if resume.force:
        results.unlink(missing_ok=True)
        shutil.rmtree(out_dir / ARTEFACTS, ignore_errors=True)
        return Stored([], 0, 0)
    stored = scan_results(results)
    check_run_ids(stored, out_dir)
    ids = {r.run_id for r in plan}
    keep = [
        r
        for r in stored.records
        if (r.run_id in ids or not resume.prune)
        and (r.status == "ok" or resume.keep_failed or r.run_id not in ids)
    ]
    if len(keep) < len(stored.records):
        rewrite_records(results, keep)
        return Stored(keep, 0, 0)
    drop_torn_tail(results, stored)
    return stored


def run_suite(
    suite: Suite,
    suite_text: str,
    out_dir: Path,
    quiet: bool = False,
    force: bool = False,
    yes: bool = False,
    jobs: int | None = 1,
    executor: Kind = "local",
    address: str | None = None,
    threads: int = 1,
    batch: bool = True,
    keep_failed: bool = False,
    prune: bool = False,
) -> RunSummary:
    """Run every toy x site x method x seed not yet in ``DIR/results.jsonl`` (or recorded
    as failed, unless ``keep_failed``); append each. Records of runs not in the suite stay
    (``prune`` drops them).

    ``jobs`` runs at once (local processes, or Ray tasks with ``executor="ray"``), each
    worker with ``threads`` torch threads; ``None``: see ``local_jobs`` (local) or one per
    CPU of the Ray cluster. One local job runs everything in this process. ``batch``: fit
    runs that ``batched`` can train together as one job (same results, less time).
    """
    plan = plan_runs(suite)
    resume = Resume(force, keep_failed, prune)
    check_out_dir(out_dir)
    stored = Stored([], 0, 0) if force else scan_results(out_dir / RESULTS)
    check_run_ids(stored, out_dir)
    todo = to_run(plan, stored.records, keep_failed)
    check_cost(todo, yes)  # before anything is written
    check_memory(todo, suite, yes)
    check_writable(out_dir)
    make_dir(out_dir)
    with locked(out_dir):
        stored = start_results(out_dir, plan, resume)
        todo = to_run(plan, stored.records, keep_failed)
        write_text_atomic(out_dir / SUITE_COPY, suite_text)
        write_plan(out_dir, [r.run_id for r in plan])
        new = run_todo(todo, plan, suite, out_dir, quiet, make_pool(todo, jobs, executor,
                       address, threads), executor, batch)  # fmt: skip
    return summarise(plan, stored.records, new)


def make_pool(
    todo: list[PlannedRun], jobs: int | None, executor: Kind, address: str | None, threads: int
) -> Executor:
    if executor == "local":
        jobs = local_jobs(jobs, len(todo))
    return make_executor(executor, jobs, registry_setup(todo, threads), address)


def run_todo(
    todo: list[PlannedRun], plan: list[PlannedRun], suite: Suite, out_dir: Path, quiet: bool,
    pool: Executor, executor: Kind, batch: bool,
) -> list[Record]:  # fmt: skip
    """Run ``todo`` on ``pool`` with progress; then put the results file in plan order."""
    if not quiet:
        say(f"{len(plan)} runs: {len(plan) - len(todo)} already recorded in {out_dir}, "
            f"{len(todo)} to run{where(pool, executor)}")  # fmt: skip
    forget_built()
    try:
        with pool, runs_progress(len(plan), len(plan) - len(todo), quiet) as shown:
            new = execute(todo, suite, out_dir, shown, pool, batch) if todo else []
    except KeyboardInterrupt:
        if not quiet:
            say("interrupted; run the same command again to resume")
        raise
    finally:
        forget_built()
    if new:
        in_plan_order(out_dir / RESULTS, plan)
    return new


def summarise(plan: list[PlannedRun], stored: list[Record], new: list[Record]) -> RunSummary:
    """The suite's records in plan order; records of other runs are counted, not listed."""
    rank = {r.run_id: i for i, r in enumerate(plan)}
    mine = [r for r in stored + new if r.run_id in rank]
    mine.sort(key=lambda r: rank[r.run_id or ""])
    other = sum(r.run_id not in rank for r in stored)
    return RunSummary(mine, skipped=len(plan) - len(new), ran=len(new), other=other)


def local_jobs(jobs: int | None, n_todo: int) -> int:
    """Processes for ``n_todo`` runs: ``jobs``, or by default one per usable core but at
    least ``RUNS_PER_WORKER`` runs each (starting a worker costs seconds: it imports torch);
    never more than the runs to do."""
    if jobs is None:
        jobs = min(usable_cores(), n_todo // RUNS_PER_WORKER)
    return max(1, min(jobs, n_todo))


def where(pool: Executor, executor: Kind) -> str:
    if executor == "ray":
        return " as Ray tasks"
    return "" if isinstance(pool, Serial) else f" in {pool.jobs} processes"
