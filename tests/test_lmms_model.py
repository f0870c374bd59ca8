"""The sttm_bench lmms-eval model on the tiny LLaVA-OneVision and the synthetic benchmarks, offline."""

from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

from lmms_eval.evaluator import simple_evaluate  # noqa: E402
from lmms_eval.models import get_model  # noqa: E402
from lmms_eval.tasks import TaskManager  # noqa: E402

from runners.lmms_model import ReducedVideoLLM, model_config  # noqa: E402
from runners.records import answers_file, read_records  # noqa: E402
from runners.toybench import generate_split, write_task_yaml  # noqa: E402
from sttm.adapters.tiny import FRAME_SIZE, save_tiny_model  # noqa: E402
from sttm.adapters.video import SampledVideo  # noqa: E402
from sttm.api import Reducer, Stage, build_reducer  # noqa: E402

TINY = dict(model_config("tiny_llava_onevision"))
ROOT = Path(__file__).resolve().parents[1]


def model_at(folder, max_new_tokens: int = 8, **options) -> ReducedVideoLLM:
    """The tiny model config's model with the checkpoint at ``folder``."""
    return ReducedVideoLLM.from_model_config(TINY | {"pretrained": str(folder), "max_new_tokens": max_new_tokens},
                                             **options)  # fmt: skip


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


def test_imported_before_lmms_evals_registry_it_is_registered_without_a_circular_import():
    script = "import runners.lmms_model\nfrom lmms_eval.models import get_model\nprint(get_model('sttm_bench'))"
    done = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.stdout.strip() == "<class 'runners.lmms_model.ReducedVideoLLM'>", done.stderr[-2000:]
    assert "Failed to load model entry-point manifests" not in done.stderr


def test_batches_are_refused(setup):
    _, tiny, _ = setup
    with pytest.raises(ValueError, match="one request at a time"):
        model_at(tiny, batch_size=4)


def test_evaluates_with_a_reducer_records_every_question_and_resumes(setup):
    root, tiny, task_manager = setup
    cell = root / "cell"
    model = model_at(tiny, 4, reducer=build_reducer("vidcom2", budget=0.5), record_dir=cell)
    results = evaluate(model, task_manager)
    assert 0.0 <= results["accuracy,none"] <= 100.0
    records = read_records(cell)
    assert len(records) == 6
    failed = [r for r in records if r["error"]]
    assert len(failed) == 3 and all("video not found" in r["error"] and r["correct"] is None for r in failed)
    answered = [r for r in records if not r["error"]]
    assert all(isinstance(r["correct"], bool) for r in answered)
    assert results["accuracy,none"] == pytest.approx(100 * sum(r["correct"] for r in answered) / 6)
    # VidCom2 rounds each frame's share: within one token per frame of the budget
    assert all(r["visual_tokens_before"] == 32 * 64 and abs(r["visual_tokens_after"] - 1024) <= 32 for r in answered)
    assert all(r["prefill_ms"] > 0 and r["ttft_ms"] > 0 and math.isnan(r["peak_memory_mb"]) for r in answered)
    assert all(r["video"].endswith("test0001.mp4") for r in answered)  # the video its questions share
    assert all(r["video"].endswith("test0000.mp4") for r in failed)  # the one that could not be read

    resumed = model_at(tiny, 4, reducer=build_reducer("vidcom2", budget=0.5), record_dir=cell)
    assert evaluate(resumed, task_manager)["accuracy,none"] == results["accuracy,none"]
    assert len(answers_file(cell).read_text().splitlines()) == 6  # nothing ran again


def test_full_tokens_and_an_llm_layer_reducer(setup):
    root, tiny, task_manager = setup
    full = model_at(tiny, 2, record_dir=root / "full")
    evaluate(full, task_manager)
    layer = model_at(tiny, 2, reducer=build_reducer("sttm", budget=0.5), record_dir=root / "sttm")
    evaluate(layer, task_manager)
    full_records = {r["doc_id"]: r for r in read_records(root / "full") if not r["error"]}
    sttm_records = {r["doc_id"]: r for r in read_records(root / "sttm") if not r["error"]}
    assert all(r["achieved_ratio"] == 1.0 for r in full_records.values())
    assert all(r["achieved_ratio"] <= 0.5 and r["reducer_ms"] > 0 for r in sttm_records.values())
    for doc_id, row in sttm_records.items():  # the prompt from the reducer's layer on, its visual tokens reduced
        removed = row["visual_tokens_before"] - row["visual_tokens_after"]
        assert removed > 0 and row["prefill_tokens"] == full_records[doc_id]["prefill_tokens"] - removed


@pytest.mark.parametrize("family", ["qwen2_vl", "qwen2_5_vl", "qwen3_vl"])
def test_qwen_models_evaluate_with_an_llm_layer_reducer(setup, family, tmp_path):
    root, _, task_manager = setup
    folder = save_tiny_model(family, tmp_path / family)
    model = model_at(folder, 2, reducer=build_reducer("sttm", budget=0.5), record_dir=tmp_path / "cell")
    evaluate(model, task_manager)
    answered = [r for r in read_records(tmp_path / "cell") if not r["error"]]
    # 32 frames at most, in temporal pairs, of an 8x8 merged grid
    assert len(answered) == 3 and all(r["visual_tokens_before"] % 64 == 0 for r in answered)
    assert all(r["achieved_ratio"] <= 0.5 and r["prefill_ms"] > 0 for r in answered)


def test_qwen2_5_temporal_ids_follow_the_sampled_frame_rate(tmp_path):
    model = model_at(save_tiny_model("qwen2_5_vl", tmp_path / "qwen"))
    frames = np.zeros((4, FRAME_SIZE, FRAME_SIZE, 3), dtype=np.uint8)
    inputs = model.model_inputs("what color ?", SampledVideo(frames, fps=0.5))
    assert inputs["second_per_grid_ts"].tolist() == [2 / 0.5]  # two frames per temporal patch


def test_qwen3_timestamps_read_the_frames_places_in_the_video_and_pixels_are_bounded_per_frame(tmp_path):
    folder = save_tiny_model("qwen3_vl", tmp_path / "qwen3")
    frames = np.zeros((4, 2 * FRAME_SIZE, 2 * FRAME_SIZE, 3), dtype=np.uint8)
    video = SampledVideo(frames, fps=4 / 4.0, indices=np.array([0, 30, 60, 90]), video_fps=30.0)
    bounded = ReducedVideoLLM.from_model_config(
        TINY | {"pretrained": str(folder), "min_pixels": 28 * 28, "max_pixels": FRAME_SIZE**2,
                "system_prompt": "you are a video"}
    )  # fmt: skip
    inputs = bounded.model_inputs("what color ?", video)
    text = bounded.processor.decode(inputs["input_ids"][0])
    # the temporal patches (frames 0, 30) and (60, 90) of a 30 fps video sit at 0.5 s and 2.5 s
    assert "<unk> 0 . 5 <unk> <unk>" in text and "<unk> 2 . 5 <unk> <unk>" in text
    assert text.index("you are a video") < text.index("<|video_pad|>")
    assert inputs["video_grid_thw"].tolist() == [[2, 16, 16]]  # 448 px frames brought down to 224 px
    unbounded = model_at(folder).model_inputs("what color ?", video)
    assert unbounded["video_grid_thw"].tolist() == [[2, 32, 32]]


@pytest.mark.parametrize("positions", ["original", "compact"])
def test_kv_reuse_prefills_each_video_once_with_the_same_answers(setup, tmp_path, positions):
    """The plumbing: the random tiny model answers the same whatever the positions, so tests/test_reuse.py compares
    the logits."""
    _, tiny, task_manager = setup
    for reuse in (False, True):
        model = model_at(tiny, 4, reducer=build_reducer("vidcom2", budget=0.5), positions=positions, kv_reuse=reuse,
                         record_dir=tmp_path / str(reuse))  # fmt: skip
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
        model_at(tiny, reducer=AsksTheQuestion(), kv_reuse=True)
    with pytest.raises(ValueError, match="query-agnostic reducer; 'fastv' looks at the question"):
        model_at(tiny, reducer=build_reducer("fastv", budget=0.5), positions="compact", kv_reuse=True)


def test_the_model_config_turns_the_channels_last_pooling_off(setup):
    _, folder, _ = setup
    model = model_at(folder)
    assert "apply_pooling" in vars(model.model.model)  # installed on the instance by default
    plain = ReducedVideoLLM.from_model_config(TINY | {"pretrained": str(folder), "channels_last_pooling": False})
    assert "apply_pooling" not in vars(plain.model.model)  # transformers' own, from the class
