"""Regression checks against a committed baseline."""

from __future__ import annotations

import json

import pandas as pd

from runners.regress import baseline_from, compare, load_baseline

TOLERANCE = {"accuracy": 2.0, "achieved_ratio": 0.02}


def summary(rows):
    return pd.DataFrame(rows, columns=["model", "reducer", "budget", "task", "accuracy", "achieved_ratio"])


BASE = summary([
    ("tiny", "sttm", 0.5, "toy_vnbench", 80.0, 0.48),
    ("tiny", "sttm", 0.5, "toy_mlvu", 70.0, 0.49),
    ("tiny", "random", 0.5, "toy_vnbench", 60.0, 0.50),
])  # fmt: skip


def test_unchanged_results_pass():
    assert not compare(BASE, BASE, TOLERANCE)["regressed"].any()


def test_small_moves_within_tolerance_pass_and_improvements_pass():
    now = BASE.assign(accuracy=BASE["accuracy"] + [-1.5, 10.0, 0.0], achieved_ratio=BASE["achieved_ratio"] + 0.01)
    assert not compare(now, BASE, TOLERANCE)["regressed"].any()


def test_an_accuracy_drop_a_ratio_change_and_a_missing_cell_fail():
    now = BASE.assign(accuracy=[75.0, 70.0, 60.0], achieved_ratio=[0.48, 0.60, 0.50]).iloc[:2]
    table = compare(now, BASE, TOLERANCE).set_index("task", append=True)
    assert table["regressed"].tolist() == [True, True, True]
    assert table["why"].tolist() == ["accuracy", "achieved ratio", "no result"]


def test_a_baseline_written_from_results_reads_back(tmp_path):
    path = tmp_path / "toy.json"
    path.write_text(json.dumps(baseline_from(BASE, TOLERANCE)))
    cells, tolerance = load_baseline(path)
    assert tolerance == TOLERANCE and not compare(BASE, cells, tolerance)["regressed"].any()
