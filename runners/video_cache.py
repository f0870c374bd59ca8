"""A sweep's video cache for the ``sttm_bench`` model: each video decoded, processed and encoded once per model
for all the cells of a sweep, instead of once per cell.

A question's model inputs are its video's part (the pixels and grid, the same for every question about the video)
and its text part (the token ids and masks, which the question adds), kept in a
:class:`~sttm.bounded_store.BoundedStore` under keys of the video file's identity (resolved path, size, modification
time), its sampling (target fps, most frames, padding to even), the processor (its settings and pixel bounds) and,
for the text part, the question and system prompt. A question whose two parts are kept needs no decoding and no
processor; otherwise the video is decoded (the latest video's frames are held for the next questions about it) and
processed, and both parts are kept. Its vision features are kept per model as well
(:mod:`sttm.adapters.feature_cache`), except under a reducer acting in the vision tower, which runs it.

A question whose features came from the cache is charged the vision time measured when they were computed: its
``vision_ms`` is that call's time and its ``ttft_ms`` (its ``prefill_ms`` too under ``kv_reuse``, which includes the
vision encoder) counts it in place of the time of copying them back, which ``extra.video_features_lookup_ms`` records
beside ``extra.video_features: "cache"``, so that the cells of a sweep compare as they would without the cache.

The runner keeps one per model copy (``feature_cache``, on by default: bounded by ``feature_cache_memory_gb`` per
process in memory and ``feature_cache_disk_gb`` in ``results_dir/.feature_cache``, which the data-parallel
processes and resumed runs share) and empties its memory when the sweep moves to another benchmark.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from contextlib import nullcontext
from functools import partial
from pathlib import Path

from omegaconf import DictConfig
from transformers import BatchFeature

from runners.records import QuestionRecord
from sttm.adapters.family import frames_in_pairs
from sttm.adapters.feature_cache import FeatureUse, cached_video_features, features_reusable, model_identity
from sttm.adapters.reuse import SEQUENCE_INPUTS
from sttm.adapters.video import SampledVideo, read_frames
from sttm.bounded_store import BoundedStore, store_key

CACHE_DIR = ".feature_cache"
GB = 2**30


def file_identity(path: str | Path) -> dict:
    """A video file as a key sees it: its resolved path, size and modification time (OSError if it is missing)."""
    status = Path(path).stat()
    return {"path": str(Path(path).resolve()), "size": status.st_size, "mtime_ns": status.st_mtime_ns}


def processor_identity(processor) -> str:
    """A digest of what a processor makes of a video and a prompt: its settings (those of its image and video
    processors among them), its chat template and its tokenizer's vocabulary."""
    settings = json.dumps(processor.to_dict(), sort_keys=True, default=str)
    return store_key(settings, processor.chat_template, sorted(processor.tokenizer.get_vocab().items()))


def split_inputs(inputs) -> tuple[dict, dict]:
    """A processor's output as its video part (every input but the sequence's) and its text part."""
    video = {name: value for name, value in inputs.items() if name not in SEQUENCE_INPUTS}
    text = {name: value for name, value in inputs.items() if name in SEQUENCE_INPUTS}
    return video, text


class VideoCache:
    """The inputs and features of the videos one model answers about (see the module docstring)."""

    def __init__(self, store: BoundedStore, processor, model) -> None:
        self.store = store
        self.processor = processor_identity(processor)
        self.model = model_identity(model)
        self.latest: tuple[str, SampledVideo] | None = None
        self.benchmark: str | None = None

    def start_benchmark(self, name: str) -> None:
        """Empty the memory when the sweep moves to another benchmark, whose videos are others."""
        if name != self.benchmark:
            self.store.clear()
            self.latest, self.benchmark = None, name

    def video_key(self, path: str, sampling: dict) -> str | None:
        """The key of the video at ``path`` sampled and processed so; None where it cannot be read."""
        try:
            return store_key("video", file_identity(path), sampling, self.processor)
        except OSError:
            return None

    def inputs(
        self,
        path: str,
        sampling: dict,
        prompt: dict,
        decode: Callable[[], SampledVideo],
        process: Callable[[SampledVideo], BatchFeature],
    ) -> BatchFeature:
        """The inputs ``process`` makes of the frames ``decode`` reads from ``path``, kept for the next time;
        ``sampling`` and ``prompt`` hold what else they depend on. ``decode``'s VideoError passes."""
        video_key = self.video_key(path, sampling)
        if video_key is None:
            return process(decode())
        text_key = store_key("text", video_key, prompt)
        text = self.store.get(text_key)
        video = None if text is None else self.store.get(video_key)
        if video is not None:
            return BatchFeature(video | text)
        if self.latest is None or self.latest[0] != video_key:
            self.latest = video_key, decode()
        inputs = process(self.latest[1])
        video, text = split_inputs(inputs)
        self.store.put(video_key, video)
        self.store.put(text_key, text)
        return inputs

    def features(self, model, path: str, sampling: dict):
        """The context inside which ``model``'s features of the video at ``path`` come from the cache."""
        video_key = self.video_key(path, sampling)
        if video_key is None:
            return nullcontext()
        return cached_video_features(model, self.store, store_key("features", video_key, self.model))


def sampling_of(llm) -> dict:
    """What ``llm`` (a ``runners.lmms_model.ReducedVideoLLM``) makes a video's pixels with, besides its processor."""
    return {"target_fps": llm.target_fps, "max_frames": llm.max_frames, "pad_to_even": frames_in_pairs(llm.model),
            "pixels": llm.pixels}  # fmt: skip


def group_inputs(llm, questions: list[str], path: str) -> list[BatchFeature]:
    """The model inputs of each question about the video at ``path``, as ``llm`` makes them: through its video
    cache where it has one, else from one decoding of the video. VideoError where it cannot be read."""
    sampling = sampling_of(llm)
    decode = partial(read_frames, path, sampling["target_fps"], sampling["max_frames"], sampling["pad_to_even"])
    if llm.video_cache is None:
        video = decode()
        return [llm.model_inputs(question, video) for question in questions]
    return [
        llm.video_cache.inputs(path, sampling, {"question": question, "system_prompt": llm.system_prompt}, decode,
                               partial(llm.model_inputs, question))
        for question in questions
    ]  # fmt: skip


def video_features(llm, path: str):
    """The context around ``llm``'s request about the video at ``path`` in which its features may come from the
    cache: none without a cache, or under a reducer that needs the vision tower to run."""
    if llm.video_cache is None or not features_reusable(llm.reducer):
        return nullcontext()
    return llm.video_cache.features(llm.model, path, sampling_of(llm))


def charged(records: list[QuestionRecord], use: FeatureUse | None) -> list[QuestionRecord]:
    """The records of one request, the first (which carries the vision encoder's time) charged the stored vision
    time where the features came from the cache."""
    if use is None or not use.hit:
        return records
    first, saved = records[0], use.computed_ms - use.lookup_ms
    extra = first.extra | {"video_features": "cache", "video_features_lookup_ms": use.lookup_ms}
    if first.extra.get("kv_reuse"):  # its prefill is the whole forward over the video's prefix
        first = dataclasses.replace(first, prefill_ms=first.prefill_ms + saved, ttft_ms=first.ttft_ms + saved,
                                    extra=extra)  # fmt: skip
    else:
        first = dataclasses.replace(first, vision_ms=use.computed_ms, ttft_ms=first.ttft_ms + saved, extra=extra)
    return [first, *records[1:]]


def sweep_store(cfg: DictConfig) -> BoundedStore | None:
    """The store of a run's video caches (None with ``feature_cache=false``); ValueError for bad bounds."""
    if not cfg.feature_cache:
        return None
    bounds = {}
    for name in ("feature_cache_memory_gb", "feature_cache_disk_gb"):
        value = cfg[name]
        if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
            raise ValueError(f"{name} must be a number of GiB, 0 or more, got {value!r}")
        bounds[name] = int(value * GB)
    disk = bounds["feature_cache_disk_gb"]
    return BoundedStore(
        bounds["feature_cache_memory_gb"], Path(cfg.results_dir) / CACHE_DIR if disk else None, disk_bytes=disk
    )
