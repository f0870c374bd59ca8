"""Per-question records of one evaluation cell (model × reducer × budget × benchmark), written so that a crash
loses nothing and a re-run duplicates nothing.

A cell is a folder. ``records.jsonl`` gets one line per answered question, flushed and synced as it is written;
a line cut short by a crash is dropped when the file is read back, so that question runs again. Whole files
(``config.yaml``, results) are written to a temporary name and renamed into place. ``DONE`` marks a finished cell.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import pandas as pd

RECORDS = "records.jsonl"
DONE = "DONE"


@dataclass(frozen=True)
class QuestionRecord:
    """What one question of one cell produced. Times in milliseconds; NaN where not measured."""

    task: str
    doc_id: int
    correct: bool | None
    prediction: str
    answer: str
    visual_tokens_before: int
    visual_tokens_after: int
    vision_ms: float = math.nan
    reducer_ms: float = math.nan
    prefill_ms: float = math.nan
    ttft_ms: float = math.nan
    decode_ms_per_token: float = math.nan
    peak_memory_mb: float = math.nan
    prefill_tokens: int | None = None
    error: str | None = None
    extra: dict = field(default_factory=dict)

    @property
    def achieved_ratio(self) -> float:
        if self.visual_tokens_before == 0:
            return math.nan
        return self.visual_tokens_after / self.visual_tokens_before


def write_atomically(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file in the same folder and a rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.tmp")
    with open(temporary, "w") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(temporary, path)


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


def records_file(cell: Path, rank: int = 0) -> Path:
    """Where a process appends: ``records.jsonl``, or ``records.rank<r>.jsonl`` for the other data-parallel ranks."""
    return cell / (RECORDS if rank == 0 else f"records.rank{rank}.jsonl")


def append_record(cell: Path, record: QuestionRecord, rank: int = 0) -> None:
    """Add one question's record to the cell, durably."""
    cell.mkdir(parents=True, exist_ok=True)
    row = asdict(record) | {"achieved_ratio": record.achieved_ratio}
    path = records_file(cell, rank)
    drop_partial_line(path)
    with open(path, "a") as handle:
        handle.write(json.dumps(row) + "\n")
        handle.flush()
        os.fsync(handle.fileno())


def read_records(cell: Path) -> list[dict]:
    """The cell's complete records from every rank's file, last one per (task, doc_id), ``records.jsonl`` read
    last so that its merged rows win; a line cut short by a crash is dropped."""
    latest: dict[tuple[str, int], dict] = {}
    for path in [*sorted(cell.glob("records.rank*.jsonl")), cell / RECORDS]:
        if not path.is_file():
            continue
        for line in path.read_text().splitlines():
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                continue
            latest[(row["task"], row["doc_id"])] = row
    return list(latest.values())


def rewrite_records(cell: Path, rows: list[dict]) -> None:
    """Replace the cell's records with ``rows`` in ``records.jsonl`` (atomically), merging the ranks' files."""
    write_atomically(cell / RECORDS, "".join(json.dumps(row) + "\n" for row in rows))
    for path in cell.glob("records.rank*.jsonl"):
        path.unlink()


def records_by_question(cell: Path) -> dict[tuple[str, int], dict]:
    """The cell's records keyed by (task, doc_id), errors included: the questions a resumed run skips."""
    return {(row["task"], row["doc_id"]): row for row in read_records(cell)}


def mark_done(cell: Path, summary: dict) -> None:
    write_atomically(cell / DONE, json.dumps(summary, indent=1))


def is_done(cell: Path) -> bool:
    return (cell / DONE).is_file()


RECORD_COLUMNS = [f.name for f in fields(QuestionRecord)] + ["achieved_ratio"]


def load_cells(root: Path, cell_keys: tuple[str, ...] = ("model", "reducer", "budget")) -> pd.DataFrame:
    """Every record under ``root``, one row per question, with the cell's keys read from its ``cell.json`` and the
    evaluation's wall time (``wall_s``) from its ``DONE``."""
    frames = []
    for path in sorted(root.rglob(RECORDS)):
        cell = path.parent
        keys = json.loads((cell / "cell.json").read_text()) if (cell / "cell.json").is_file() else {}
        rows = read_records(cell)
        if rows:
            frame = pd.DataFrame(rows)
            for key in cell_keys:
                frame[key] = keys.get(key)
            frame["cell"] = str(cell.relative_to(root))
            frame["wall_s"] = json.loads((cell / DONE).read_text()).get("wall_s") if is_done(cell) else None
            frames.append(frame)
    if not frames:
        return pd.DataFrame(columns=[*RECORD_COLUMNS, *cell_keys, "cell", "wall_s"])
    return pd.concat(frames, ignore_index=True)


def write_cell_keys(cell: Path, **keys) -> None:
    """Record which model, reducer and budget a cell holds, for ``load_cells``."""
    write_atomically(cell / "cell.json", json.dumps(keys, indent=1))
