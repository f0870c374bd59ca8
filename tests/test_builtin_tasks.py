"""lmms-eval's built-in video tasks offline: where they keep their data, a fabricated Video-MME run end to end
through the runner (a missing video becomes a recorded error), and the CLI wrapper that fails where lmms-eval's
CLI exits 0."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from omegaconf import OmegaConf

from runners.evaluate import join_correctness
from runners.records import QuestionRecord, append_answer, read_records
from runners.settings import CONFIGS
from runners.tasks.builtin import BUILTIN_TASKS, MVBENCH_TASKS, check_builtin_data, dataset_cache, is_correct
from runners.toybench.render import BACKGROUNDS, background, write_video

ROOT = Path(__file__).resolve().parents[1]
OFFLINE = os.environ | {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
TASK_YAMLS = {
    "videomme": "videomme/videomme.yaml",
    "longvideobench_val_v": "longvideobench/longvideobench_val_v.yaml",
    "mlvu_dev": "mlvu/mlvu_dev.yaml",
    "nextqa_mc_test": "nextqa/nextqa_mc_test.yaml",
    "egoschema_subset": "egoschema/egoschema_subset.yaml",
    **{f"mvbench_{name}": f"mvbench/mvbench_{name}.yaml" for name in MVBENCH_TASKS},
}


def test_the_offline_data_table_follows_lmms_evals_task_yamls_and_covers_the_benchmark_configs():
    from lmms_eval.utils import load_yaml_config

    tasks = Path(importlib.util.find_spec("lmms_eval").submodule_search_locations[0]) / "tasks"
    for name, task in BUILTIN_TASKS.items():
        config = load_yaml_config(str(tasks / TASK_YAMLS[name]), mode="simple")
        assert (config["task"], config["dataset_path"], config.get("dataset_name")) == (name, task.dataset, task.config)
        assert Path(task.videos).is_relative_to(config["dataset_kwargs"]["cache_dir"])
    configs = [OmegaConf.load(path) for path in (CONFIGS / "benchmark").glob("*.yaml")]
    builtin = [task for config in configs if config.get("kind") == "lmms_eval" for task in config.tasks]
    assert sorted(builtin) == sorted(BUILTIN_TASKS)


COLOURS = ["gray", "navy", "olive", "teal", "plum"]
PROCESS_RESULTS = {
    "videomme": "videomme_process_results",
    "longvideobench_val_v": "longvideobench_process_results",
    "mlvu_dev": "mlvu_process_results",
    "nextqa_mc_test": "nextqa_mc_process_results",
    "egoschema_subset": "egoschema_process_results_generation",
    **{f"mvbench_{name}": "mvbench_process_results" for name in MVBENCH_TASKS},
}


def answered_b(task: str) -> dict:
    """A document of ``task`` whose right answer is option B, with the fields its process_results reads."""
    if task.startswith("mvbench_"):
        return {"candidates": COLOURS[:4], "answer": COLOURS[1]}
    return {
        "videomme": videomme_doc("gray", "B"),
        "longvideobench_val_v": {
            "id": "q", "duration_group": 15, "question_category": "S2E", "correct_choice": 1,
            **{f"option{i}": option for i, option in enumerate([*COLOURS[:4], "N/A"])},
        },
        "mlvu_dev": {"question": "What colour is it?", "task_type": "count", "answer": "B"},
        "nextqa_mc_test": {**{f"a{i}": option for i, option in enumerate(COLOURS)}, "answer": 1},
        "egoschema_subset": {
            "video_idx": "v", "answer": "1",
            "option": [f"{letter}. {option}" for letter, option in zip("ABCDE", COLOURS, strict=True)],
        },
    }[task]  # fmt: skip


@pytest.mark.parametrize("task", sorted(BUILTIN_TASKS))
def test_correctness_is_read_from_each_tasks_own_scoring(task, monkeypatch, tmp_path):
    import nltk

    for module in BUILTIN_TASKS[task].needs:
        pytest.importorskip(module)
    monkeypatch.setenv("HF_HOME", str(tmp_path))  # the tasks' code reads it when imported
    monkeypatch.setattr(nltk, "download", lambda *args, **kwargs: True)  # NExT-QA's code downloads nltk data then
    code = importlib.import_module(f"lmms_eval.tasks.{TASK_YAMLS[task].split('/')[0]}.utils")
    score = getattr(code, PROCESS_RESULTS[task])
    assert is_correct(task, score(answered_b(task), ["B"]))
    assert not is_correct(task, score(answered_b(task), ["C"]))


def test_correctness_joins_each_record_by_task_and_question(tmp_path):
    for doc_id in range(3):
        record = QuestionRecord(
            "videomme", doc_id, None, "A", "A", 10, 10, error="video missing" if doc_id == 2 else None
        )
        append_answer(tmp_path, record)
    scores = [{"pred_answer": "A", "answer": answer} for answer in ("B", "A", "A")]
    join_correctness(
        tmp_path, {"videomme": [{"doc_id": i, "videomme_perception_score": s} for i, s in enumerate(scores)]}
    )
    assert {row["doc_id"]: row["correct"] for row in read_records(tmp_path)} == {0: False, 1: True, 2: None}


def test_a_task_whose_code_needs_a_missing_module_fails_naming_it(tmp_path, monkeypatch):
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ModuleNotFoundError, match="longvideobench_val_v: lmms-eval's code for it imports decord"):
        check_builtin_data(["longvideobench_val_v"], tmp_path)


def videomme_doc(video: str, answer: str) -> dict:
    return {
        "question_id": f"{video}-1", "videoID": video, "video_id": video, "duration": "short", "domain": "Knowledge",
        "sub_category": "Astronomy", "task_type": "Counting Problem", "url": "", "question": "What colour is it?",
        "options": ["A. Gray.", "B. Navy.", "C. Olive.", "D. Teal."], "answer": answer,
    }  # fmt: skip


def fake_videomme(hf_home: Path, work: Path, docs: list[dict]) -> None:
    """Video-MME as lmms-eval finds it offline: the `datasets` cache a load of lmms-eval/Video-MME leaves under
    hf_home/datasets (built by datasets' own parquet builder) and a tiny video in hf_home/videomme/data for each
    question whose videoID names a background colour."""
    for doc in docs:
        if doc["videoID"] in BACKGROUNDS:
            write_video([background([doc["videoID"]])] * 4, hf_home / "videomme" / "data" / f"{doc['videoID']}.mp4")
    parquet = work / "test.parquet"
    pq.write_table(pa.Table.from_pylist(docs), parquet)
    from datasets.packaged_modules.parquet.parquet import Parquet

    builder = Parquet(
        cache_dir=str(work / "build"), dataset_name="Video-MME", hash="fake", data_files={"test": str(parquet)}
    )
    builder.download_and_prepare()
    cache = dataset_cache(BUILTIN_TASKS["videomme"], hf_home) / "default" / "0.0.0" / "fake"
    cache.parent.mkdir(parents=True)
    shutil.move(builder.cache_dir, cache)


def evaluate(tmp_path: Path, *overrides: str) -> subprocess.CompletedProcess:
    """The runner on the fake Video-MME under tmp_path/hf, as a command."""
    command = [
        sys.executable, "-m", "runners.evaluate", "benchmark=videomme", f"hf_home={tmp_path / 'hf'}", "limit=null",
        f"results_dir={tmp_path / 'results'}", f"model.pretrained={tmp_path / 'tiny'}", "model.build_if_missing=true",
        f"hydra.run.dir={tmp_path / 'hydra'}", *overrides,
    ]  # fmt: skip
    return subprocess.run(command, cwd=ROOT, env=OFFLINE, capture_output=True, text=True, timeout=600)


def test_videomme_runs_offline_with_a_missing_video_recorded_as_an_error(tmp_path):
    docs = [videomme_doc("gray", "A"), videomme_doc("navy", "B"), videomme_doc("absent", "C")]
    fake_videomme(tmp_path / "hf", tmp_path, docs)
    done = evaluate(tmp_path, "reducers=[random]")
    assert done.returncode == 0, done.stderr[-3000:]
    from lmms_eval.tasks._task_utils.mcq_extract import extract_mcq_answer

    for cell in ("none/*/budget_1", "random/*/budget_0.5"):
        (folder,) = (tmp_path / "results" / "tiny_llava_onevision" / "videomme").glob(cell)
        assert (folder / "DONE").is_file()
        records = {row["doc_id"]: row for row in map(json.loads, (folder / "records.jsonl").open())}
        assert [records[i]["answer"] for i in range(3)] == [doc["answer"] for doc in docs]
        missing = records[2]
        assert "video missing" in missing["error"] and missing["correct"] is None
        for row in (records[0], records[1]):
            assert row["error"] is None and row["visual_tokens_before"] > 0
            assert row["correct"] is (extract_mcq_answer(row["prediction"], choices=list("ABCD")) == row["answer"])
        scores = json.loads((folder / "lmms_eval_results.json").read_text())["videomme"]
        correct = sum(records[i]["correct"] for i in (0, 1))
        assert scores["videomme_perception_score,none"] == 100 * correct / 3  # lmms-eval counts the missing as wrong
    table = pd.read_csv(tmp_path / "results" / "tiny_llava_onevision" / "videomme" / "report" / "table.csv")
    assert list(table["reducer"]) == ["none", "random"] and list(table["failed"]) == [1, 1]


def test_a_cell_where_lmms_eval_raises_stays_unfinished_and_the_run_exits_non_zero_naming_it(tmp_path):
    doc = videomme_doc("gray", "A")
    del doc["domain"]  # which Video-MME's process_results reads
    fake_videomme(tmp_path / "hf", tmp_path, [doc])
    done = evaluate(tmp_path, "reducers=[]")
    (cell,) = (tmp_path / "results" / "tiny_llava_onevision" / "videomme").glob("none/*/budget_1")
    assert done.returncode != 0
    assert f"cell {cell} failed" in done.stdout and "KeyError: 'domain'" in done.stdout
    assert f"1 cell(s) failed, left unfinished: {cell}" in done.stderr
    assert not (cell / "DONE").exists() and len(read_records(cell)) == 1  # the answer waits for the re-run


WRAPPER = ROOT / "scripts" / "lmms_eval_cli.sh"


def test_the_cli_wrapper_fails_where_lmms_evals_cli_exits_0_after_an_error(tmp_path):
    arguments = ["--model", "sttm_bench", "--model_args", f"pretrained={tmp_path / 'absent'}", "--tasks", "videomme"]
    environment = OFFLINE | {"PYTHON": sys.executable, "HF_HOME": str(tmp_path / "hf")}
    done = subprocess.run([str(WRAPPER), *arguments], cwd=ROOT, env=environment, capture_output=True, text=True)
    assert "Error during evaluation" in done.stdout and "lmms-eval reported an error" in done.stderr
    assert done.returncode == 1


@pytest.mark.parametrize(("output", "status"), [("| videomme | 1 | none | 0 |", 0), ("Traceback: killed", 3)])
def test_the_cli_wrapper_passes_lmms_evals_output_and_status_through(tmp_path, output, status):
    python = tmp_path / "python"
    python.write_text(f"#!/bin/sh\necho '{output}'\nexit {status}\n")
    python.chmod(0o755)
    done = subprocess.run([str(WRAPPER), "--tasks", "videomme"], env=os.environ | {"PYTHON": str(python)},
                          capture_output=True, text=True)  # fmt: skip
    assert done.returncode == status and done.stdout == output + "\n"
