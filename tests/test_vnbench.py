"""VNBench scoring: the STTM authors' per-entry accuracy and the benchmark's official 4-try protocol."""

from __future__ import annotations

import warnings

import pytest

from runners.tasks.multiple_choice import extract_answer_letter
from runners.tasks.vnbench.utils import (
    vnbench_doc_to_text,
    vnbench_entry_accuracy,
    vnbench_official_aggregate,
    vnbench_official_scores,
    vnbench_process_results,
)


def entries(task: str, video: str, outcomes: list[bool]) -> list[dict]:
    return [
        {"question_id": f"{video}_try{i}", "video": video, "task_type": task, "correct": ok}
        for i, ok in enumerate(outcomes)
    ]


@pytest.mark.parametrize(
    "response, letter",
    [
        ("B", "B"),
        ("The best answer is: C.", "C"),
        ("Answer: D", "D"),
        ("Based on the video, the answer is A", "B"),  # first capital letter among ABCD: the authors' rule
        ("Best answer: C", "B"),  # "Best answer:" is one of the prefixes the authors' list never strips
        ("no idea", ""),
    ],
)
def test_answer_extraction_follows_the_authors(response, letter):
    assert extract_answer_letter(response) == letter


def test_prompt_is_instruction_question_options_then_cue():
    doc = {"question": "What is shown?", "options": ["A. x.", "B. y.", "C. z.", "D. w."]}
    lines = vnbench_doc_to_text(doc).splitlines()
    assert lines[1:] == ["What is shown?", "A. x.", "B. y.", "C. z.", "D. w.", "The best answer is:"]
    assert lines[0].startswith("Select the best answer")


def test_process_results_marks_correctness():
    doc = {"question_id": "v1_try0", "videoID": "v1", "task_type": "cnt_edit1", "answer": "C"}
    scored = vnbench_process_results(doc, ["The answer is C"])
    assert scored["vnbench_official"]["correct"] and scored["vnbench_entry_accuracy"]["prediction"] == "C"


def test_official_protocol_needs_all_four_tries():
    results = (
        entries("ret_insert1", "v1", [True] * 4)
        + entries("ret_insert1", "v2", [True, True, True, False])
        + entries("ord_insert1", "v3", [True] * 4)
        + entries("cnt_edit1", "v4", [False] * 4)
        + entries("cnt_edit2", "v5", [True] * 3)  # a try is missing: counts as wrong
    )
    with pytest.warns(UserWarning, match="1 of 5 videos have fewer than 4 answered tries and count as wrong"):
        scores = vnbench_official_scores(results)
    assert scores["ret_insert1"] == 50.0 and scores["ord_insert1"] == 100.0 and scores["cnt_edit2"] == 0.0
    assert scores["retrieval"] == 50.0 and scores["ordering"] == 100.0 and scores["counting"] == 0.0
    with pytest.warns(UserWarning, match="--limit takes the first questions"):
        assert scores["overall"] == 50.0 == vnbench_official_aggregate(results)
    assert vnbench_entry_accuracy(results) == pytest.approx(100 * 14 / 19)


def test_categories_average_their_task_types_equally():
    results = entries("ret_insert1", "a", [True] * 4) + entries("ret_edit1", "b", [False] * 4)
    results += entries("ret_edit1", "c", [False] * 4) + entries("ret_edit1", "d", [True] * 4)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # whole videos: no warning
        assert vnbench_official_scores(results)["retrieval"] == pytest.approx((100 + 100 / 3) / 2)
