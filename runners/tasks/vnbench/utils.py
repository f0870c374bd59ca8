"""VNBench (Zhao et al., "Needle In A Video Haystack", ICLR 2025) for lmms-eval, which has no VNBench task.

Data: ``VNBench-main-4try_v2.json`` as the STTM authors format it (``scripts/data/format_data_vnbench.py`` in
github.com/HYUNJS/STTM): one entry per question and "try" (the same question with its options in 4 orders),
with ``question``, ``options`` ("A. …"), ``answer`` (a letter), ``task_type``, ``try``, ``videoID``,
``question_id``, ``duration``.

Two scores:

* ``vnbench_entry_accuracy``: accuracy over all entries, as the STTM authors report it
  (``llava/eval/metric_vnbench.py``), with their answer extraction.
* ``vnbench_official``: the benchmark's own protocol (github.com/joez17/VideoNIAH,
  ``llava_examples/evaluation_utils.py``): a video counts as correct only when all 4 tries are; accuracy per
  task type, the mean over the 3 task types of each category (retrieval, ordering, counting), and Overall as
  the mean of the 3 categories.
"""

from __future__ import annotations

import warnings
from collections import defaultdict

from runners.tasks.multiple_choice import extract_answer_letter, prompt

CATEGORIES = {"ret": "retrieval", "ord": "ordering", "cnt": "counting"}
TRIES_PER_VIDEO = 4


def vnbench_doc_to_text(doc: dict, lmms_eval_specific_kwargs: dict | None = None) -> str:
    """The STTM authors' prompt: instruction, question, one option per line, then "The best answer is:"."""
    return prompt(
        doc["question"], doc["options"], (lmms_eval_specific_kwargs or {}).get("post_prompt", "The best answer is:")
    )


def vnbench_process_results(doc: dict, results: list[str]) -> dict:
    """Per entry, what both aggregations need."""
    prediction = extract_answer_letter(results[0])
    entry = {
        "question_id": doc["question_id"],
        "video": doc["videoID"],
        "task_type": doc["task_type"],
        "prediction": prediction,
        "correct": prediction == doc["answer"],
    }
    return {"vnbench_entry_accuracy": entry, "vnbench_official": entry}


def vnbench_entry_accuracy(entries: list[dict]) -> float:
    """Percent of entries answered correctly."""
    return 100 * sum(e["correct"] for e in entries) / len(entries)


def vnbench_official_scores(entries: list[dict]) -> dict[str, float]:
    """Percent of videos with all 4 tries correct, per task type and category, and Overall.

    A video with fewer than 4 answered tries counts as wrong, with a warning: lmms-eval's ``--limit`` takes the first
    questions, so a limit that is not a multiple of 4 leaves the last video short of tries (the tries of a video lie
    together in our synthetic benchmark; keep VNBench's annotations so ordered).
    """
    tries = defaultdict(list)
    task_of = {}
    for entry in entries:
        tries[entry["video"]].append(entry["correct"])
        task_of[entry["video"]] = entry["task_type"]
    short = sum(len(outcomes) < TRIES_PER_VIDEO for outcomes in tries.values())
    if short:
        warnings.warn(
            f"VNBench official score: {short} of {len(tries)} videos have fewer than {TRIES_PER_VIDEO} answered tries "
            f"and count as wrong ({len(entries)} questions answered). --limit takes the first questions in the "
            f"file's order: where a video's tries lie together, a multiple of {TRIES_PER_VIDEO} keeps whole videos",
            stacklevel=2,
        )
    solved_by_task = defaultdict(list)
    for video, outcomes in tries.items():
        solved_by_task[task_of[video]].append(len(outcomes) == TRIES_PER_VIDEO and all(outcomes))
    scores = {task: 100 * sum(solved) / len(solved) for task, solved in sorted(solved_by_task.items())}
    for prefix, category in CATEGORIES.items():
        members = [score for task, score in scores.items() if task.startswith(prefix)]
        if members:
            scores[category] = sum(members) / len(members)
    present = [scores[c] for c in CATEGORIES.values() if c in scores]
    scores["overall"] = sum(present) / len(present)
    return scores


def vnbench_official_aggregate(entries: list[dict]) -> float:
    """lmms-eval aggregation: the official Overall."""
    return vnbench_official_scores(entries)["overall"]
