"""lmms-eval task functions of the synthetic benchmarks (``runners.toybench``); their YAMLs are written next
to the generated data."""

from __future__ import annotations

from runners.tasks.multiple_choice import LETTERS, extract_answer_letter, prompt
from runners.tasks.vnbench.utils import vnbench_process_results


def doc_to_visual(doc: dict) -> list[str]:
    return [doc["video"]]


def doc_to_text(doc: dict, lmms_eval_specific_kwargs: dict | None = None) -> str:
    return prompt(doc["question"], doc["options"])


def process_results(doc: dict, results: list[str]) -> dict:
    """Per-question accuracy (1 or 0)."""
    letters = LETTERS[: len(doc["options"])]
    return {"accuracy": float(extract_answer_letter(results[0], letters) == doc["answer"])}


def vnbench_process_results_with_accuracy(doc: dict, results: list[str]) -> dict:
    """VNBench's two scores plus the plain accuracy every benchmark reports."""
    return process_results(doc, results) | vnbench_process_results(doc, results)
