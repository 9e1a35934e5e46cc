"""The results store: one JSON record per run in ``DIR/results.jsonl``; never code from files.

Crash safety. A record is appended as one ``write`` of a newline-terminated line and
fsync'ed, so a run killed at any moment (SIGKILL included) leaves either nothing or a
torn, *unterminated* last line. Readers ignore such a tail; a resuming runner truncates it
before appending. A complete (newline-terminated) line that does not parse cannot come from
a crash, so it is reported as corruption instead of being dropped. Every other file is
written to a temporary name, fsync'ed and renamed over the target.

Each record carries ``run_id``, a content hash of what defines the run (toy, toy params,
site, method, method params, seed, n_train, n_eval; params with their defaults filled in),
so a resumed suite can tell which runs are already done.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel

from decompbench.errors import UserError

RESULTS = "results.jsonl"
SUITE_COPY = "suite.yaml"
PLAN = "plan.json"  # run ids of the suite last run into the directory


class Record(BaseModel):
    toy: str
    toy_params: dict[str, Any]
    site: str
    method: str
    method_params: dict[str, Any]
    access: str
    directions: str
    seed: int
    status: Literal["ok", "failed"]
    error: str | None = None
    metrics: dict[str, float | int | None] = {}
    wall_s: float
    run_id: str | None = None  # None only in files written before run ids existed
    n_train: int | None = None
    n_eval: int | None = None


def make_run_id(identity: dict[str, Any]) -> str:
    """Content hash (16 hex digits) of a run's defining settings, order-independent."""
    text = json.dumps(identity, sort_keys=True, separators=(",", ":"), allow_nan=False)
    return hashlib.sha256(f"decompbench-run-v1:{text}".encode()).hexdigest()[:16]


def append_record(path: Path, record: Record) -> None:
    """Append one line with a single write and fsync it: a crash loses at most this run."""
    data = memoryview((record.model_dump_json() + "\n").encode())
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        while data:
            data = data[os.write(fd, data) :]
        os.fsync(fd)
    finally:
        os.close(fd)


@dataclass(frozen=True)
class Stored:
    """The parsed results file: its records, and the byte length of its complete lines."""

    records: list[Record]
    good_bytes: int
    torn_bytes: int  # length of an unterminated last line (a write cut short), else 0


def parse_line(path: Path, lineno: int, line: bytes) -> Record:
    try:
        return Record.model_validate(json.loads(line))
    except (json.JSONDecodeError, UnicodeDecodeError, ValueError) as err:
        first = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise UserError(f"{path}:{lineno}: not a valid run record ({first})") from None


def scan_results(path: Path) -> Stored:
    """Read ``path`` (missing = empty); an unterminated last line is counted, not parsed."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return Stored([], 0, 0)
    except OSError as err:
        raise UserError(f"{path}: cannot read: {err.strerror or err}") from None
    good = raw.rfind(b"\n") + 1
    records = [
        parse_line(path, i, line)
        for i, line in enumerate(raw[:good].split(b"\n")[:-1], start=1)
        if line.strip()
    ]
    return Stored(records, good, len(raw) - good)


def drop_torn_tail(path: Path, stored: Stored) -> None:
    """Cut an unterminated last line so the next append starts on a fresh line."""
    if stored.torn_bytes:
        os.truncate(path, stored.good_bytes)


def read_records(out_dir: Path) -> list[Record]:
    """Every complete record of a run directory (a torn last line is ignored)."""
    path = out_dir / RESULTS
    if not path.is_file():
        raise UserError(f"{path}: no such file (is {out_dir} a decompbench run directory?)")
    return scan_results(path).records


def rewrite_records(path: Path, records: list[Record]) -> None:
    """Replace the results file by ``records`` (atomically: a kill leaves old or new)."""
    write_text_atomic(path, "".join(r.model_dump_json() + "\n" for r in records))


def write_plan(out_dir: Path, run_ids: list[str]) -> None:
    write_text_atomic(out_dir / PLAN, json.dumps(run_ids) + "\n")


def read_plan(out_dir: Path) -> set[str] | None:
    """Run ids of the suite last run into ``out_dir``; ``None`` when not recorded."""
    try:
        ids = json.loads((out_dir / PLAN).read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as err:
        raise UserError(f"{out_dir / PLAN}: unreadable ({err})") from None
    if not isinstance(ids, list) or not all(isinstance(i, str) for i in ids):
        raise UserError(f"{out_dir / PLAN}: not a list of run ids")
    return set(ids)


def fsync_dir(path: Path) -> None:
    """Make a rename or a new file in ``path`` durable (best effort where unsupported)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def write_bytes_atomic(path: Path, data: bytes) -> None:
    """Write to a temporary name in the same directory, fsync, rename over ``path``."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with tmp.open("wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)
    fsync_dir(path.parent)


def write_text_atomic(path: Path, text: str) -> None:
    """UTF-8 text, written like ``write_bytes_atomic``."""
    write_bytes_atomic(path, text.encode("utf-8"))
