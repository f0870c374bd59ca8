"""The sweep's video cache: the same records with and without it, keys that change with what they key, bounds
that hold, and nothing left on the model."""

from __future__ import annotations

import json
import math
import multiprocessing
import os
import shutil
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from runners import settings
from runners.evaluate import plan_cells, run
from runners.lmms_model import Generation, Question, ReducedVideoLLM, model_config
from runners.records import QuestionRecord, read_records
from runners.toybench.render import write_video
from runners.video_cache import GB, VideoCache, charged, split_inputs, sweep_store, video_features
from sttm.adapters.family import FAMILIES, multimodal_model
from sttm.adapters.feature_cache import FeatureUse, cached_video_features, features_reusable, model_identity
from sttm.adapters.loading import video_inputs, video_question_prompt
from sttm.adapters.tiny import save_tiny_model, tiny_model, tiny_processor
from sttm.adapters.video import SampledVideo, read_frames
from sttm.api import build_reducer
from sttm.bounded_store import SUFFIX, BoundedStore, size_of, store_key

ROOT = Path(__file__).resolve().parents[1]
TRAINED = ROOT / "models" / "tiny_llava_onevision"
SAMPLING = {"target_fps": 1.0, "max_frames": 8, "pad_to_even": False, "pixels": None}


def sweep_records(tmp_path: Path, name: str, *overrides: str) -> dict:
    """The records of every cell of a sweep over full tokens and STTM on the trained tiny model, by (reducer,
    doc_id): 4 questions about 2 videos."""
    cfg = settings.compose_evaluate(
        f"results_dir={tmp_path / name}", f"benchmark.data_dir={tmp_path / 'data'}", f"model.pretrained={TRAINED}",
        "reducers=[sttm]", "limit=4", "benchmark.tasks=[toy_videomme]", *overrides,
    )  # fmt: skip
    run(cfg)
    return {(cell.reducer, row["doc_id"]): row for cell in plan_cells(cfg) for row in read_records(cell.path)}


@pytest.mark.skipif(not TRAINED.is_dir(), reason=f"the committed tiny model is not at {TRAINED}")
def test_a_sweep_records_the_same_answers_with_and_without_the_cache_and_resumes_from_its_disk_store(tmp_path):
    plain = sweep_records(tmp_path, "plain", "feature_cache=false")
    cached = sweep_records(tmp_path, "cached", "feature_cache_disk_gb=1")
    fields = ("prediction", "correct", "visual_tokens_before", "visual_tokens_after", "prefill_tokens", "error")
    assert plain.keys() == cached.keys() and len(plain) == 8
    assert all([plain[key][f] for f in fields] == [cached[key][f] for f in fields] for key in plain)
    assert len({row["prediction"] for row in plain.values()}) > 1  # answers that tell videos apart
    # the first question about each video computed its features (full tokens); every later one read them back, charged
    # the time they took
    assert not any("video_features" in row["extra"] for row in plain.values())
    first_asked = {min(key for key in cached if key[0] == "none" and cached[key]["video"] == video)
                   for video in {row["video"] for row in cached.values()}}  # fmt: skip
    read_back = {key for key, row in cached.items() if row["extra"].get("video_features") == "cache"}
    assert read_back == cached.keys() - first_asked and len(first_asked) == 2
    assert all(math.isfinite(row["vision_ms"]) and row["vision_ms"] > 0 for row in cached.values())

    # a resumed sweep in a new process, the STTM cell lost: only the disk store holds the features
    shutil.rmtree(tmp_path / "cached" / "tiny_llava_onevision" / "toybench" / "sttm")
    resumed = sweep_records(tmp_path, "cached", "feature_cache_disk_gb=1")
    assert all([resumed[key][f] for f in fields] == [cached[key][f] for f in fields] for key in cached)
    assert all(resumed[key]["extra"].get("video_features") == "cache" for key in resumed if key[0] == "sttm")


@pytest.mark.skipif(not TRAINED.is_dir(), reason=f"the committed tiny model is not at {TRAINED}")
def test_questions_sharing_one_prefill_answer_the_same_from_the_cache(tmp_path):
    config = dict(model_config("tiny_llava_onevision")) | {"pretrained": str(TRAINED)}
    llm = ReducedVideoLLM.from_model_config(config, reducer=build_reducer("pool", budget=0.5), kv_reuse=True)
    path = str(video_file(tmp_path / "a.mp4"))
    texts = ["which color appeared first ?", "how many times did it appear ?"]
    group = [
        Question(index, text, "toy", index, "A", path, Generation(4), {}, None) for index, text in enumerate(texts)
    ]
    plain = llm.answer_group(group)
    llm.video_cache = VideoCache(BoundedStore(GB), llm.processor, llm.model)
    computed, read_back = llm.answer_group(group), llm.answer_group(group)
    for records in (computed, read_back):
        assert [(r.prediction, r.visual_tokens_after) for r in records] == [
            (r.prediction, r.visual_tokens_after) for r in plain]  # fmt: skip
    assert "video_features" not in computed[0].extra and read_back[0].extra["video_features"] == "cache"
    assert read_back[0].prefill_ms == read_back[0].ttft_ms and math.isnan(read_back[0].vision_ms)
    assert "video_features" not in read_back[1].extra  # the first question carries the prefix's vision


def test_bad_bounds_fail_naming_the_key(tmp_path):
    cfg = settings.compose_evaluate(f"results_dir={tmp_path}", "feature_cache_memory_gb=-1")
    with pytest.raises(ValueError, match="feature_cache_memory_gb must be a number of GiB, 0 or more, got -1"):
        sweep_store(cfg)
    assert sweep_store(settings.compose_evaluate("feature_cache=false")) is None
    store = sweep_store(settings.compose_evaluate(f"results_dir={tmp_path}", "feature_cache_disk_gb=0.5"))
    assert store.memory_bytes == 8 * GB and store.disk_bytes == GB // 2 and store.directory.parent == tmp_path


def scene(frames: int, size: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 255, (frames, size, size, 3), dtype=np.uint8)


def request(model, processor, frames: np.ndarray, question: str = "what color ?") -> dict:
    kind = FAMILIES[model.config.model_type]
    return video_inputs(processor, kind, video_question_prompt(processor, question), SampledVideo(frames, 1.0))


@pytest.mark.parametrize("family", ["llava_onevision", "qwen2_vl", "qwen3_vl"])
def test_features_read_back_give_the_logits_and_tokens_of_the_tower_and_nothing_stays_installed(family):
    model, processor = tiny_model(family), tiny_processor(family)
    inputs = request(model, processor, scene(4, 224))
    store = BoundedStore(GB)
    with torch.inference_mode():
        plain = model(**inputs).logits
        tokens = model.generate(**inputs, max_new_tokens=3, do_sample=False)
        for expected_hit in (False, True):
            with cached_video_features(model, store, "video") as use:
                logits = model(**inputs).logits
            assert use.hit is expected_hit and torch.equal(logits, plain)
            assert math.isfinite(use.computed_ms) and use.computed_ms > 0
            assert "get_video_features" not in vars(multimodal_model(model))
        with cached_video_features(model, store, "video") as generated:  # generate encodes the video itself
            assert torch.equal(model.generate(**inputs, max_new_tokens=3, do_sample=False), tokens)
    assert generated.hit and use.lookup_ms >= 0 and store.hits == 2 and store.misses == 1
    other = request(model, processor, scene(8, 224, seed=1))
    with pytest.raises(ValueError, match="the key does not name this request's video"):
        with torch.inference_mode(), cached_video_features(model, store, "video"):
            model(**other)
    assert "get_video_features" not in vars(multimodal_model(model))  # removed after an error too
    assert not model._forward_hooks and not model._forward_pre_hooks


def test_a_second_cache_on_one_instance_is_refused():
    model = tiny_model("llava_onevision")
    with cached_video_features(model, BoundedStore(GB), "a"):
        with pytest.raises(ValueError, match="already installed"):
            with cached_video_features(model, BoundedStore(GB), "b"):
                pass


def test_reducers_in_the_vision_tower_run_it(tmp_path):
    assert features_reusable(None) and features_reusable(build_reducer("sttm", budget=0.5, layer=2))
    assert features_reusable(build_reducer("pool", budget=0.5))
    assert not features_reusable(build_reducer("visionzip", budget=0.5))
    model = tiny_model("llava_onevision")
    cache = VideoCache(BoundedStore(GB), tiny_processor("llava_onevision"), model)
    llm = SimpleNamespace(model=model, video_cache=cache, target_fps=1.0, max_frames=8, pixels=None,
                          reducer=build_reducer("visionzip", budget=0.5))  # fmt: skip
    path = str(video_file(tmp_path / "a.mp4"))
    with video_features(llm, path) as use:
        assert use is None and "get_video_features" not in vars(model.model)
    llm.reducer = build_reducer("pool", budget=0.5)
    with video_features(llm, path) as use:
        assert isinstance(use, FeatureUse) and "get_video_features" in vars(model.model)


@pytest.mark.parametrize("family", ["llava_onevision", "qwen2_vl", "qwen3_vl"])
def test_questions_about_one_video_share_its_video_part(family):
    model, processor = tiny_model(family), tiny_processor(family)
    frames = scene(4, 224)
    first, second = (split_inputs(request(model, processor, frames, q)) for q in ("what color ?", "how many ?"))
    assert first[0].keys() == second[0].keys() and "pixel_values_videos" in first[0]
    assert all(torch.equal(first[0][name], second[0][name]) for name in first[0])
    assert not torch.equal(first[1]["input_ids"], second[1]["input_ids"])


def video_file(path: Path, seed: int = 0) -> Path:
    write_video(list(scene(6, 64, seed)), path, fps=1)
    return path


def test_the_keys_change_with_the_video_its_sampling_the_processor_and_the_model(tmp_path):
    cache = VideoCache(BoundedStore(GB), tiny_processor("llava_onevision"), tiny_model("llava_onevision"))
    path = str(video_file(tmp_path / "a.mp4"))
    key = cache.video_key(path, SAMPLING)
    assert (
        key == cache.video_key(path, dict(SAMPLING)) and cache.video_key(str(tmp_path / "none.mp4"), SAMPLING) is None
    )
    changed = [
        cache.video_key(path, SAMPLING | {name: value})
        for name, value in (("target_fps", 2.0), ("max_frames", 4), ("pad_to_even", True), ("pixels", (1, 2)))
    ]
    shutil.copy(path, tmp_path / "b.mp4")
    changed.append(cache.video_key(str(tmp_path / "b.mp4"), SAMPLING))
    os.utime(path, ns=(1, 1))
    changed.append(cache.video_key(path, SAMPLING))
    other_processor = VideoCache(
        BoundedStore(GB), tiny_processor("llava_onevision", 112), tiny_model("llava_onevision")
    )
    changed.append(other_processor.video_key(path, SAMPLING))
    assert len({key, *changed}) == len(changed) + 1

    saved = save_tiny_model("llava_onevision", tmp_path / "tiny")
    loaded = [type(tiny_model("llava_onevision")).from_pretrained(saved, attn_implementation=attention, dtype=dtype)
              for attention, dtype in (("sdpa", torch.float32), ("sdpa", torch.float32), ("eager", torch.float32),
                                       ("sdpa", torch.bfloat16))]  # fmt: skip
    identities = [json.dumps(model_identity(model), sort_keys=True) for model in loaded]
    assert identities[0] == identities[1] and len(set(identities)) == 3  # the same checkpoint twice: one identity
    (saved / "model.safetensors").touch()
    assert json.dumps(model_identity(loaded[0]), sort_keys=True) != identities[0]  # its weights written again


def test_a_question_s_inputs_are_decoded_and_processed_once(tmp_path):
    model, processor = tiny_model("llava_onevision"), tiny_processor("llava_onevision")
    cache = VideoCache(BoundedStore(GB), processor, model)
    path = str(video_file(tmp_path / "a.mp4"))
    calls = {"decode": 0, "process": 0}

    def decode():
        calls["decode"] += 1
        return read_frames(path, 1.0, 8)

    def process(question):
        def run(video):
            calls["process"] += 1
            return request(model, processor, video.frames, question)

        return run

    made = [cache.inputs(path, SAMPLING, {"question": q}, decode, process(q)) for q in ("what color ?", "how many ?")]
    again = [cache.inputs(path, SAMPLING, {"question": q}, decode, process(q)) for q in ("what color ?", "how many ?")]
    assert calls == {"decode": 1, "process": 2}
    for first, second in zip(made, again, strict=True):
        assert first.keys() == second.keys() and all(torch.equal(first[name], second[name]) for name in first)


def test_the_memory_bound_holds_and_the_first_entries_stay():
    store = BoundedStore(2500)
    for name in "abc":
        store.put(name, {"values": torch.zeros(250)})  # 1000 bytes each
    assert store.held == 2000 <= store.memory_bytes
    assert store.get("a") is not None and store.get("b") is not None and store.get("c") is None
    store.put("a", {"values": torch.zeros(250)})
    assert store.held == 2000 and (store.hits, store.misses) == (2, 1)
    store.clear()
    assert store.held == 0 and store.get("a") is None
    with pytest.raises(ValueError, match="memory_bytes must be a whole number of bytes"):
        BoundedStore(-1)
    with pytest.raises(ValueError, match="needs both a directory and disk_bytes"):
        BoundedStore(0, disk_bytes=10)


def entry_bytes(tmp_path: Path) -> int:
    probe = BoundedStore(0, tmp_path / "probe", disk_bytes=GB)
    probe.put("probe", {"values": torch.zeros(250)})
    return probe.path("probe").stat().st_size


def fill(directory: Path, bound: int, names: str) -> None:
    store = BoundedStore(0, directory, disk_bytes=bound)
    for name in names:
        store.put(name, {"values": torch.full((250,), float(ord(name)))})


def test_the_disk_bound_holds_for_processes_writing_at_once_and_a_new_store_reads_their_entries(tmp_path):
    bound = 3 * entry_bytes(tmp_path) + 10
    context = multiprocessing.get_context("fork")
    writers = [context.Process(target=fill, args=(tmp_path / "store", bound, names)) for names in ("abcde", "fghij")]
    for writer in writers:
        writer.start()
    for writer in writers:
        writer.join()
        assert writer.exitcode == 0
    files = list((tmp_path / "store").iterdir())
    entries = [file for file in files if file.name.endswith(SUFFIX)]
    assert len(entries) == 3 and sum(file.stat().st_size for file in entries) <= bound
    assert {file.name for file in files} == {*(file.name for file in entries), ".lock"}  # no temporary file left
    reader = BoundedStore(GB, tmp_path / "store", disk_bytes=bound)
    for file in entries:
        name = file.name.removesuffix(SUFFIX)
        assert torch.equal(reader.get(name)["values"], torch.full((250,), float(ord(name))))
    assert reader.held == size_of({"values": torch.zeros(250)}) * 3


def test_a_damaged_entry_is_made_again(tmp_path):
    store = BoundedStore(0, tmp_path, disk_bytes=GB)
    store.path(store_key("x")).write_bytes(b"not an entry")
    assert store.get(store_key("x")) is None


def record(**fields) -> QuestionRecord:
    base = dict(task="t", doc_id=0, correct=None, prediction="A", answer="A", visual_tokens_before=10,
                visual_tokens_after=5, vision_ms=math.nan, prefill_ms=100.0, ttft_ms=130.0)  # fmt: skip
    return QuestionRecord(**(base | fields))


class Hit(FeatureUse):
    @property
    def lookup_ms(self) -> float:
        return 2.0


def test_a_question_whose_features_were_read_back_is_charged_the_time_they_took():
    use = Hit(hit=True, computed_ms=50.0)
    plain = charged([record()], use)[0]
    assert (plain.vision_ms, plain.ttft_ms, plain.prefill_ms) == (50.0, 178.0, 100.0)
    assert plain.extra == {"video_features": "cache", "video_features_lookup_ms": 2.0}
    first, second = charged([record(extra={"kv_reuse": True}), record(extra={"kv_reuse": True})], use)
    assert (first.prefill_ms, first.ttft_ms, math.isnan(first.vision_ms)) == (148.0, 178.0, True)
    assert second == record(extra={"kv_reuse": True})
    assert charged([record()], FeatureUse()) == [record()] and charged([record()], None) == [record()]


def test_the_cache_settings_are_not_part_of_a_cells_key(tmp_path):
    """The same answers with and without it: a run with the cache off resumes the cells of a run with it on."""
    overrides = ["reducers=[sttm]", f"results_dir={tmp_path}"]
    on = [cell.path for cell in plan_cells(settings.compose_evaluate(*overrides))]
    off = settings.compose_evaluate(*overrides, "feature_cache=false", "feature_cache_memory_gb=1")
    assert [cell.path for cell in plan_cells(off)] == on
