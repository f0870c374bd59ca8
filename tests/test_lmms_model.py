"""The sttm_bench lmms-eval model on the tiny LLaVA-OneVision and the synthetic benchmarks, offline."""

from __future__ import annotations

import math
import os

import numpy as np
import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

from lmms_eval.evaluator import simple_evaluate  # noqa: E402
from lmms_eval.models import get_model  # noqa: E402
from lmms_eval.tasks import TaskManager  # noqa: E402

from runners.lmms_model import ReducedVideoLLM  # noqa: E402
from runners.records import answers_file, read_records  # noqa: E402
from runners.toybench import generate_split, write_task_yaml  # noqa: E402
from sttm.adapters.tiny import FRAME_SIZE, save_tiny_model  # noqa: E402
from sttm.adapters.video import SampledVideo  # noqa: E402
from sttm.api import Reducer, Stage  # noqa: E402


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("lmms_model")
    jsonl = generate_split("toy_videomme", "test", root / "tasks", seed=0, count=2)
    write_task_yaml("toy_videomme", root / "tasks")
    first_video = jsonl.parent / "videos" / "test0000.mp4"
    first_video.unlink()  # its 3 questions must become recorded errors, not a crash
    return root, save_tiny_model("llava_onevision", root / "tiny"), TaskManager(include_path=str(root / "tasks"))


def evaluate(model, task_manager):
    return simple_evaluate(
        model=model, tasks=["toy_videomme"], task_manager=task_manager, process_docs_parallel=1,
        random_seed=0, datetime_str="test",
    )["results"]["toy_videomme"]  # fmt: skip


def test_is_registered_with_lmms_eval():
    assert get_model("sttm_bench") is ReducedVideoLLM


def test_batches_and_unknown_arguments_are_refused(setup):
    _, tiny, _ = setup
    with pytest.raises(ValueError, match="one request at a time"):
        ReducedVideoLLM(tiny, batch_size=4)
    with pytest.raises(TypeError, match="budgt"):
        ReducedVideoLLM.create_from_arg_string(f"pretrained={tiny},budgt=0.5")


def test_evaluates_with_a_reducer_records_every_question_and_resumes(setup):
    root, tiny, task_manager = setup
    cell = root / "cell"
    model = ReducedVideoLLM(tiny, reducer="vidcom2", budget=0.5, max_new_tokens=4, record_dir=cell)
    results = evaluate(model, task_manager)
    assert 0.0 <= results["accuracy,none"] <= 1.0
    records = read_records(cell)
    assert len(records) == 6
    failed = [r for r in records if r["error"]]
    assert len(failed) == 3 and all("video not found" in r["error"] for r in failed)
    answered = [r for r in records if not r["error"]]
    # VidCom2 rounds each frame's share: within one token per frame of the budget
    assert all(r["visual_tokens_before"] == 32 * 64 and abs(r["visual_tokens_after"] - 1024) <= 32 for r in answered)
    assert all(r["prefill_ms"] > 0 and r["ttft_ms"] > 0 and math.isnan(r["peak_memory_mb"]) for r in answered)
    assert all(r["video"].endswith("test0001.mp4") for r in answered)  # the video its questions share
    assert all(r["video"].endswith("test0000.mp4") for r in failed)  # the one that could not be read

    resumed = ReducedVideoLLM(tiny, reducer="vidcom2", budget=0.5, max_new_tokens=4, record_dir=cell)
    assert evaluate(resumed, task_manager)["accuracy,none"] == results["accuracy,none"]
    assert len(answers_file(cell).read_text().splitlines()) == 6  # nothing ran again


def test_full_tokens_and_an_llm_layer_reducer(setup):
    root, tiny, task_manager = setup
    full = ReducedVideoLLM(tiny, reducer="none", max_new_tokens=2, record_dir=root / "full")
    evaluate(full, task_manager)
    layer = ReducedVideoLLM(tiny, reducer="sttm", budget=0.5, max_new_tokens=2, record_dir=root / "sttm")
    evaluate(layer, task_manager)
    full_records = [r for r in read_records(root / "full") if not r["error"]]
    sttm_records = [r for r in read_records(root / "sttm") if not r["error"]]
    assert all(r["achieved_ratio"] == 1.0 for r in full_records)
    assert all(r["achieved_ratio"] <= 0.5 and r["reducer_ms"] > 0 for r in sttm_records)


@pytest.mark.parametrize("family", ["qwen2_vl", "qwen2_5_vl"])
def test_qwen_models_evaluate_with_an_llm_layer_reducer(setup, family, tmp_path):
    root, _, task_manager = setup
    folder = save_tiny_model(family, tmp_path / family)
    model = ReducedVideoLLM(folder, reducer="sttm", budget=0.5, max_new_tokens=2, record_dir=tmp_path / "cell")
    evaluate(model, task_manager)
    answered = [r for r in read_records(tmp_path / "cell") if not r["error"]]
    # 32 frames at most, in temporal pairs, of an 8x8 merged grid
    assert len(answered) == 3 and all(r["visual_tokens_before"] % 64 == 0 for r in answered)
    assert all(r["achieved_ratio"] <= 0.5 and r["prefill_ms"] > 0 for r in answered)


def test_qwen2_5_temporal_ids_follow_the_sampled_frame_rate(tmp_path):
    model = ReducedVideoLLM(save_tiny_model("qwen2_5_vl", tmp_path / "qwen"))
    frames = np.zeros((4, FRAME_SIZE, FRAME_SIZE, 3), dtype=np.uint8)
    inputs = model.model_inputs("what color ?", SampledVideo(frames, fps=0.5))
    assert inputs["second_per_grid_ts"].tolist() == [2 / 0.5]  # two frames per temporal patch


@pytest.mark.parametrize("positions", ["original", "compact"])
def test_kv_reuse_prefills_each_video_once_with_the_same_answers(setup, tmp_path, positions):
    """The plumbing: the random tiny model answers the same whatever the positions, so tests/test_reuse.py compares
    the logits."""
    _, tiny, task_manager = setup
    for reuse in (False, True):
        model = ReducedVideoLLM(tiny, reducer="vidcom2", budget=0.5, positions=positions, max_new_tokens=4,
                                kv_reuse=reuse, record_dir=tmp_path / str(reuse))  # fmt: skip
        evaluate(model, task_manager)
    plain, reused = (sorted(read_records(tmp_path / str(reuse)), key=lambda r: r["doc_id"]) for reuse in (False, True))
    assert [r["prediction"] for r in plain] == [r["prediction"] for r in reused]
    assert [r["error"] for r in plain] == [r["error"] for r in reused]
    answered = [(p, r) for p, r in zip(plain, reused, strict=True) if not p["error"]]
    assert len(answered) == 3 and all(r["extra"]["questions_per_prefill"] == 3 for _, r in answered)
    assert sum(r["prefill_tokens"] for _, r in answered) < sum(p["prefill_tokens"] for p, _ in answered) / 2


class AsksTheQuestion(Reducer):
    name = "asks_the_question"
    stage = Stage.LLM_LAYER
    query_aware = True

    def reduce(self, video):
        raise AssertionError("never called")


def test_kv_reuse_is_refused_for_query_aware_reducers(setup):
    _, tiny, _ = setup
    with pytest.raises(ValueError, match="query-agnostic reducer; 'asks_the_question' looks at the question"):
        ReducedVideoLLM(tiny, reducer=AsksTheQuestion(), kv_reuse=True)
    with pytest.raises(ValueError, match="query-agnostic reducer; 'fastv' looks at the question"):
        ReducedVideoLLM(tiny, reducer="fastv", budget=0.5, positions="compact", kv_reuse=True)
