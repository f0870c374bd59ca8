"""wandb logging of a cell, offline."""

from __future__ import annotations

import math

from runners.records import QuestionRecord, append_answer, load_cells, write_cell_keys
from runners.tracking import cell_metrics, log_cell


def make_cell(root):
    cell = root / "cell"
    write_cell_keys(cell, model="tiny", reducer="sttm", budget=0.5)
    for doc_id in range(4):
        record = QuestionRecord(
            task="vnbench", doc_id=doc_id, correct=doc_id % 2 == 0, prediction="A", answer="A",
            visual_tokens_before=100, visual_tokens_after=40, prefill_ms=10.0, ttft_ms=12.0,
        )  # fmt: skip
        append_answer(cell, record)
    return load_cells(root)


def test_metrics_of_a_cell(tmp_path):
    metrics = cell_metrics(make_cell(tmp_path))
    assert metrics["vnbench/accuracy"] == 50.0 and metrics["vnbench/achieved_ratio"] == 0.4
    assert metrics["vnbench/questions"] == 4 and math.isnan(metrics["vnbench/vision_ms"])


def test_an_offline_run_is_written(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("WANDB_ERROR_REPORTING", "false")
    records = make_cell(tmp_path)
    run_dir = log_cell("tiny-sttm-0.5", {"budget": 0.5}, records, directory=tmp_path)
    assert run_dir.name.startswith("offline-run-")
    assert list(run_dir.glob("run-*.wandb")), "the offline run has no data file"
