"""The evaluation runner: config checks before any model loads, cells through lmms-eval, resume, report."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir

from runners.evaluate import (
    CONFIGS,
    Cell,
    benchmark_parts,
    builtin_hf_home,
    cell_dir,
    claimed,
    index_tasks,
    locked,
    plan_cells,
    prepare,
    run,
)


def compose_evaluate(tmp_path: Path, *overrides: str):
    with initialize_config_dir(config_dir=str(CONFIGS), version_base="1.3"):
        overrides = [
            f"results_dir={tmp_path / 'results'}", f"model.pretrained={tmp_path / 'tiny'}",
            "++model.build_if_missing=true", *overrides,
        ]  # fmt: skip
        return compose(config_name="evaluate", overrides=overrides)


def config(tmp_path: Path, *overrides: str):
    return compose_evaluate(tmp_path, f"benchmark.data_dir={tmp_path / 'data'}", *overrides)


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
        cell = cell_dir(cfg, "toybench", reducer, budget)
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
    cell = cell_dir(cfg, "vnbench", "none", 1.0)
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


def test_kv_reuse_with_a_query_aware_reducer_fails_before_any_work(tmp_path):
    with pytest.raises(ValueError, match="query-agnostic reducer; 'framefusion' looks at the question"):
        plan_cells(config(tmp_path, "reducers=[sttm,framefusion]", "kv_reuse=true", "positions=compact"))
    assert not (tmp_path / "tiny").exists()


def test_the_paper_suite_runs_six_benchmarks_each_in_cells_of_its_own(tmp_path):
    cfg = compose_evaluate(tmp_path, "benchmark=paper", "reducers=[tome]")
    parts = [(part.name, part.kind, list(part.tasks)) for part in benchmark_parts(cfg.benchmark)]
    assert parts == [
        ("vnbench", "vnbench", ["vnbench"]), ("videomme", "lmms_eval", ["videomme"]),
        ("longvideobench", "lmms_eval", ["longvideobench_val_v"]), ("mlvu", "lmms_eval", ["mlvu_dev"]),
        ("nextqa", "lmms_eval", ["nextqa_mc_test"]), ("egoschema", "lmms_eval", ["egoschema_subset"]),
    ]  # fmt: skip
    assert (
        cell_dir(cfg, "mlvu", "tome", 0.5)
        == tmp_path / "results" / "tiny_llava_onevision" / "mlvu" / "tome" / "budget_0.5"
    )
    assert benchmark_parts(cfg.benchmark)[0].frame_cap == "needle"


def test_an_unknown_benchmark_kind_fails_naming_the_kinds(tmp_path):
    with pytest.raises(ValueError, match="benchmark.kind 'youtube' is not supported; choose from: toybench, vnbench"):
        plan_cells(config(tmp_path, "benchmark.kind=youtube"))


def test_paper_thresholds_are_looked_up_per_benchmark_before_any_work(tmp_path):
    with pytest.raises(ValueError, match="no paper setting for qwen2_vl_7b on 'mlvu'"):
        plan_cells(compose_evaluate(tmp_path, "model=qwen2_vl_7b", "benchmark=paper", "reducers=[sttm_paper]"))
    cells = plan_cells(
        compose_evaluate(tmp_path, "model=qwen2_vl_7b", "benchmark=paper_qwen2_vl", "reducers=[sttm_paper]")
    )
    assert [name for name, _, _ in cells] == ["none", "sttm_paper"]


def test_builtin_benchmarks_share_one_hf_home(tmp_path):
    cfg = compose_evaluate(tmp_path, "benchmark=paper", f"hf_home={tmp_path / 'hf'}")
    builtin = [part for part in benchmark_parts(cfg.benchmark) if part.kind == "lmms_eval"]
    assert builtin_hf_home(builtin) == tmp_path / "hf"
    cfg = compose_evaluate(tmp_path, "benchmark=paper", f"benchmark.parts.mlvu.hf_home={tmp_path / 'other'}")
    builtin = [part for part in benchmark_parts(cfg.benchmark) if part.kind == "lmms_eval"]
    with pytest.raises(ValueError, match="different hf_home folders .*other"):
        builtin_hf_home(builtin)


def test_missing_builtin_data_fails_before_any_model_loads_naming_the_folder(tmp_path):
    hf_home = tmp_path / "hf"
    cfg = compose_evaluate(tmp_path, "benchmark=videomme", f"hf_home={hf_home}")
    with pytest.raises(
        FileNotFoundError, match=f"videomme: dataset cache not found: {hf_home}/datasets/lmms-eval___video-mme"
    ):
        run(cfg)
    (hf_home / "datasets" / "lmms-eval___video-mme").mkdir(parents=True)
    with pytest.raises(
        FileNotFoundError, match=f"videomme: video folder not found: {hf_home}/videomme/data.*get_task_dict"
    ):
        run(cfg)
    assert not (tmp_path / "tiny").exists() and not (hf_home / "videomme").exists()


def test_a_cell_another_job_holds_is_left_to_it(tmp_path):
    from accelerate import Accelerator

    cfg = config(tmp_path)
    paths = [tmp_path / name for name in ("free", "held", "done")]
    cells = [Cell(cfg.benchmark, "none", 1.0, None, path) for path in paths]
    (paths[2] / "DONE").parent.mkdir()
    (paths[2] / "DONE").write_text("{}")
    evaluated = []
    with locked(paths[1] / ".lock"):
        for cell in claimed(cells, Accelerator(cpu=True)):
            with locked(cell.path / ".lock", wait=False) as free:
                evaluated.append((cell.path, free))
    assert evaluated == [(paths[0], False)]  # and held while this job evaluates it
    with locked(paths[0] / ".lock", wait=False) as free:
        assert free  # then let go


def test_a_failing_cell_stays_unfinished_while_the_others_run_then_the_run_fails_naming_it(tmp_path, monkeypatch):
    import lmms_eval.evaluator

    evaluate = lmms_eval.evaluator.simple_evaluate

    def exits_under_a_reducer(model, **arguments):
        if model.reducer is not None:
            raise SystemExit("video path: nowhere.mp4 does not exist, please check")  # as lmms-eval's task code does
        return evaluate(model=model, **arguments)

    cfg = config(tmp_path, "reducers=[random]", "limit=1", "benchmark.tasks=[toy_nextqa]")
    monkeypatch.setattr(lmms_eval.evaluator, "simple_evaluate", exits_under_a_reducer)
    with pytest.raises(RuntimeError, match=r"1 cell\(s\) failed, left unfinished: .*toybench/random/budget_0.5"):
        run(cfg)
    assert (cell_dir(cfg, "toybench", "none", 1.0) / "DONE").is_file()
    assert not (cell_dir(cfg, "toybench", "random", 0.5) / "DONE").exists()
    assert "none" in (tmp_path / "results" / "tiny_llava_onevision" / "toybench" / "report" / "table.md").read_text()
    monkeypatch.setattr(lmms_eval.evaluator, "simple_evaluate", evaluate)
    run(cfg)
    assert (cell_dir(cfg, "toybench", "random", 0.5) / "DONE").is_file()


def test_lmms_evals_own_tasks_are_indexed_only_for_a_builtin_benchmark(tmp_path):
    cfg = config(tmp_path, "benchmark.tasks=[toy_nextqa]")
    prepare(cfg)
    tasks = index_tasks(benchmark_parts(cfg.benchmark)).all_tasks
    assert "toy_nextqa" in tasks and "videomme" not in tasks
