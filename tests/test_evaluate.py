"""The evaluation runner: reducer settings composed by Hydra, config checks before any model loads, cells through
lmms-eval keyed by their settings, resume, report."""

from __future__ import annotations

import errno
import json
import math
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch
from hydra.errors import MissingConfigException

from runners import evaluate, settings
from runners.benchmarks import benchmark_parts, builtin_hf_home, index_tasks, prepare
from runners.evaluate import Cell, claimed, locked, plan_cells, run

ROOT = Path(__file__).resolve().parents[1]


def compose_evaluate(tmp_path: Path, *overrides: str):
    return settings.compose_evaluate(
        f"results_dir={tmp_path / 'results'}", f"model.pretrained={tmp_path / 'tiny'}", "++model.build_if_missing=true",
        *overrides,
    )  # fmt: skip


def config(tmp_path: Path, *overrides: str):
    return compose_evaluate(tmp_path, f"benchmark.data_dir={tmp_path / 'data'}", *overrides)


def cells_by_reducer(cfg) -> dict[str, Cell]:
    return {cell.reducer: cell for cell in plan_cells(cfg)}


def test_full_tokens_always_run_first(tmp_path):
    cells = plan_cells(config(tmp_path, "reducers=[vidcom2]", "budget=0.3"))
    assert [(cell.reducer, cell.budget) for cell in cells] == [("none", 1.0), ("vidcom2", 0.3)]


def test_each_chosen_config_is_a_setting_whose_parameters_the_command_line_sets(tmp_path):
    cells = cells_by_reducer(config(tmp_path, "reducers=[sttm,tome]", "reducers.sttm.params.variant=corrected"))
    assert list(cells) == ["none", "sttm", "tome"]
    assert cells["sttm"].params == {"root_level": 1, "variant": "corrected", "budget_gap": 0.2, "budget": 0.5,
                                    "layer": 2}  # fmt: skip
    assert cells["sttm"].build_reducer().variant == "corrected"
    official = cells_by_reducer(config(tmp_path, "reducers=[sttm]"))["sttm"]
    assert official.params["variant"] == "official" and official.path != cells["sttm"].path
    assert official.path.parent.parent == cells["sttm"].path.parent.parent  # both under toybench/sttm


def test_two_settings_of_one_method_run_side_by_side_under_their_names(tmp_path):
    cells = cells_by_reducer(
        config(tmp_path, "reducers=[sttm,sttm_corrected]", "+reducers.sttm_l3={name: sttm, params: {layer: 3}}")
    )
    settings = [(key, cell.method, cell.params.get("variant"), cell.params.get("layer")) for key, cell in cells.items()]
    assert settings == [("none", None, None, None), ("sttm", "sttm", "official", 2),
                        ("sttm_corrected", "sttm", "corrected", 2), ("sttm_l3", "sttm", None, 3)]  # fmt: skip
    assert len({cell.path for cell in cells.values()}) == 4


def test_an_unknown_reducer_fails_before_any_work_naming_it(tmp_path):
    with pytest.raises(MissingConfigException, match="reducers/sttn"):
        config(tmp_path, "reducers=[sttn]")
    with pytest.raises(ValueError, match=r"reducers.mine.name: unknown reducer 'sttn'; choose one of: .*sttm"):
        plan_cells(config(tmp_path, "reducers=[]", "+reducers.mine={name: sttn}"))
    assert not (tmp_path / "tiny").exists() and not (tmp_path / "data").exists()


@pytest.mark.parametrize(
    ("override", "problem"),
    [
        ("reducers.sttm.params.variant=fixed", r"reducers.sttm on toybench: unknown STTM variant 'fixed'"),
        (
            "+reducers.sttm.params.varient=fixed",
            r"reducers.sttm on toybench: reducer 'sttm' takes no parameter 'varient'; its parameters: .*variant",
        ),
        ("+reducers.sttm.params.budget=0.3", r"reducers.sttm on toybench: params.budget: the budget is the run's"),
        ("+reducers.sttm.thresholds=[0.9]", r"reducers.sttm: unknown keys \['thresholds'\]"),
        ("+reducers.none={name: tome}", r"reducers.none: 'none' names the full-token cells"),
    ],
)
def test_bad_reducer_settings_fail_before_any_work_naming_the_setting(tmp_path, override, problem):
    with pytest.raises(ValueError, match=problem):
        plan_cells(config(tmp_path, "reducers=[sttm]", override))
    assert not (tmp_path / "tiny").exists()


def test_seeds_run_each_stochastic_reducer_once_per_seed_each_seed_a_cell(tmp_path):
    cells = plan_cells(config(tmp_path, "reducers=[random,tome]", "seeds=[0,1,2]"))
    seeded = [cell for cell in cells if cell.reducer == "random"]
    assert [cell.build_reducer().seed for cell in seeded] == [0, 1, 2] and len({cell.path for cell in seeded}) == 3
    assert [cell.reducer for cell in cells] == ["none", "random", "random", "random", "tome"]
    assert "seed" not in cells[-1].params
    once = cells_by_reducer(config(tmp_path, "reducers=[random]"))["random"]
    assert once.params["seed"] == 0 and once.path == seeded[0].path  # the run without seeds made seed 0's cell


@pytest.mark.parametrize(
    ("reducers", "seeds", "problem"),
    [
        ("[random]", "[0,0]", r"seeds must be a list of distinct integers, got \[0, 0\]"),
        ("[random]", "[]", r"seeds must be a list of distinct integers"),
        ("[random]", "[0.5]", r"seeds must be a list of distinct integers"),
        ("[tome,sttm]", "[0,1]", r"seeds=\[0, 1\]: none of the run's reducers \(tome, sttm\) takes a seed"),
    ],
)
def test_bad_seeds_fail_before_any_work(tmp_path, reducers, seeds, problem):
    with pytest.raises(ValueError, match=problem):
        plan_cells(config(tmp_path, f"reducers={reducers}", f"seeds={seeds}"))
    assert not (tmp_path / "tiny").exists()


def test_reducers_without_brackets_are_refused_before_any_model_loads(tmp_path):
    command = [sys.executable, "-m", "runners.evaluate", "reducers=sttm", f"results_dir={tmp_path / 'results'}",
               f"model.pretrained={tmp_path / 'tiny'}", "model.build_if_missing=true",
               f"hydra.run.dir={tmp_path / 'hydra'}"]  # fmt: skip
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode != 0
    assert "reducers=sttm: choose reducer configs as a list, 'reducers=[sttm]'" in done.stderr
    assert not (tmp_path / "tiny").exists()


def test_a_budget_outside_zero_one_fails(tmp_path):
    with pytest.raises(ValueError, match=r"budget must lie in \(0, 1\]"):
        plan_cells(config(tmp_path, "budget=1.5"))


def test_a_sweep_runs_every_cell_joins_correctness_resumes_and_reports(tmp_path, capsys):
    cfg = config(tmp_path, "reducers=[vidcom2]", "limit=2", "benchmark.tasks=[toy_nextqa,toy_vnbench]")
    report = run(cfg)
    for cell in plan_cells(cfg):
        records = [json.loads(line) for line in (cell.path / "records.jsonl").open()]
        assert len(records) == 4 and all(isinstance(r["correct"], bool) for r in records)
        assert (cell.path / "DONE").is_file() and (cell.path / "lmms_eval_results.json").is_file()
        assert not list(cell.path.glob("answers.rank*.jsonl"))  # records.jsonl replaced them
    keys = json.loads((cells_by_reducer(cfg)["vidcom2"].path / "cell.json").read_text())
    params = {"channel_fraction": 0.5, "temperature": 0.01, "budget": 0.5}
    settings = keys.pop("settings")
    assert keys == {"model": "tiny_llava_onevision", "benchmark": "toybench", "tasks": ["toy_nextqa", "toy_vnbench"],
                    "reducer": "vidcom2", "budget": 0.5, "method": "vidcom2", "params": params}  # fmt: skip
    assert settings["limit"] == 2 and settings["benchmark"]["tasks"] == ["toy_nextqa", "toy_vnbench"]
    assert settings["model"]["name"] == "tiny_llava_onevision" and "results_dir" not in settings
    assert "vidcom2" in (report / "table.md").read_text()
    full, reduced = (
        {(r["task"], r["doc_id"]): r for r in map(json.loads, (cell.path / "records.jsonl").open())}
        for cell in plan_cells(cfg)
    )  # fmt: skip
    for key, row in reduced.items():  # the prompt the LLM prefills: its visual tokens reduced
        assert row["visual_tokens_after"] < row["visual_tokens_before"] == full[key]["visual_tokens_before"]
        removed = row["visual_tokens_before"] - row["visual_tokens_after"]
        assert row["prefill_tokens"] == full[key]["prefill_tokens"] - removed
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
    cell = plan_cells(cfg)[0].path
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
    cells = plan_cells(cfg)
    parts = [(part.name, part.kind, list(part.tasks)) for part in benchmark_parts(cfg.benchmark)]
    assert parts == [
        ("vnbench", "vnbench", ["vnbench"]), ("videomme", "lmms_eval", ["videomme"]),
        ("longvideobench", "lmms_eval", ["longvideobench_val_v"]), ("mlvu", "lmms_eval", ["mlvu_dev"]),
        ("nextqa", "lmms_eval", ["nextqa_mc_test"]), ("egoschema", "lmms_eval", ["egoschema_subset"]),
    ]  # fmt: skip
    mlvu_tome = next(cell.path for cell in cells if (cell.benchmark.name, cell.reducer) == ("mlvu", "tome"))
    assert mlvu_tome.parent.parent == tmp_path / "results" / "tiny_llava_onevision" / "mlvu" / "tome"
    assert mlvu_tome.name == "budget_0.5" and len(cells) == 12
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
    paper = {cell.benchmark.name: cell.params for cell in cells if cell.reducer == "sttm_paper"}
    assert paper["vnbench"] == {"root_level": 1, "variant": "official", "threshold": 0.8, "temporal_threshold": 0.65,
                                "layer": 2}  # fmt: skip
    assert list(paper) == ["vnbench", "videomme", "longvideobench"] and paper["videomme"]["temporal_threshold"] == 0.6


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
    cells = [Cell(cfg.benchmark, "none", None, {}, 1.0, path) for path in paths]
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


def test_a_failing_cell_stays_unfinished_while_the_others_run_then_the_run_fails_naming_it(
    tmp_path, monkeypatch, caplog
):
    import lmms_eval.evaluator

    original = lmms_eval.evaluator.simple_evaluate

    def exits_under_a_reducer(model, **arguments):
        if model.reducer is not None:
            raise SystemExit("video path: nowhere.mp4 does not exist, please check")  # as lmms-eval's task code does
        return original(model=model, **arguments)

    def disk_full(records, out):
        raise OSError(errno.ENOSPC, "No space left on device")

    cfg = config(tmp_path, "reducers=[random]", "limit=1", "benchmark.tasks=[toy_nextqa]")
    cells = cells_by_reducer(cfg)
    failure = r"1 cell\(s\) failed, left unfinished: .*toybench/random/\w+/budget_0.5"
    monkeypatch.setattr(lmms_eval.evaluator, "simple_evaluate", exits_under_a_reducer)
    monkeypatch.setattr(evaluate, "write_report", disk_full)
    with pytest.raises(OSError, match="No space left"):
        run(cfg)
    assert re.search(failure, caplog.text)  # named even where the report could not be written
    monkeypatch.undo()
    monkeypatch.setattr(lmms_eval.evaluator, "simple_evaluate", exits_under_a_reducer)
    with pytest.raises(RuntimeError, match=failure):
        run(cfg)
    assert (cells["none"].path / "DONE").is_file()
    assert not (cells["random"].path / "DONE").exists()
    table = pd.read_csv(tmp_path / "results" / "tiny_llava_onevision" / "toybench" / "report" / "table.csv")
    assert dict(zip(table["reducer"], table["status"], strict=True)) == {"none": "done", "random": "failed"}
    assert math.isnan(table.set_index("reducer").loc["random", "average"])
    monkeypatch.setattr(lmms_eval.evaluator, "simple_evaluate", original)
    run(cfg)
    done = json.loads((cells["random"].path / "DONE").read_text())
    assert done["sessions"] == 3 and done["questions"] == 1  # the wall time of both failed sessions counts too
    assert done["wall_s"] == json.loads((cells["random"].path / "sessions.json").read_text())["wall_s"] > 0
    assert not (cells["random"].path / "FAILED").exists()


def test_lmms_evals_own_tasks_are_indexed_only_for_a_builtin_benchmark(tmp_path):
    cfg = config(tmp_path, "benchmark.tasks=[toy_nextqa]")
    prepare(cfg)
    tasks = index_tasks(benchmark_parts(cfg.benchmark)).all_tasks
    assert "toy_nextqa" in tasks and "videomme" not in tasks


@pytest.mark.parametrize(
    "override",
    ["limit=3", "benchmark.tasks=[toy_vnbench]", "positions=compact", "kv_reuse=true", "seed=1", "reproduce=true",
     "model.pretrained=elsewhere", "model.max_new_tokens=4", "+model.system_prompt=Answer.", "budget=0.3",
     "reducers.random.params.seed=1"],
)  # fmt: skip
def test_every_setting_that_can_change_an_answer_keys_the_cells(tmp_path, override):
    base = ("reducers=[random]", "limit=2", "benchmark.tasks=[toy_nextqa]")
    before, after = (cells_by_reducer(config(tmp_path, *base, *more)) for more in ((), (override,)))
    assert before["random"].path != after["random"].path
    reducer_own = override.startswith(("budget", "reducers"))  # full tokens have no budget or parameters
    assert (before["none"].path != after["none"].path) == (not reducer_own)


@pytest.mark.parametrize("override", ["results_dir=x", "logger=wandb", "offline=false", "retry_failed=false"])
def test_settings_that_cannot_change_an_answer_leave_the_cells_as_they_are(tmp_path, override):
    base = ("reducers=[random]", "limit=2", "benchmark.tasks=[toy_nextqa]")
    before, after = (cells_by_reducer(config(tmp_path, *base, *more)) for more in ((), (override,)))
    relative = {key: cell.path.relative_to(cell.path.parents[4]) for key, cell in before.items()}
    assert relative == {key: cell.path.relative_to(cell.path.parents[4]) for key, cell in after.items()}


def test_a_rerun_with_another_limit_evaluates_cells_of_its_own_over_its_questions(tmp_path):
    from runners.records import QuestionRecord, append_answer, read_records

    first = config(tmp_path, "reducers=[random]", "limit=2", "benchmark.tasks=[toy_nextqa]")
    run(first)
    second = config(tmp_path, "reducers=[random]", "limit=3", "benchmark.tasks=[toy_nextqa]")
    full = cells_by_reducer(second)["none"].path
    for doc_id, error in ((50, None), (0, "video unreadable: decoding timed out")):  # left by a killed session
        append_answer(full, QuestionRecord("toy_nextqa", doc_id, None, "A", "A", 10, 10, error=error))
    report = run(second)
    for old, new in zip(plan_cells(first), plan_cells(second), strict=True):
        assert old.path != new.path and len(read_records(old.path)) == 2
        rows = {row["doc_id"]: row for row in read_records(new.path)}
        assert sorted(rows) == [0, 1, 2] and json.loads((new.path / "DONE").read_text())["questions"] == 3
        assert rows[0]["error"] is None and isinstance(rows[0]["correct"], bool)  # the failed question, asked again
    table = pd.read_csv(report / "table.csv")  # over the cells of this run's settings only
    assert list(table["questions"]) == [3, 3] and list(table["status"]) == ["done", "done"]


@pytest.mark.parametrize(
    ("override", "problem"),
    [
        ("positions=bogus", r"positions='bogus': choose one of: original, compact"),
        ("limit=0", r"limit=0: give the number of questions per task, a whole number from 1, or limit=null"),
        ("limit=-1", r"limit=-1: give the number of questions per task"),
        ("limit=0.5", r"limit=0.5: give the number of questions per task"),
        ("benchmark.tasks=[toy_nextqa,toy_nope]", r"benchmark.tasks: unknown task\(s\) 'toy_nope' for a toybench "
         r"benchmark; choose from: toy_vnbench"),
        ("benchmark.tasks=[]", r"benchmark.tasks must list tasks"),
        ("kv_reuse=maybe", r"kv_reuse='maybe': give kv_reuse=true or kv_reuse=false"),
        ("seed=-1", r"seed=-1: give a whole number from 0"),
        ("model.max_frames.default=0", r"model.max_frames.default=0: give a whole number of frames from 1"),
        ("model.target_fps=0", r"model.target_fps=0: give a positive number"),
        ("++benchmark.frame_cap=long", r"benchmark.frame_cap='long' is not a key of model.max_frames"),
        ("budget=abc", r"budget must be a number in \(0, 1\]"),
    ],
)  # fmt: skip
def test_bad_run_settings_fail_before_any_work_naming_the_setting_and_the_fix(tmp_path, override, problem):
    with pytest.raises(ValueError, match=problem):
        run(config(tmp_path, "reducers=[random]", override))
    assert not (tmp_path / "tiny").exists() and not (tmp_path / "data").exists() and not (tmp_path / "results").exists()


def test_compact_positions_with_an_m_rope_model_fail_before_any_work(tmp_path):
    with pytest.raises(ValueError, match="positions=compact renumbers LLaVA-OneVision's positions; qwen2_vl keeps"):
        plan_cells(compose_evaluate(tmp_path, "model=qwen2_vl_7b", "positions=compact"))


@pytest.mark.parametrize(
    ("pretrained", "problem"),
    [
        ("/nonexistent/model", r"model.pretrained: folder not found: /nonexistent/model \(give a checkpoint folder"),
        ("nobody/absent-model", r"model.pretrained=nobody/absent-model: neither a folder here nor a model in the "
         r"Hugging Face cache, and the run is offline: .* or pass offline=false"),
    ],
)  # fmt: skip
def test_a_model_that_is_not_there_is_named_before_any_data_is_written(tmp_path, pretrained, problem):
    cfg = config(tmp_path, "reducers=[random]", f"model.pretrained={pretrained}", "model.build_if_missing=false")
    with pytest.raises(ValueError, match=problem):
        run(cfg)
    assert not (tmp_path / "data").exists() and not (tmp_path / "results").exists()


RUNNER = (sys.executable, "-m", "runners.evaluate")


def cli(tmp_path: Path, *overrides: str, runner: tuple = RUNNER, env: dict | None = None):
    command = [*runner, "reducers=[random]", "limit=1", "benchmark.tasks=[toy_nextqa]",
               f"results_dir={tmp_path / 'results'}", f"benchmark.data_dir={tmp_path / 'data'}",
               f"hydra.run.dir={tmp_path / 'hydra'}", *overrides]  # fmt: skip
    return subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300, env=env)


def offline_flags_unset(tmp_path: Path) -> dict:
    environment = {key: value for key, value in os.environ.items() if not key.endswith("_OFFLINE")}
    return environment | {"HF_HOME": str(tmp_path / "hf")}


def test_the_offline_flags_are_set_before_the_hub_libraries_are_imported(tmp_path):
    script = "import runners.evaluate, huggingface_hub.constants as h, datasets.config as d\n"
    script += "print(h.HF_HUB_OFFLINE, d.HF_HUB_OFFLINE)"
    done = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=300,
                          env=offline_flags_unset(tmp_path))  # fmt: skip
    assert done.stdout.split() == ["True", "True"], done.stderr[-2000:]


def test_offline_false_lets_the_hub_libraries_download_though_they_were_imported_offline():
    import datasets.config
    import huggingface_hub.constants

    from runners.offline import use_network

    try:
        use_network(True)
        assert not huggingface_hub.constants.is_offline_mode() and not datasets.config.HF_DATASETS_OFFLINE
        assert os.environ["HF_HUB_OFFLINE"] == "0"
    finally:
        use_network(False)
    assert huggingface_hub.constants.is_offline_mode() and os.environ["HF_HUB_OFFLINE"] == "1"


# the sockets the runner opens, seen through Python's audit events, printed as it exits
CONNECTIONS = (
    "import atexit, sys\n"
    "attempts = []\n"
    "sys.addaudithook(lambda event, args: attempts.append(event) if event in ('socket.connect', 'socket.getaddrinfo')"
    " else None)\n"
    "atexit.register(lambda: print('network attempts:', len(attempts), file=sys.stderr))\n"
    "import runners.evaluate\n"
    "runners.evaluate.main()\n"
)


@pytest.mark.skipif(
    shutil.which("unshare") is None or subprocess.run(["unshare", "-rn", "true"]).returncode != 0,
    reason="needs `unshare -rn` (a user and network namespace) to run the runner without a network",
)
def test_a_hub_model_missing_from_the_cache_fails_at_once_without_trying_the_network(tmp_path):
    done = cli(tmp_path, "model.pretrained=nobody/absent-model", runner=("unshare", "-rn", sys.executable, "-c",
               CONNECTIONS), env=offline_flags_unset(tmp_path))  # fmt: skip
    assert done.returncode != 0
    assert "model.pretrained=nobody/absent-model: neither a folder here nor a model in the Hugging Face cache" in (
        done.stderr
    )
    assert "network attempts: 0" in done.stderr and not (tmp_path / "data").exists()


def test_ctrl_c_ends_with_one_line_naming_the_cell_to_resume(tmp_path):
    script = (
        "import sys, runners.evaluate as e\n"
        "def interrupted(*arguments): raise KeyboardInterrupt  # Ctrl-C while a cell is evaluated\n"
        "e.evaluate_cell = interrupted\n"
        "e.main()\n"
    )
    done = cli(tmp_path, f"model.pretrained={tmp_path / 'tiny'}", "model.build_if_missing=true",
               runner=(sys.executable, "-c", script))  # fmt: skip
    full = plan_cells(config(tmp_path, "reducers=[random]", "limit=1", "benchmark.tasks=[toy_nextqa]"))[0]
    assert done.returncode == 130, done.stderr[-3000:]
    assert done.stderr.splitlines()[-1] == (
        f"interrupted while evaluating {full.path}: its answers are kept; run the same command again to resume it"
    )
    assert "Traceback" not in done.stderr
    assert "circular import" not in done.stderr  # lmms-eval's registry found the model's entry point whole
