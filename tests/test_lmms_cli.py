"""lmms-eval's command line as a way in: ``--model_args`` describe a cell of the runner and build its reducer the
runner's way; bad arguments end lmms-eval with status 1; requests' generation arguments are honoured; the README's
two commands write the same records, strict JSON with their correctness."""

from __future__ import annotations

import json
import math
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

from lmms_eval.evaluator import simple_evaluate  # noqa: E402
from lmms_eval.models import list_available_models  # noqa: E402
from lmms_eval.tasks import TaskManager  # noqa: E402

import runners.lmms_model  # noqa: E402
from runners.evaluate import plan_cells  # noqa: E402
from runners.lmms_model import Generation, ReducedVideoLLM, generation, model_config, read_model_args  # noqa: E402
from runners.records import read_records  # noqa: E402
from runners.settings import compose_evaluate  # noqa: E402
from runners.toybench import generate_split, write_task_yaml  # noqa: E402
from sttm.adapters.tiny import save_tiny_model  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
OFFLINE = os.environ | {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "PYTHONPATH": str(ROOT)}
README = (ROOT / "README.md").read_text()
COMPARED = ("task", "doc_id", "correct", "prediction", "answer", "visual_tokens_before", "visual_tokens_after",
            "prefill_tokens", "error", "achieved_ratio")  # fmt: skip


def runner_cell(key: str, *overrides: str):
    """The runner's cell of reducer setting ``key`` for these overrides."""
    (cell,) = [cell for cell in plan_cells(compose_evaluate(*overrides)) if cell.reducer == key]
    return cell


def test_model_args_build_the_runners_cell_with_the_model_configs_defaults():
    cell = read_model_args({"model": "tiny_llava_onevision", "reducer": "sttm", "budget": 0.5, "variant": "corrected"})
    runner = runner_cell("sttm", "reducers=[sttm]", "reducers.sttm.params.variant=corrected", "budget=0.5")
    assert (cell.method, cell.params) == (runner.method, runner.params)
    assert (cell.reducer.variant, cell.reducer.layer, cell.reducer.budget) == ("corrected", 2, 0.5)
    assert cell.model == compose_evaluate().model and read_model_args({}).model == cell.model
    assert (cell.model.max_frames.default, cell.model.max_new_tokens) == (32, 8)


def test_a_reducer_config_by_name_takes_its_settings_as_the_runner_does():
    paper = read_model_args({"model": "llava_video_7b", "reducer": "sttm_paper", "budget": 0.3, "benchmark": "mlvu"})
    runner = runner_cell("sttm_paper", "model=llava_video_7b", "reducers=[sttm_paper]", "budget=0.3", "benchmark=mlvu")
    assert paper.params == runner.params and paper.reducer.threshold == runner.params["threshold"]
    assert (
        read_model_args({"reducer": "sttm_corrected", "budget": 0.5}).params
        == read_model_args({"reducer": "sttm", "budget": 0.5, "variant": "corrected"}).params
    )


def test_every_knob_of_a_cell_can_be_set():
    knobs = {"layer": 0, "max_new_tokens": 1, "max_frames": 16, "device": "cpu", "positions": "compact",
             "kv_reuse": True, "frame_cap": "needle"}  # fmt: skip
    cell = read_model_args({"reducer": "tome", "budget": 0.3} | knobs)
    assert (cell.reducer.layer, cell.reducer.budget) == (0, 0.3)
    assert (cell.model.max_new_tokens, cell.model.max_frames, cell.frame_cap) == (1, 16, "needle")
    assert cell.options == {"positions": "compact", "kv_reuse": True}
    needle = read_model_args({"model": "llava_video_7b", "frame_cap": "needle"})
    assert runners.lmms_model.max_frames(needle.model, needle.frame_cap) == 180
    thresholds = read_model_args({"reducer": "sttm", "threshold": 0.9, "temporal_threshold": 0.8})
    assert (thresholds.reducer.budget, thresholds.reducer.threshold) == (None, 0.9)


def test_a_model_config_given_by_path_is_composed_with_its_defaults(tmp_path):
    (tmp_path / "base.yaml").write_text((ROOT / "configs" / "model" / "tiny_llava_onevision.yaml").read_text())
    (tmp_path / "mine.yaml").write_text("defaults:\n  - base\n  - _self_\nname: mine\nmax_new_tokens: 3\n")
    model = read_model_args({"model": str(tmp_path / "mine.yaml")}).model
    assert (model.name, model.max_new_tokens, model.max_frames.default) == ("mine", 3, 32)
    assert model_config(str(tmp_path / "mine.yaml")) == model


@pytest.mark.parametrize(
    ("model_args", "problem"),
    [
        ("reducer=sttm,budget=0.5,varient=corrected",
         r"unknown model_args varient; sttm_bench takes model, reducer, budget.*max_new_tokens and the parameters of "
         r"reducer 'sttm': threshold, .*variant"),
        ("budget=0.5,layer=0", r"unknown model_args layer; .*with a reducer=, its parameters"),
        ("reducer=sttm", r"give STTM a spatial threshold \(and optionally a temporal one\) or a budget"),
        ("reducer=tome", r"reducer 'tome' needs a budget"),
        ("budget=0.5", r"give a reducer= \(full tokens keep every token\)"),
        ("reducer=sttm_paper,budget=0.5", r"give a benchmark and a budget"),
        ("reducer=sttm,budget=1.5", r"budget must lie in \(0, 1\]"),
        ("reducer=sttn,budget=0.5", r"reducer=sttn: not a reducer config \(divprune.*unknown reducer 'sttn'"),
        ("model=tiny", r"model=tiny: neither a YAML file nor a model config \(.*tiny_llava_onevision\)"),
        ("kv_reuse=1", r"kv_reuse must be true or false"),
    ],
)  # fmt: skip
def test_bad_model_args_end_the_process_naming_the_problem(model_args, problem):
    with pytest.raises(SystemExit, match=rf"^sttm_bench --model_args: .*{problem}"):
        ReducedVideoLLM.create_from_arg_string(model_args, {"batch_size": 1, "device": None})


@pytest.fixture(scope="module")
def toy_tasks(tmp_path_factory) -> Path:
    """toy_nextqa (2 videos) and a copy of it, toy_short, whose YAML asks for 2 new tokens."""
    root = tmp_path_factory.mktemp("cli_tasks")
    generate_split("toy_nextqa", "test", root, seed=0, count=2)
    yaml = write_task_yaml("toy_nextqa", root).read_text()
    short = yaml.replace("task: toy_nextqa", "task: toy_short").replace("until: []", "until: []\n  max_new_tokens: 2")
    (root / "toy_short").mkdir()
    (root / "toy_short" / "toy_short.yaml").write_text(short)
    return root


def test_lmms_evals_command_line_exits_1_on_an_unknown_model_arg(toy_tasks):
    model_args = "model=tiny_llava_onevision,reducer=sttm,budget=0.5,varient=corrected"
    command = [sys.executable, "-m", "lmms_eval", "--model", "sttm_bench", "--model_args", model_args, "--tasks",
               "toy_nextqa", "--include_path", str(toy_tasks), "--limit", "1"]  # fmt: skip
    done = subprocess.run(command, cwd=ROOT, env=OFFLINE, capture_output=True, text=True, timeout=600)
    assert done.returncode == 1
    assert "sttm_bench --model_args: unknown model_args varient" in done.stderr and "variant" in done.stderr


def test_generation_arguments_are_read_as_lmms_evals_models_read_them():
    assert generation({"until": ["\n\n"], "do_sample": False, "temperature": 0, "top_p": 1.0}, 8) == Generation(
        8, ("\n\n",)
    )
    assert generation({"max_new_tokens": 1, "until": "Q:"}, 8) == Generation(1, ("Q:",))
    assert generation(None, 8).cut(" B. it moved\n\nQ: next") == "B. it moved\n\nQ: next"
    assert Generation(8, ("\n\n", "Q:")).cut(" B. it moved Q: x\n\nmore") == "B. it moved"
    with pytest.raises(ValueError, match="decodes greedily .*do_sample=True"):
        generation({"do_sample": True, "temperature": 0.7}, 8)
    with pytest.raises(ValueError, match="decodes greedily .*num_beams=4"):
        generation({"num_beams": 4}, 8)
    with pytest.raises(ValueError, match=r"generation arguments \['max_new_token'\] are not supported"):
        generation({"max_new_token": 1}, 8)


def test_the_tasks_and_the_command_lines_max_new_tokens_reach_generate(toy_tasks, tmp_path, monkeypatch):
    asked = []
    timed_generate = runners.lmms_model.timed_generate

    def spy(model, inputs, **kwargs):
        asked.append(kwargs["max_new_tokens"])
        return timed_generate(model, inputs, **kwargs)

    monkeypatch.setattr(runners.lmms_model, "timed_generate", spy)
    tiny = dict(model_config("tiny_llava_onevision")) | {
        "pretrained": str(save_tiny_model("llava_onevision", tmp_path))
    }
    model = ReducedVideoLLM.from_model_config(tiny)
    manager = TaskManager(include_path=str(toy_tasks), include_defaults=False)
    for task, gen_kwargs in [("toy_nextqa", None), ("toy_short", None), ("toy_short", "max_new_tokens=1")]:
        simple_evaluate(model=model, tasks=[task], task_manager=manager, limit=1, gen_kwargs=gen_kwargs,
                        process_docs_parallel=1, random_seed=0, datetime_str="test")  # fmt: skip
    assert asked == [8, 2, 1]  # the model config's, the task's, --gen_kwargs


def strict_rows(path: Path) -> list[dict]:
    def refuse(constant):
        raise ValueError(f"{path.name} holds {constant}: not strict JSON")

    return [json.loads(line, parse_constant=refuse) for line in path.read_text().splitlines()]


def readme_commands() -> list[list[str]]:
    """The commands of the README's block of the runner and lmms-eval commands, as argument lists."""
    section = README[README.index("## lmms-eval's command line") :]
    block = re.search(r"```bash\n(.*?)```", section, re.S)[1]
    commands = [shlex.split(line) for line in block.splitlines()]
    assert [command[:3] for command in commands] == [["python", "-m", "runners.evaluate"], ["lmms-eval", "--model",
                                                                                            "sttm_bench"]]  # fmt: skip
    return [[sys.executable, *commands[0][1:]], [sys.executable, "-m", "lmms_eval", *commands[1][1:]]]


def test_the_readmes_runner_and_lmms_eval_commands_write_the_same_records(tmp_path):
    (tmp_path / "models").symlink_to(ROOT / "models")
    for command in readme_commands():
        done = subprocess.run(command, cwd=tmp_path, env=OFFLINE, capture_output=True, text=True, timeout=900)
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    (runner,) = (tmp_path / "outputs" / "results" / "tiny_llava_onevision" / "toybench" / "sttm").glob(
        "*/budget_0.5/records.jsonl"
    )
    cli = tmp_path / "outputs" / "cli" / "sttm_corrected" / "answers.rank0.jsonl"
    by_runner, by_cli = (sorted(strict_rows(path), key=lambda row: row["doc_id"]) for path in (runner, cli))
    assert len(by_cli) == 4 and all(isinstance(row["correct"], bool) for row in by_cli)
    assert [[row[key] for key in COMPARED] for row in by_cli] == [[row[key] for key in COMPARED] for row in by_runner]
    assert all(row["vision_ms"] > 0 and row["peak_memory_mb"] is None for row in by_cli)  # not measured on a CPU
    assert all(math.isnan(row["peak_memory_mb"]) for row in read_records(cli.parent))  # read back as NaN
    (results,) = (tmp_path / "outputs" / "cli").rglob("*_results.json")
    results = json.loads(results.read_text())
    assert "variant=corrected" in results["config"]["model_args"]
    accuracy = 100 * sum(row["correct"] for row in by_cli) / 4
    assert results["results"]["toy_nextqa"]["accuracy,none"] == pytest.approx(accuracy)


def test_sttm_bench_is_registered_and_the_readme_says_how_to_check(capsys):
    assert "sttm_bench" in list_available_models()
    (code,) = re.findall(r'`python -c "(from lmms_eval\.models import get_model; [^"]*)"`', README)
    exec(code)
    assert capsys.readouterr().out.strip() == "<class 'runners.lmms_model.ReducedVideoLLM'>"
