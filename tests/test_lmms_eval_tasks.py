"""The synthetic benchmarks run through lmms-eval's own evaluator, offline, with scripted stand-in models."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

from lmms_eval.api.model import lmms  # noqa: E402
from lmms_eval.evaluator import simple_evaluate  # noqa: E402
from lmms_eval.tasks import TaskManager  # noqa: E402

from runners.toybench import generate_split, write_task_yaml  # noqa: E402

TASKS = ("toy_vnbench", "toy_egoschema")


class Scripted(lmms):
    """Answers each request with ``answer(doc, prompt)``; checks that the video it was given exists."""

    def __init__(self, answer):
        super().__init__()
        self.answer = answer
        self.prompts = []

    def generate_until(self, requests):
        replies = []
        for request in requests:
            prompt, _, doc_to_visual, doc_id, task, split = request.args
            doc = self.task_dict[task][split][doc_id]
            assert all(Path(video).is_file() for video in doc_to_visual(doc))
            self.prompts.append(prompt)
            replies.append(self.answer(doc, prompt))
        return replies

    def loglikelihood(self, requests):
        raise NotImplementedError

    def generate_until_multi_round(self, requests):
        raise NotImplementedError


@pytest.fixture(scope="module")
def task_manager(tmp_path_factory):
    out = tmp_path_factory.mktemp("toytasks")
    for name in TASKS:
        generate_split(name, "test", out, seed=0, count=6)
        write_task_yaml(name, out)
    return TaskManager(include_path=str(out), include_defaults=False)


def evaluate(model, task_manager):
    return simple_evaluate(
        model=model, tasks=list(TASKS), task_manager=task_manager, log_samples=True, process_docs_parallel=1,
        random_seed=0, datetime_str="test",
    )["results"]  # fmt: skip


def test_an_oracle_scores_everything(task_manager):
    results = evaluate(Scripted(lambda doc, prompt: f"The best answer is {doc['answer']}."), task_manager)
    assert results["toy_egoschema"]["accuracy,none"] == 100.0  # percentages, as VNBench's scores
    assert results["toy_vnbench"]["accuracy,none"] == 100.0
    assert results["toy_vnbench"]["vnbench_official,none"] == 100.0


def test_always_answering_a_scores_the_share_of_a(task_manager):
    model = Scripted(lambda doc, prompt: "A")
    results = evaluate(model, task_manager)
    docs = model.task_dict["toy_egoschema"]["test"]
    expected = 100 * sum(doc["answer"] == "A" for doc in docs) / len(docs)
    assert results["toy_egoschema"]["accuracy,none"] == pytest.approx(expected)
    assert results["toy_vnbench"]["vnbench_official,none"] == 0.0  # never right on all 4 option orders
    assert all(p.splitlines()[-1] == "The best answer is:" for p in model.prompts)
