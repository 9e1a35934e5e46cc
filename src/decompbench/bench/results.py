"""The results store: one JSON record per run in ``DIR/results.jsonl``."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel

from decompbench.errors import UserError

RESULTS = "results.jsonl"


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


def append_record(path: Path, record: Record) -> None:
    """Append one line and flush it to disk: a crash loses at most the run in progress."""
    line = record.model_dump_json() + "\n"
    with path.open("a") as f:
        f.write(line)
        f.flush()
        os.fsync(f.fileno())


def read_records(out_dir: Path) -> list[Record]:
    path = out_dir / RESULTS
    if not path.is_file():
        raise UserError(f"{path}: no such file (is {out_dir} a decompbench run directory?)")
    records = []
    for i, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            records.append(Record.model_validate(json.loads(line)))
        except (json.JSONDecodeError, ValueError) as err:
            first = str(err).splitlines()[0]
            raise UserError(f"{path}:{i}: not a valid run record ({first})") from None
    return records


def write_text_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    tmp.replace(path)
