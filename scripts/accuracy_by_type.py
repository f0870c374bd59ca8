"""Accuracy per question type: the records of every cell under a results folder, joined with their benchmark's
test JSONL (a record's ``doc_id`` is its row there) for the row's ``task_type``.

    python -m scripts.accuracy_by_type outputs/eval_v4 [--data data/toybench]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pandas as pd

from runners.records import load_cells


def task_types(data: Path, task: str) -> list[str]:
    return [json.loads(line)["task_type"] for line in (data / task / "test.jsonl").read_text().splitlines()]


def accuracy_by_type(results: Path, data: Path) -> pd.DataFrame:
    """Accuracy (%) and question count per (reducer, budget, task, task_type)."""
    records = load_cells(results)
    if records.empty:
        raise FileNotFoundError(f"no records under {results}")
    types = {task: task_types(data, task) for task in records["task"].unique()}
    records["task_type"] = [
        types[task][doc_id] for task, doc_id in zip(records["task"], records["doc_id"], strict=True)
    ]
    grouped = records.groupby(["reducer", "budget", "task", "task_type"])["correct"]
    return pd.DataFrame({"accuracy": (100 * grouped.mean()).round(1), "questions": grouped.size()}).reset_index()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("results", type=Path, help="a results_dir of runners.evaluate")
    parser.add_argument("--data", type=Path, default=Path("data/toybench"), help="the benchmarks' data folder")
    args = parser.parse_args(argv)
    print(accuracy_by_type(args.results, args.data).to_markdown(index=False))


if __name__ == "__main__":
    main()
