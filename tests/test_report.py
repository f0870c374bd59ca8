"""Per-question records (durable, resumable) and the paper-layout report."""

from __future__ import annotations

import math

import pandas as pd
import pytest

from runners.records import (
    QuestionRecord,
    answers_file,
    append_answer,
    is_done,
    load_cells,
    mark_done,
    read_records,
    records_by_question,
    write_cell_keys,
)
from runners.report import main as report_main
from runners.report import paper_table, pareto_front, summarize

TASKS = ("vnbench", "videomme")


def record(task: str, doc_id: int, correct: bool, kept: int, prefill: float, error: str | None = None):
    return QuestionRecord(
        task=task, doc_id=doc_id, correct=None if error else correct, prediction="A", answer="A" if correct else "B",
        visual_tokens_before=100, visual_tokens_after=kept, vision_ms=10.0, reducer_ms=1.0, prefill_ms=prefill,
        ttft_ms=prefill + 11.0, error=error,
    )  # fmt: skip


def fill_cell(root, model, reducer, budget, correct_per_task, kept, prefill, failures=0, params=None):
    cell = root / model / reducer / str(budget) / (params or {}).get("variant", "cell")
    write_cell_keys(cell, model=model, benchmark="suite", reducer=reducer, budget=budget, params=params or {})
    for task, correct in zip(TASKS, correct_per_task, strict=True):
        for doc_id in range(4):
            append_answer(cell, record(task, doc_id, doc_id < correct, kept, prefill))
    for doc_id in range(failures):
        append_answer(cell, record("vnbench", 100 + doc_id, False, 0, math.nan, error="video missing"))
    return cell


def test_a_line_cut_short_by_a_crash_is_dropped_and_that_question_runs_again(tmp_path):
    cell = tmp_path / "cell"
    append_answer(cell, record("vnbench", 0, True, 50, 5.0))
    append_answer(cell, record("vnbench", 1, True, 50, 5.0))
    text = answers_file(cell).read_text()
    answers_file(cell).write_text(text[:-20])  # the crash cut the last line
    assert set(records_by_question(cell)) == {("vnbench", 0)}
    append_answer(cell, record("vnbench", 1, False, 50, 5.0))
    rows = read_records(cell)
    assert len(rows) == 2 and {r["doc_id"]: r["correct"] for r in rows} == {0: True, 1: False}


def test_a_record_stores_its_achieved_ratio(tmp_path):
    append_answer(tmp_path, record("vnbench", 0, True, 30, 5.0))
    assert read_records(tmp_path)[0]["achieved_ratio"] == 0.3


def test_done_marker(tmp_path):
    assert not is_done(tmp_path)
    mark_done(tmp_path, {"questions": 3})
    assert is_done(tmp_path) and not list(tmp_path.glob(".*tmp"))


@pytest.fixture
def results(tmp_path):
    fill_cell(tmp_path, "tiny", "none", 1.0, (4, 4), kept=100, prefill=100.0)
    fill_cell(tmp_path, "tiny", "sttm", 0.5, (4, 3), kept=50, prefill=50.0, failures=2)
    fill_cell(tmp_path, "tiny", "random", 0.5, (2, 2), kept=50, prefill=40.0)
    return tmp_path


def test_paper_table_relates_every_method_to_the_full_token_run(results):
    records = load_cells(results)
    table = paper_table(summarize(records))
    sttm = table.loc[("tiny", "sttm", 0.5)]
    assert sttm["vnbench"] == 100.0 and sttm["videomme"] == 75.0 and sttm["average"] == 87.5
    assert sttm["relative_%"] == 87.5 and sttm["prefill_speedup"] == 2.0 and sttm["achieved_ratio"] == 0.5
    assert sttm["ttft_speedup"] == pytest.approx(111 / 61, abs=0.01) and sttm["failed"] == 2
    assert table.loc[("tiny", "none", 1.0)]["relative_%"] == 100.0
    assert list(table.index.get_level_values("budget")) == [1.0, 0.5, 0.5]


def test_pareto_front_drops_dominated_points():
    points = pd.DataFrame({"prefill_speedup": [1.0, 2.0, 2.5, 1.5], "average": [90, 88, 80, 85]})
    assert pareto_front(points)[["prefill_speedup", "average"]].values.tolist() == [[1.0, 90], [2.0, 88], [2.5, 80]]


def test_report_writes_tables_and_plots(results, capsys):
    assert report_main([str(results), "--out", str(results / "out")]) == 0
    written = {p.name for p in (results / "out").iterdir()}
    assert written == {
        "table.md", "table.csv", "table.tex", "accuracy_vs_budget.png", "accuracy_vs_speedup.png", "ttft_breakdown.png"
    }  # fmt: skip
    assert "relative_%" in (results / "out" / "table.md").read_text()
    assert (results / "out" / "accuracy_vs_budget.png").read_bytes()[:4] == b"\x89PNG"


def test_report_on_an_empty_folder_fails(tmp_path):
    assert report_main([str(tmp_path)]) == 1


def test_failed_questions_are_counted_per_cell_even_where_a_task_or_a_cell_has_no_answer(tmp_path):
    fill_cell(tmp_path, "tiny", "none", 1.0, (4, 4), kept=100, prefill=100.0)
    sttm = fill_cell(tmp_path, "tiny", "sttm", 0.5, (4, 3), kept=50, prefill=50.0, failures=2)
    for doc_id in range(3):
        append_answer(sttm, record("nextqa", doc_id, False, 0, math.nan, error="video missing"))
    broken = tmp_path / "tiny" / "random" / "0.5"
    write_cell_keys(broken, model="tiny", reducer="random", budget=0.5)
    append_answer(broken, record("vnbench", 0, False, 0, math.nan, error="video missing"))
    table = paper_table(summarize(load_cells(tmp_path)))
    assert table.loc[("tiny", "sttm", 0.5), "failed"] == 5
    assert math.isnan(table.loc[("tiny", "sttm", 0.5), "nextqa"])
    assert math.isnan(table.loc[("tiny", "sttm", 0.5), "average"])  # no average over fewer benchmarks than the rest
    assert table.loc[("tiny", "random", 0.5), "failed"] == 1
    assert table.loc[("tiny", "none", 1.0), "failed"] == 0 and table.loc[("tiny", "none", 1.0), "average"] == 100.0
    assert report_main([str(tmp_path), "--out", str(tmp_path / "out")]) == 0
    header = (tmp_path / "out" / "table.md").read_text().splitlines()[0]
    assert "failed" in header and "nextqa" in header


def test_the_table_gives_prefill_tokens_per_question_and_wall_time(tmp_path):
    for reducer, tokens, wall in (("none", 1000, 30.0), ("sttm", 400, 12.0)):
        cell = tmp_path / "m" / reducer / "1"
        write_cell_keys(cell, model="m", reducer=reducer, budget=1.0 if reducer == "none" else 0.5)
        for doc_id in range(4):
            base = record("vnbench", doc_id, True, 100, 50.0)
            append_answer(cell, QuestionRecord(**{**base.__dict__, "prefill_tokens": tokens + doc_id}))
        mark_done(cell, {"questions": 4, "wall_s": wall})
    table = paper_table(summarize(load_cells(tmp_path))).reset_index().set_index("reducer")
    assert table.loc["none", "prefill_tokens_per_question"] == 1001.5 and table.loc["none", "wall_s"] == 30.0
    assert table.loc["sttm", "prefill_tokens_per_question"] == 401.5 and table.loc["sttm", "wall_s"] == 12.0


def test_settings_of_one_key_with_different_parameters_get_rows_named_by_what_differs(tmp_path):
    for variant, correct in (("official", (4, 4)), ("corrected", (2, 2))):
        params = {"variant": variant, "layer": 2, "budget": 0.5}
        fill_cell(tmp_path, "tiny", "sttm", 0.5, correct, kept=50, prefill=50.0, params=params)
    fill_cell(tmp_path, "tiny", "tome", 0.5, (3, 3), kept=50, prefill=50.0, params={"layer": 2, "budget": 0.5})
    table = paper_table(summarize(load_cells(tmp_path)))
    averages = table["average"].droplevel(["model", "budget"]).to_dict()
    assert averages == {"sttm (variant=corrected)": 50.0, "sttm (variant=official)": 100.0, "tome": 75.0}
