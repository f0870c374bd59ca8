"""Per-question records (durable, resumable) and the paper-layout report."""

from __future__ import annotations

import errno
import hashlib
import json
import math
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch

from runners.files import locked
from runners.plots import pareto_front
from runners.records import (
    ENVIRONMENT,
    QuestionRecord,
    answers_file,
    append_answer,
    is_done,
    load_cells,
    mark_done,
    mark_failed,
    read_records,
    records_by_question,
    write_cell_keys,
)
from runners.report import (
    ACROSS_SEEDS,
    AVERAGE,
    DIFFERENCE,
    RELATIVE,
    paired_differences,
    paper_table,
    summarize,
)
from runners.report import main as report_main

TASKS = ("vnbench", "videomme")
ROOT = Path(__file__).resolve().parents[1]


def record(task: str, doc_id: int, correct: bool, kept: int, prefill: float, error: str | None = None, video=None):
    return QuestionRecord(
        task=task, doc_id=doc_id, correct=None if error else correct, prediction="A", answer="A" if correct else "B",
        visual_tokens_before=100, visual_tokens_after=kept, video=video, vision_ms=10.0, reducer_ms=1.0,
        prefill_ms=prefill, ttft_ms=prefill + 11.0, error=error,
    )  # fmt: skip


def fill_cell(root, model, reducer, budget, correct_per_task, kept, prefill, failures=0, params=None, per_video=None,
              settings=None):  # fmt: skip
    """A cell of 4 questions per task, the first ``correct`` of each right; ``per_video`` questions share a video
    (none named without it); ``settings``: those of its run (none recorded without them)."""
    params = params or {}
    cell = root / model / reducer / str(budget) / params.get("variant", f"seed{params.get('seed', '')}")
    cell = cell / hashlib.sha1(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:8] if settings else cell
    write_cell_keys(cell, model=model, benchmark="suite", reducer=reducer, budget=budget, params=params,
                    settings=settings)  # fmt: skip
    for task, correct in zip(TASKS, correct_per_task, strict=True):
        for doc_id in range(4):
            video = None if per_video is None else f"{task}/{doc_id // per_video}.mp4"
            append_answer(cell, record(task, doc_id, doc_id < correct, kept, prefill, video=video))
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
    assert sttm["vnbench"] == 66.67 and sttm["videomme"] == 75.0 and sttm["average"] == 70.83  # 2 failures: wrong
    assert sttm["answered_average"] == 87.5 and sttm["failed"] == 2  # 4 of 4 and 3 of 4 answered right
    assert sttm["questions"] == 10 and sttm["status"] == "unfinished"  # no DONE
    assert sttm["relative_%"] == 70.83 and sttm["prefill_speedup"] == 2.0 and sttm["achieved_ratio"] == 0.5
    assert sttm["ttft_speedup"] == pytest.approx(111 / 61, abs=0.01)
    assert table.loc[("tiny", "none", 1.0)]["relative_%"] == 100.0
    assert list(table.index.get_level_values("budget")) == [1.0, 0.5, 0.5]


def test_pareto_front_drops_dominated_points():
    points = pd.DataFrame({"prefill_speedup": [1.0, 2.0, 2.5, 1.5], "average": [90, 88, 80, 85]})
    assert pareto_front(points)[["prefill_speedup", "average"]].values.tolist() == [[1.0, 90], [2.0, 88], [2.5, 80]]


def test_pareto_front_of_flops_keeps_the_cheapest_points():
    """For a share of FLOPs lower is better: a point costing more for less accuracy is dominated."""
    points = pd.DataFrame({"flops_%": [100.0, 50.0, 60.0, 20.0], "average": [90, 88, 85, 80]})
    assert pareto_front(points, "flops_%", higher_is_better=False)["flops_%"].tolist() == [20.0, 50.0, 100.0]


def test_report_writes_tables_and_plots(results, capsys):
    assert report_main([str(results), "--out", str(results / "out")]) == 0
    written = {p.name for p in (results / "out").iterdir()}
    assert written == {
        "table.md", "table.csv", "table.tex", "intervals.csv", "accuracy_vs_budget.png", "accuracy_vs_cost.png",
        "ttft_breakdown.png",
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
    sttm = table.loc[("tiny", "sttm", 0.5)]
    assert sttm["failed"] == 5 and sttm["nextqa"] == 0.0  # its three questions failed: wrong, as lmms-eval scores
    assert sttm["average"] == round((100 * 4 / 6 + 75 + 0) / 3, 2)
    assert math.isnan(sttm["answered_average"])  # none of nextqa answered
    assert table.loc[("tiny", "random", 0.5), "failed"] == 1 and table.loc[("tiny", "random", 0.5), "vnbench"] == 0
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


def markdown_rows(path) -> dict[str, dict[str, str]]:
    """The first markdown table of a report, as {reducer: {column: cell}}."""
    lines = [line for line in path.read_text().split("\n\n")[0].splitlines() if line.startswith("|")]
    header = [cell.strip() for cell in lines[0].strip("|").split("|")]
    rows = [dict(zip(header, (cell.strip() for cell in line.strip("|").split("|")), strict=True)) for line in lines[2:]]
    return {row["reducer"]: row for row in rows}


def test_every_table_gives_the_difference_to_full_tokens_with_its_interval_and_marks_noise(results):
    assert report_main([str(results), "--out", str(results / "out")]) == 0
    rows = markdown_rows(results / "out" / "table.md")
    assert rows["none"][DIFFERENCE] == "" and rows["none"][RELATIVE] == ""
    # random drops half the answers of every benchmark: its interval holds no zero; STTM's one miss may be noise
    assert rows["random"][DIFFERENCE].startswith("-50.0 [") and not rows["random"][DIFFERENCE].endswith("~")
    assert rows["random"][RELATIVE].startswith("50.0 [") and not rows["random"][RELATIVE].endswith("~")
    assert rows["sttm"][DIFFERENCE].startswith("-12.5 [") and rows["sttm"][DIFFERENCE].endswith("]~")
    markdown = (results / "out" / "table.md").read_text()
    assert "~: the interval contains 0" in markdown and "paired bootstrap over videos" in markdown
    assert f"torch {torch.__version__.split('+')[0]}" in markdown and ", commit " in markdown
    assert "Δ vs full per benchmark" in markdown
    csv = pd.read_csv(results / "out" / "table.csv")
    assert {DIFFERENCE, RELATIVE} <= set(csv.columns)
    latex = (results / "out" / "table.tex").read_text()
    assert r"$\Delta$ vs full (95\% CI)" in latex and r"relative \% (95\% CI)" in latex
    assert r"]\textasciitilde" in latex and "% reported with lmms_eval" in latex
    intervals = pd.read_csv(results / "out" / "intervals.csv").set_index(["reducer", "task"])
    assert intervals.loc[("sttm", "vnbench"), ["difference_low", "difference_high"]].tolist() == [0.0, 0.0]
    assert intervals.loc[("random", AVERAGE), "difference_high"] < 0


def test_questions_about_one_video_are_resampled_together(tmp_path):
    fill_cell(tmp_path, "tiny", "none", 1.0, (4, 4), kept=100, prefill=100.0, per_video=2)
    fill_cell(tmp_path, "tiny", "sttm", 0.5, (2, 4), kept=50, prefill=50.0, per_video=2)
    fill_cell(tmp_path / "apart", "tiny", "none", 1.0, (4, 4), kept=100, prefill=100.0)
    fill_cell(tmp_path / "apart", "tiny", "sttm", 0.5, (2, 4), kept=50, prefill=50.0)
    by_video = paired_differences(load_cells(tmp_path / "tiny")).set_index("task")
    by_question = paired_differences(load_cells(tmp_path / "apart")).set_index("task")
    assert by_video["videos"].to_dict() == {"videomme": 2, "vnbench": 2, AVERAGE: 4}
    assert by_question["videos"].to_dict() == {"videomme": 4, "vnbench": 4, AVERAGE: 8}
    assert by_video.loc["vnbench", "difference"] == by_question.loc["vnbench", "difference"] == -50.0
    # the two misses share one of the two videos: a draw holds it twice, once or never
    assert by_video.loc["vnbench", ["difference_low", "difference_high"]].tolist() == [-100.0, 0.0]


def test_the_seeds_of_a_stochastic_reducer_are_one_row_with_their_mean_and_interval(tmp_path):
    fill_cell(tmp_path, "tiny", "none", 1.0, (4, 4), kept=100, prefill=100.0)
    for seed, correct in ((0, 2), (1, 3), (2, 4)):
        params = {"seed": seed, "budget": 0.5}
        fill_cell(tmp_path, "tiny", "random", 0.5, (correct, correct), kept=50, prefill=50.0, params=params)
    fill_cell(tmp_path, "tiny", "tome", 0.5, (3, 3), kept=50, prefill=50.0, params={"budget": 0.5})
    assert report_main([str(tmp_path), "--out", str(tmp_path / "out")]) == 0
    rows = markdown_rows(tmp_path / "out" / "table.md")
    assert set(rows) == {"none", "random", "tome"} and float(rows["random"]["average"]) == 75.0
    assert rows["random"]["seeds"] == "3" and rows["tome"]["seeds"] == "1"
    assert rows["random"][ACROSS_SEEDS] == "75.0 [12.9, 137.1]"  # 75 ± t(0.975, 2) · 25 / √3
    assert rows["tome"][ACROSS_SEEDS] == ""
    assert rows["random"][DIFFERENCE].startswith("-25.0 [")  # each question scored by its mean over seeds


def test_the_intervals_are_reproducible_and_their_seed_is_overridable(results):
    for out, seed in (("a", "0"), ("b", "0"), ("c", "7")):
        assert report_main([str(results), "--out", str(results / out), "--seed", seed, "--resamples", "500"]) == 0
    assert (results / "a" / "intervals.csv").read_text() == (results / "b" / "intervals.csv").read_text()
    assert "500 draws, seed 7" in (results / "c" / "table.md").read_text()


def test_the_report_names_the_environment_each_cell_was_evaluated_in(results):
    environment = {"lmms_eval": "0.7.3", "transformers": "5.24.0", "torch": "2.14.1", "commit": "abc123"}
    for cell in results.rglob("cell.json"):
        (cell.parent / ENVIRONMENT).write_text(json.dumps(environment))
    assert report_main([str(results), "--out", str(results / "out")]) == 0
    markdown = (results / "out" / "table.md").read_text()
    assert "evaluated with lmms_eval 0.7.3, transformers 5.24.0, torch 2.14.1, commit abc123 (3 cells)" in markdown
    assert "reported with" not in markdown


def test_cells_of_runs_with_different_settings_get_models_named_by_the_settings_that_differ(tmp_path):
    for limit, correct in ((2, (2, 2)), (4, (4, 3))):
        settings = {"limit": limit, "seed": 0, "model": {"dtype": "float32"}, "benchmark": {"name": "suite"}}
        fill_cell(tmp_path, "tiny", "none", 1.0, (4, 4), kept=100, prefill=100.0, settings=settings)
        fill_cell(tmp_path, "tiny", "sttm", 0.5, correct, kept=50, prefill=50.0, settings=settings)
    table = paper_table(summarize(load_cells(tmp_path)))
    assert table["average"].droplevel("budget").to_dict() == {
        ("tiny [limit=2]", "none"): 100.0, ("tiny [limit=2]", "sttm"): 50.0,
        ("tiny [limit=4]", "none"): 100.0, ("tiny [limit=4]", "sttm"): 87.5,
    }  # fmt: skip
    assert table["questions"].tolist() == [8, 8, 8, 8]  # each row over its run's questions alone
    assert table.loc[("tiny [limit=4]", "sttm", 0.5), "relative_%"] == 87.5  # against its own run's full tokens


def test_cells_not_done_show_as_such_never_as_ordinary_rows(tmp_path):
    mark_done(fill_cell(tmp_path, "tiny", "none", 1.0, (4, 4), kept=100, prefill=100.0), {"wall_s": 1.0})
    failed = fill_cell(tmp_path, "tiny", "tome", 0.5, (4, 4), kept=50, prefill=50.0)
    mark_failed(failed, "RuntimeError: lmms-eval returned no results for vnbench")
    unfinished = tmp_path / "tiny" / "sttm" / "0.5"  # answered, not yet scored
    write_cell_keys(unfinished, model="tiny", benchmark="suite", reducer="sttm", budget=0.5, params={})
    for task in TASKS:
        append_answer(unfinished, QuestionRecord(task, 0, None, "A", "A", 100, 50))
    running = tmp_path / "tiny" / "random" / "0.5"  # another process holds it, before its first answer
    write_cell_keys(running, model="tiny", benchmark="suite", tasks=list(TASKS), reducer="random", budget=0.5)
    with locked(running / ".lock"):
        table = paper_table(summarize(load_cells(tmp_path))).droplevel(["model", "budget"])
    assert table["status"].to_dict() == {"none": "done", "random": "running", "sttm": "unfinished", "tome": "failed"}
    assert table.loc["random", "questions"] == 0 and table.loc["sttm", "questions"] == 2
    assert table.loc[["random", "sttm"], ["vnbench", "videomme", "average"]].isna().all().all()


FULL_DISK = """
import json, os, sys
from pathlib import Path
from runners.report import main
results, more, out = sys.argv[1], sys.argv[2], Path(sys.argv[3])
assert main([results, "--out", str(out)]) == 0
before = {path.name: path.read_bytes() for path in out.iterdir()}
filler = os.open(out.parent / "filler", os.O_WRONLY | os.O_CREAT)
for size in (1 << 16, 1):
    try:
        while True:
            os.write(filler, b"0" * size)
    except OSError:
        pass
try:
    main([more, "--out", str(out)])
    error = None
except OSError as raised:
    error = raised.errno
after = {path.name: path.read_bytes() for path in out.iterdir()}
print(json.dumps({"error": error, "same": before == after, "files": sorted(after)}))
"""


def can_mount_tmpfs() -> bool:
    return shutil.which("unshare") is not None and (
        subprocess.run(["unshare", "-rm", "sh", "-c", "mount -t tmpfs tmpfs /mnt"], capture_output=True).returncode == 0
    )


@pytest.mark.skipif(not can_mount_tmpfs(), reason="needs `unshare -rm` and tmpfs to fill a disk of its own")
def test_a_full_disk_leaves_the_previous_report_whole(tmp_path):
    results, more = tmp_path / "results", tmp_path / "more"  # more: a report that needs more room than the first
    fill_cell(results, "tiny", "none", 1.0, (4, 4), kept=100, prefill=100.0)
    fill_cell(results, "tiny", "sttm", 0.5, (4, 3), kept=50, prefill=50.0, failures=2)
    shutil.copytree(results, more)
    for reducer in ("tome", "fastv", "dycoke", "vidcom2", "visionzip", "divprune", "pool", "framefusion"):
        for budget in (0.5, 0.3, 0.15):
            fill_cell(more, "tiny", reducer, budget, (3, 2), kept=int(100 * budget), prefill=100.0 * budget)
    disk = tmp_path / "disk"
    disk.mkdir()
    command = f'mount -t tmpfs -o size=2m tmpfs "{disk}" && "{sys.executable}" -c "$0" "$1" "$2" "$3"'
    arguments = [FULL_DISK, str(results), str(more), str(disk / "report")]
    done = subprocess.run(["unshare", "-rm", "sh", "-c", command, *arguments], cwd=ROOT, capture_output=True,
                          text=True, timeout=300)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    outcome = json.loads(done.stdout.splitlines()[-1])
    assert outcome["error"] == errno.ENOSPC and outcome["same"]  # the good report of before, whole
    assert outcome["files"] == sorted(["table.md", "table.csv", "table.tex", "intervals.csv", "accuracy_vs_budget.png",
                                       "accuracy_vs_cost.png", "ttft_breakdown.png"])  # fmt: skip
