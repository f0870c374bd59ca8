"""Per-question records of one evaluation cell (model × benchmark × reducer setting × budget), written so that a
crash loses nothing and a re-run duplicates nothing.

A cell is a folder. ``cell.json`` holds its keys and the settings it was evaluated with (``write_cell_keys``).
While the cell is evaluated, the model appends one line per answered question to its process's answers file
(``answers.rank<r>.jsonl``), flushed and synced as it is written; a line cut short by a crash is dropped when the
file is read back, so that question runs again. The runner alone writes ``records.jsonl``: at the end, every answer
to the run's questions with its correctness, replacing the answers files (``write_records``).
``environment.json`` holds the package versions and commit that evaluated it (``runners.provenance``). Whole files
are written atomically (``runners.files``). ``sessions.json`` adds up the wall time of the sessions a resumed cell
took; ``DONE`` marks a finished cell, ``FAILED`` (the error) one whose last evaluation raised, and a process
evaluating it holds ``.lock`` (``cell_status``). Lines are strict JSON: a time not measured (NaN in a
``QuestionRecord``) is written as null and read back as NaN.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import pandas as pd

from runners.files import is_locked, write_atomically

RECORDS = "records.jsonl"
CELL_KEYS = "cell.json"
ENVIRONMENT = "environment.json"
DONE = "DONE"
FAILED = "FAILED"
SESSIONS = "sessions.json"
LOCK = ".lock"
FULL_TOKENS = "none"  # the reducer key of the full-token cells
CELLS = ["model", "reducer", "budget"]  # what names a cell in records and tables
AVERAGE = "average"  # the task name of the statistics of the average over benchmarks


@dataclass(frozen=True)
class QuestionRecord:
    """What one question of one cell produced. Times in milliseconds; NaN where not measured. ``video`` names the
    question's video (its path), which questions about one video share: intervals resample videos."""

    task: str
    doc_id: int
    correct: bool | None
    prediction: str
    answer: str
    visual_tokens_before: int
    visual_tokens_after: int
    video: str | None = None
    vision_ms: float = math.nan
    reducer_ms: float = math.nan
    prefill_ms: float = math.nan
    ttft_ms: float = math.nan
    decode_ms_per_token: float = math.nan
    peak_memory_mb: float = math.nan
    prefill_tokens: int | None = None  # the prompt the LLM prefills, reduced (from its layer on, for one in the LLM)
    prefill_flops: float = math.nan  # sttm.adapters.flops: the LLM's prefill from the tokens each layer saw
    error: str | None = None
    extra: dict = field(default_factory=dict)

    @property
    def achieved_ratio(self) -> float:
        if self.visual_tokens_before == 0:
            return math.nan
        return self.visual_tokens_after / self.visual_tokens_before


#: the fields that hold NaN where not measured
MEASURED = tuple(f.name for f in fields(QuestionRecord) if f.type == "float") + ("achieved_ratio",)


def json_line(row: dict) -> str:
    """``row`` as one line of strict JSON, its non-finite numbers as null."""
    strict = {
        key: None if isinstance(value, float) and not math.isfinite(value) else value for key, value in row.items()
    }
    return json.dumps(strict, allow_nan=False) + "\n"


def parse_line(line: str) -> dict:
    """A row written by ``json_line``, its measured fields that were not measured back as NaN."""
    row = json.loads(line)
    return row | {key: math.nan for key in MEASURED if key in row and row[key] is None}


def drop_partial_line(path: Path) -> None:
    """Cut a last line that a crash left without its newline."""
    if not path.is_file() or path.stat().st_size == 0:
        return
    with open(path, "r+b") as handle:
        handle.seek(-1, os.SEEK_END)
        if handle.read(1) == b"\n":
            return
        handle.seek(0)
        handle.truncate(handle.read().rfind(b"\n") + 1)


def answers_file(cell: Path, rank: int = 0) -> Path:
    """Where the model of data-parallel process ``rank`` appends the answers of a cell being evaluated."""
    return cell / f"answers.rank{rank}.jsonl"


def append_answer(cell: Path, record: QuestionRecord, rank: int = 0) -> None:
    """Add one question's record to the answers of process ``rank``, durably."""
    cell.mkdir(parents=True, exist_ok=True)
    row = asdict(record) | {"achieved_ratio": record.achieved_ratio}
    path = answers_file(cell, rank)
    drop_partial_line(path)
    with open(path, "a") as handle:
        handle.write(json_line(row))
        handle.flush()
        os.fsync(handle.fileno())


def read_records(cell: Path) -> list[dict]:
    """The cell's complete records, last one per (task, doc_id): every process's answers, then ``records.jsonl``,
    whose rows win (answers files a crash left beside it); a line cut short by a crash is dropped."""
    latest: dict[tuple[str, int], dict] = {}
    for path in [*sorted(cell.glob("answers.rank*.jsonl")), cell / RECORDS]:
        if not path.is_file():
            continue
        for line in path.read_text().splitlines():
            try:
                row = parse_line(line)
            except json.JSONDecodeError:
                continue
            latest[(row["task"], row["doc_id"])] = row
    return list(latest.values())


def write_records(cell: Path, rows: list[dict]) -> None:
    """Write the cell's ``records.jsonl`` (atomically) from ``rows``, then remove the answers files it replaces."""
    write_atomically(cell / RECORDS, "".join(json_line(row) for row in rows))
    for path in cell.glob("answers.rank*.jsonl"):
        path.unlink()


def records_by_question(cell: Path) -> dict[tuple[str, int], dict]:
    """The cell's records keyed by (task, doc_id), errors included: the questions a resumed run skips."""
    return {(row["task"], row["doc_id"]): row for row in read_records(cell)}


def drop_failed(cell: Path) -> int:
    """Forget the cell's failed questions (their records hold an error), so that a resumed run asks them again;
    return how many."""
    rows = read_records(cell)
    kept = [row for row in rows if not row["error"]]
    if len(kept) < len(rows):
        write_records(cell, kept)
    return len(rows) - len(kept)


def add_session(cell: Path, wall_s: float) -> dict:
    """Add one evaluation session's wall time to the cell's ``sessions.json``; return its totals, ``sessions`` and
    ``wall_s``."""
    path = cell / SESSIONS
    totals = json.loads(path.read_text()) if path.is_file() else {"sessions": 0, "wall_s": 0.0}
    totals = {"sessions": totals["sessions"] + 1, "wall_s": totals["wall_s"] + wall_s}
    write_atomically(path, json.dumps(totals))
    return totals


def mark_done(cell: Path, summary: dict) -> None:
    write_atomically(cell / DONE, json.dumps(summary, indent=1))
    (cell / FAILED).unlink(missing_ok=True)


def mark_failed(cell: Path, error: str) -> None:
    write_atomically(cell / FAILED, error + "\n")


def is_done(cell: Path) -> bool:
    return (cell / DONE).is_file()


def cell_status(cell: Path) -> str:
    """``done``, ``running`` (a process holds its lock), ``failed`` (its last evaluation raised) or ``unfinished``."""
    if is_done(cell):
        return "done"
    if is_locked(cell / LOCK):
        return "running"
    return "failed" if (cell / FAILED).is_file() else "unfinished"


def canonical(value) -> str:
    """``value`` (JSON types) as one JSON text, keys sorted: equal values, equal texts."""
    return json.dumps(value, sort_keys=True)


RECORD_COLUMNS = [f.name for f in fields(QuestionRecord)] + ["achieved_ratio"]
CELL_COLUMNS = ["model", "benchmark", "reducer", "budget", "params", "settings"]
JSON_COLUMNS = ("params", "settings")
COLUMNS = [*RECORD_COLUMNS, *CELL_COLUMNS, "cell", "status", "wall_s", "environment"]


def load_cells(root: Path) -> pd.DataFrame:
    """Every record of the cells under ``root`` (each a folder with a ``cell.json``, ``root`` itself included), one
    row per question, with the cell's keys (``params`` and ``settings`` as canonical JSON), its folder relative to
    ``root``, its ``status`` (``cell_status``), the evaluation's wall time over its sessions (``wall_s``) from its
    ``DONE`` and its ``environment`` (canonical JSON; None where the cell has no ``environment.json``). A cell
    without records yet has one row per task of its ``cell.json`` without a question (``doc_id`` missing), so that
    it shows with its status."""
    frames = []
    for path in sorted(root.rglob(CELL_KEYS)):
        cell = path.parent
        keys = json.loads(path.read_text())
        rows = read_records(cell) or [{"task": task} for task in keys.get("tasks", [])]
        if rows:
            frame = pd.DataFrame(rows).reindex(columns=RECORD_COLUMNS)
            for key in CELL_COLUMNS:
                frame[key] = canonical(keys.get(key)) if key in JSON_COLUMNS else keys.get(key)
            frame["cell"] = str(cell.relative_to(root))
            frame["status"] = cell_status(cell)
            frame["wall_s"] = json.loads((cell / DONE).read_text()).get("wall_s") if is_done(cell) else None
            environment = cell / ENVIRONMENT
            frame["environment"] = json.dumps(json.loads(environment.read_text())) if environment.is_file() else None
            frames.append(frame)
    if not frames:
        return pd.DataFrame(columns=COLUMNS)
    return pd.concat(frames, ignore_index=True)


def write_cell_keys(cell: Path, **keys) -> None:
    """Record what a cell holds (its model, benchmark and tasks, reducer setting, budget and the settings it is
    evaluated with), for ``load_cells``."""
    write_atomically(cell / CELL_KEYS, json.dumps(keys, indent=1))
