"""Regression checks against a committed baseline, down to a broken reducer caught through the real harness."""

from __future__ import annotations

import json
import shutil

import pandas as pd
import torch

from runners.evaluate import run
from runners.provenance import describe, environment
from runners.records import QuestionRecord, append_answer, write_cell_keys
from runners.regress import baseline_environment, baseline_from, check, compare, load_baseline, main
from runners.settings import compose_evaluate
from sttm import api
from sttm.api import Reduction, VideoTokens, keep_everything, reducer_class

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


def test_a_baseline_written_from_results_reads_back_and_names_what_wrote_it(tmp_path):
    path = tmp_path / "toy.json"
    path.write_text(json.dumps(baseline_from(BASE, TOLERANCE)))
    cells, tolerance = load_baseline(path)
    assert tolerance == TOLERANCE and not compare(BASE, cells, tolerance)["regressed"].any()
    assert set(baseline_environment(path)) == {"lmms_eval", "transformers", "torch", "commit"}


def test_the_check_prints_the_environments_of_the_baseline_and_of_now(tmp_path, capsys):
    results, baseline = tmp_path / "results", tmp_path / "toy.json"
    for reducer, budget in (("none", 1.0), ("sttm", 0.5)):
        cell = results / reducer
        write_cell_keys(cell, model="tiny", reducer=reducer, budget=budget)
        for doc_id in range(4):
            append_answer(cell, QuestionRecord(task="toy_vnbench", doc_id=doc_id, correct=doc_id > 0, prediction="A",
                                               answer="A", visual_tokens_before=10, visual_tokens_after=5))  # fmt: skip
    assert main([str(results), str(baseline), "--write"]) == 0
    assert main([str(results), str(baseline)]) == 0
    assert f"baseline: {describe(environment())}; now: {describe(environment())}" in capsys.readouterr().out
    content = json.loads(baseline.read_text())
    baseline.write_text(json.dumps({key: value for key, value in content.items() if key != "environment"}))
    assert main([str(results), str(baseline)]) == 0
    assert "baseline: environment not recorded; now: lmms_eval " in capsys.readouterr().out


class KeepFirstTokens(reducer_class("tome")):
    """A broken ToMe: as many tokens as ToMe keeps, at the same layer, but the video's first ones, whatever they
    show; the achieved ratio stays that of ToMe, so only accuracy can give it away."""

    def reduce(self, video: VideoTokens) -> Reduction:
        kept, every = torch.arange(super().reduce(video).num_kept), keep_everything(video)
        return Reduction(every.tokens[kept], every.boxes[kept], every.num_patches[kept], video.num_tokens)


def test_a_reducer_that_keeps_the_wrong_tokens_fails_the_check_of_the_trained_model(tmp_path, monkeypatch, capsys):
    cfg = compose_evaluate(
        "budget=0.5", "reducers=[tome]", "limit=12", "benchmark.tasks=[toy_nextqa]",
        f"benchmark.data_dir={tmp_path / 'data'}", f"results_dir={tmp_path / 'results'}",
    )  # fmt: skip
    results, baseline = tmp_path / "results", tmp_path / "toy.json"
    run(cfg)
    assert main([str(results), str(baseline), "--write"]) == 0
    assert main([str(results), str(baseline)]) == 0
    shutil.rmtree(next(results.rglob("tome/*/budget_0.5")))
    monkeypatch.setitem(api._REGISTRY, "tome", KeepFirstTokens)
    run(cfg)
    assert main([str(results), str(baseline)]) == 1
    output = capsys.readouterr().out
    assert "REGRESSION: 1 of 2 cells" in output
    table = check(results, baseline)
    assert table.loc[table["reducer"] == "tome", "why"].tolist() == ["accuracy"]
