"""Data parallelism: two CPU processes under torchrun (gloo) give exactly the records and table of one process."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parents[1]


def sweep(tmp_path: Path, name: str, processes: int) -> Path:
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}"]
    overrides = ["reducers=[vidcom2]", "limit=5", "benchmark.tasks=[toy_nextqa]", f"results_dir={tmp_path / name}",
                 f"benchmark.data_dir={tmp_path / 'data'}", f"model.pretrained={tmp_path / 'tiny'}",
                 "model.build_if_missing=true"]  # fmt: skip
    command = [*(launcher if processes > 1 else [sys.executable]), "-m", "runners.evaluate", *overrides]
    subprocess.run(command, cwd=ROOT, check=True, capture_output=True, text=True)
    return tmp_path / name / "tiny_llava_onevision" / "toybench"


def records(root: Path) -> dict:
    rows = {}
    for path in sorted(root.rglob("records*.jsonl")):
        for line in path.read_text().splitlines():
            row = json.loads(line)
            key = (path.parent.parent.parent.name, row["doc_id"])  # <reducer>/<setting>/budget_<b>/
            assert key not in rows, f"{key} recorded twice"
            rows[key] = row
    return rows


def test_two_processes_give_the_records_and_table_of_one(tmp_path):
    one, two = sweep(tmp_path, "one", 1), sweep(tmp_path, "two", 2)
    single, split = records(one), records(two)
    assert single.keys() == split.keys() and len(single) == 10
    fields = ("prediction", "correct", "visual_tokens_before", "visual_tokens_after", "error")
    assert all(tuple(single[k][f] for f in fields) == tuple(split[k][f] for f in fields) for k in single)
    assert {row["extra"]["rank"] for row in split.values()} == {0, 1}
    columns = ["reducer", "budget", "toy_nextqa", "average", "achieved_ratio", "failed"]
    tables = [pd.read_csv(root / "report" / "table.csv")[columns] for root in (one, two)]
    pd.testing.assert_frame_equal(*tables)
