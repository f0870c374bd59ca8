"""lmms-eval tasks over local videos listed in a JSONL file (the synthetic benchmarks, VNBench).

A row holds ``video`` (an absolute path), ``question``, ``options`` ("A. …") and ``answer`` (a letter); VNBench
rows also ``question_id``, ``videoID`` and ``task_type``. ``write_local_task`` writes the task's YAML next to
the JSONL; load it with ``TaskManager(include_path=that folder)``.

The task asks for greedy decoding without stop strings (the answer is read from the whole reply, as the STTM authors
read it) and leaves the number of new tokens to the model (``max_new_tokens`` of its config, or ``--gen_kwargs``).
``accuracy`` is a percentage, as VNBench's scores are.
"""

from __future__ import annotations

from pathlib import Path

from runners.records import write_atomically
from runners.tasks.multiple_choice import LETTERS, extract_answer_letter, prompt
from runners.tasks.vnbench.utils import vnbench_process_results

TASK_YAML = """\
task: {name}
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: generate_until
doc_to_visual: !function runners.tasks.local.doc_to_visual
doc_to_text: !function runners.tasks.local.doc_to_text
doc_to_target: answer
generation_kwargs:
  until: []
  do_sample: false
  num_beams: 1
process_results: !function runners.tasks.local.{process_results}
metric_list:
  - metric: accuracy
    aggregation: mean
    higher_is_better: true
{extra_metrics}metadata:
  version: 0
"""
VNBENCH_METRICS = """\
  - metric: vnbench_official
    aggregation: !function runners.tasks.vnbench.utils.vnbench_official_aggregate
    higher_is_better: true
  - metric: vnbench_entry_accuracy
    aggregation: !function runners.tasks.vnbench.utils.vnbench_entry_accuracy
    higher_is_better: true
"""


def write_local_task(name: str, jsonl: Path, vnbench_scoring: bool = False) -> Path:
    """Write ``<name>.yaml`` beside ``jsonl``: an lmms-eval task over its rows (with VNBench's two scores)."""
    text = TASK_YAML.format(
        name=name,
        data=jsonl.resolve(),
        process_results="vnbench_process_results_with_accuracy" if vnbench_scoring else "process_results",
        extra_metrics=VNBENCH_METRICS if vnbench_scoring else "",
    )
    path = jsonl.parent / f"{name}.yaml"
    write_atomically(path, text)
    return path


def doc_to_visual(doc: dict) -> list[str]:
    return [doc["video"]]


def doc_to_text(doc: dict, lmms_eval_specific_kwargs: dict | None = None) -> str:
    return prompt(doc["question"], doc["options"])


def process_results(doc: dict, results: list[str]) -> dict:
    """Per-question accuracy in percent (100 or 0): their mean is the task's."""
    letters = LETTERS[: len(doc["options"])]
    return {"accuracy": 100.0 * (extract_answer_letter(results[0], letters) == doc["answer"])}


def vnbench_process_results_with_accuracy(doc: dict, results: list[str]) -> dict:
    """VNBench's two scores plus the plain accuracy every benchmark reports."""
    return process_results(doc, results) | vnbench_process_results(doc, results)
