"""The evaluation runner: config checks before any model loads, cells through lmms-eval, resume, report."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir

from runners.evaluate import CONFIGS, cell_dir, plan_cells, run


def config(tmp_path: Path, *overrides: str):
    with initialize_config_dir(config_dir=str(CONFIGS), version_base="1.3"):
        return compose(
            config_name="evaluate",
            overrides=[
                f"results_dir={tmp_path / 'results'}",
                f"benchmark.data_dir={tmp_path / 'data'}",
                f"model.pretrained={tmp_path / 'tiny'}",
                *overrides,
            ],
        )


def test_full_tokens_always_run_first(tmp_path):
    cells = plan_cells(config(tmp_path, "reducers=[vidcom2]", "budget=0.3"))
    assert [(name, budget) for name, budget, _ in cells] == [("none", 1.0), ("vidcom2", 0.3)]


def test_an_unknown_reducer_fails_before_any_work_naming_the_choices(tmp_path):
    with pytest.raises(ValueError, match="reducers: no config 'sttn'.*choose from: .*sttm"):
        plan_cells(config(tmp_path, "reducers=[sttn]"))
    assert not (tmp_path / "tiny").exists() and not (tmp_path / "data").exists()


def test_a_budget_outside_zero_one_fails(tmp_path):
    with pytest.raises(ValueError, match=r"budget must lie in \(0, 1\]"):
        plan_cells(config(tmp_path, "budget=1.5"))


def test_a_sweep_runs_every_cell_joins_correctness_resumes_and_reports(tmp_path, capsys):
    cfg = config(tmp_path, "reducers=[vidcom2]", "limit=2", "benchmark.tasks=[toy_nextqa,toy_vnbench]")
    report = run(cfg)
    for reducer, budget in (("none", 1.0), ("vidcom2", 0.5)):
        cell = cell_dir(cfg, reducer, budget)
        records = [json.loads(line) for line in (cell / "records.jsonl").open()]
        assert len(records) == 4 and all(isinstance(r["correct"], bool) for r in records)
        assert (cell / "DONE").is_file() and (cell / "lmms_eval_results.json").is_file()
    assert "vidcom2" in (report / "table.md").read_text()
    stamps = {p: p.stat().st_mtime_ns for p in (tmp_path / "results").rglob("records.jsonl")}
    run(cfg)
    assert stamps == {p: p.stat().st_mtime_ns for p in (tmp_path / "results").rglob("records.jsonl")}


def test_cells_are_logged_to_wandb_offline(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("WANDB_ERROR_REPORTING", "false")
    cfg = config(
        tmp_path, "reducers=[random]", "limit=1", "benchmark.tasks=[toy_nextqa]", "logger=wandb",
        f"logger.dir={tmp_path / 'wandb'}",
    )  # fmt: skip
    run(cfg)
    runs = list((tmp_path / "wandb" / "wandb").glob("offline-run-*"))
    assert len(runs) == 2 and all(list(r.glob("run-*.wandb")) for r in runs)


def test_two_identical_runs_give_identical_answers(tmp_path):
    answers = []
    try:
        for attempt in ("first", "second"):
            cfg = config(
                tmp_path / attempt, "reducers=[random,sttm]", "limit=3", "benchmark.tasks=[toy_vnbench]",
                "reproduce=true", f"benchmark.data_dir={tmp_path / 'data'}",
            )  # fmt: skip
            run(cfg)
            rows = [
                json.loads(line) for path in sorted((tmp_path / attempt).rglob("records.jsonl")) for line in path.open()
            ]
            answers.append([(r["task"], r["doc_id"], r["prediction"], r["visual_tokens_after"]) for r in rows])
    finally:
        torch.use_deterministic_algorithms(False)
    assert answers[0] == answers[1] and len(answers[0]) == 9


def vnbench_data(root: Path) -> tuple[Path, Path]:
    """A small VNBench in the STTM authors' format, on synthetic videos; one video is missing."""
    from runners.toybench import generate_split

    jsonl = generate_split("toy_vnbench", "test", root / "toy", seed=0, count=2)
    videos = root / "vnbench" / "videos"
    videos.mkdir(parents=True)
    entries = []
    for row in map(json.loads, jsonl.open()):
        entries.append({key: row[key] for key in ("question", "options", "answer", "task_type", "try", "videoID")})
        entries[-1]["question_id"] = f"{row['videoID']}_try{row['try']}"
    (root / "toy" / "toy_vnbench" / "videos" / "test0000.mp4").rename(videos / "test0000.mp4")
    entries.append(dict(entries[0], videoID="absent", question_id="absent_try0"))
    annotations = root / "vnbench" / "VNBench-main-4try_v2.json"
    annotations.write_text(json.dumps(entries))
    return annotations, videos


def test_vnbench_from_local_annotations_scores_both_ways(tmp_path):
    annotations, videos = vnbench_data(tmp_path)
    cfg = config(
        tmp_path, "benchmark=vnbench", "reducers=[]", f"benchmark.annotations={annotations}",
        f"benchmark.videos={videos}", f"benchmark.data_dir={tmp_path / 'tasks'}",
    )  # fmt: skip
    run(cfg)
    cell = cell_dir(cfg, "none", 1.0)
    results = json.loads((cell / "lmms_eval_results.json").read_text())["vnbench"]
    assert {"accuracy,none", "vnbench_official,none", "vnbench_entry_accuracy,none"} <= set(results)
    records = [json.loads(line) for line in (cell / "records.jsonl").open()]
    errors = [r for r in records if r["error"]]
    assert len(records) == 9 and len(errors) == 5  # 4 tries of the second video and the absent one


def test_missing_vnbench_annotations_fail_before_any_model_loads(tmp_path):
    cfg = config(tmp_path, "benchmark=vnbench", f"benchmark.annotations={tmp_path / 'nowhere.json'}")
    with pytest.raises(ValueError, match="VNBench annotations not found: .*nowhere.json"):
        run(cfg)
    assert not (tmp_path / "tiny").exists()


def test_kv_reuse_with_a_query_aware_reducer_or_compact_positions_fails_before_any_work(tmp_path):
    with pytest.raises(ValueError, match="compact positions renumber"):
        plan_cells(config(tmp_path, "reducers=[sttm]", "kv_reuse=true", "positions=compact"))
    assert not (tmp_path / "tiny").exists()
