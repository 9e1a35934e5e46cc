"""Run a validated suite: every toy x site x method x seed, one record each."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from torch import Tensor

from decompbench.bench.evaluate import score
from decompbench.bench.results import RESULTS, Record, append_record, write_text_atomic
from decompbench.bench.suite import MethodSpec, Suite, ToySpec
from decompbench.errors import TrainingFailed, UserError
from decompbench.methods.base import Decomposition, build_method
from decompbench.progress import reporting
from decompbench.seeding import derive_seed
from decompbench.toys.base import ActivationSite, Toy, build_toy, downstream_site


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


def run_one(toy: Toy, tspec: ToySpec, data: SiteData, mspec: MethodSpec, seed: int) -> Record:
    """Fit one method on one site and score it; training failures become failed records."""
    method = build_method(mspec.name, mspec.params)
    base = dict(
        toy=tspec.name, toy_params=tspec.params, site=data.name, method=mspec.name,
        method_params=mspec.params, access=method.access,
        directions=method.directions_kind, seed=seed,
    )  # fmt: skip
    t0 = time.perf_counter()
    try:
        method.fit(site_view(toy, data, method), seed)
        metrics = score(method, toy.ground_truth(data.name), data.eval_feats_NK, data.eval_ND, seed)
    except TrainingFailed as err:
        wall = time.perf_counter() - t0
        return Record(**base, status="failed", error=str(err), wall_s=wall)
    wall = time.perf_counter() - t0
    return Record(**base, status="ok", metrics=metrics, wall_s=wall)


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


@contextmanager
def progress_display(total: int, quiet: bool) -> Iterator[Progress | None]:
    if quiet:
        yield None
        return
    cols = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
            TimeRemainingColumn())  # fmt: skip
    with Progress(*cols, console=Console(stderr=True), transient=True) as progress:
        yield progress


def prepare_out_dir(out_dir: Path, force: bool) -> Path:
    results = out_dir / RESULTS
    if results.exists() and not force:
        raise UserError(f"{out_dir} already holds results; pass --force to replace them")
    out_dir.mkdir(parents=True, exist_ok=True)
    results.unlink(missing_ok=True)
    return results


def run_suite(
    suite: Suite, suite_text: str, out_dir: Path, quiet: bool = False, force: bool = False
) -> list[Record]:
    """Run every toy x site x method x seed; append each record to ``DIR/results.jsonl``."""
    results = prepare_out_dir(out_dir, force)
    write_text_atomic(out_dir / "suite.yaml", suite_text)
    plan = [(seed, t) for seed in suite.seeds for t in suite.toys]
    n_runs = len(suite.seeds) * sum(len(t.sites or []) * len(suite.methods) for t in suite.toys)
    records: list[Record] = []
    with progress_display(n_runs, quiet) as progress:
        overall = progress.add_task("runs", total=n_runs) if progress else None
        with reporting(RichReporter(progress) if progress else None):
            for seed, tspec in plan:
                toy = build_toy(tspec.name, tspec.params, seed)
                for site in tspec.sites or []:
                    data = site_data(toy, site, suite.n_train, suite.n_eval, seed)
                    for mspec in suite.methods:
                        record = run_one(toy, tspec, data, mspec, seed)
                        append_record(results, record)
                        records.append(record)
                        if progress and overall is not None:
                            progress.update(overall, advance=1)
    return records
