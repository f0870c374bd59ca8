from __future__ import annotations

import json

import pytest

from runners.records import write_cell_keys
from scripts.accuracy_by_type import accuracy_by_type


def write_jsonl(path, rows) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))


def test_each_record_takes_the_type_of_its_row_in_the_test_split(tmp_path):
    write_jsonl(
        tmp_path / "data" / "toy_vnbench" / "test.jsonl", [{"task_type": t} for t in ["ret", "cnt", "ret", "cnt"]]
    )
    cell = tmp_path / "results" / "random" / "budget_0.15"
    cell.mkdir(parents=True)
    write_cell_keys(cell, model="tiny", reducer="random", budget=0.15)
    answers = {0: True, 1: False, 2: False, 3: False}
    write_jsonl(
        cell / "records.jsonl", [{"task": "toy_vnbench", "doc_id": d, "correct": c} for d, c in answers.items()]
    )

    table = accuracy_by_type(tmp_path / "results", tmp_path / "data").set_index("task_type")
    assert table.loc["ret", "accuracy"] == 50.0 and table.loc["ret", "questions"] == 2
    assert table.loc["cnt", "accuracy"] == 0.0 and table.loc["cnt", "questions"] == 2
    assert set(table["reducer"]) == {"random"}


def test_a_folder_without_records_is_an_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="no records under"):
        accuracy_by_type(tmp_path, tmp_path)
