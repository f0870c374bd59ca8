"""Per-request timing around generate."""

from __future__ import annotations

import math
import time

import numpy as np
import pytest
import torch

from sttm.adapters.family import text_model, vision_tower
from sttm.adapters.points import llm_layer, reduction_point
from sttm.adapters.timing import timed_generate
from sttm.adapters.tiny import FAMILIES, FRAME_SIZE, tiny_model, tiny_processor
from sttm.api import Reducer, Reduction, Stage, VideoTokens, keep_everything
from sttm.reducer import STTM


def inputs(family="llava_onevision"):
    processor = tiny_processor(family)
    messages = [{"role": "user", "content": [{"type": "video"}, {"type": "text", "text": "Which shape ?"}]}]
    text = processor.apply_chat_template(messages, add_generation_prompt=True)
    video = np.random.default_rng(0).integers(0, 255, (6, FRAME_SIZE, FRAME_SIZE, 3), dtype=np.uint8)
    return processor(text=text, videos=[video], return_tensors="pt")


@pytest.mark.parametrize("family", FAMILIES)
def test_timing_parts_are_measured_and_generation_is_unchanged(family):
    model, batch = tiny_model(family), inputs(family)
    plain = model.generate(**batch, max_new_tokens=4, do_sample=False, min_new_tokens=4)
    output, timing = timed_generate(model, batch, max_new_tokens=4, do_sample=False, min_new_tokens=4)
    assert torch.equal(plain, output) and timing.new_tokens == 4
    assert timing.vision_ms > 0 and timing.prefill_ms > 0 and timing.decode_ms_per_token > 0
    assert timing.ttft_ms >= timing.vision_ms + timing.prefill_ms
    assert math.isnan(timing.peak_memory_mb)  # CPU
    modules = [vision_tower(model), text_model(model)]
    assert all(not m._forward_pre_hooks and not m._forward_hooks for m in modules)


def test_timing_works_inside_a_reduction_context():
    model, batch = tiny_model("llava_onevision"), inputs()
    with llm_layer(model, STTM(threshold=0.0, temporal_threshold=0.1, root_level=0), 2) as log:
        _, timing = timed_generate(model, batch, max_new_tokens=2, do_sample=False, min_new_tokens=2)
    assert timing.prefill_ms > 0 and log.last.reducer_ms > 0


class FrozenClock:
    """A perf_counter that stands still except when a test moves it."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


CLOCK = FrozenClock()


class SlowPreLLM(Reducer):
    """Keeps everything and takes one second of the frozen clock: that second must land in the prefill."""

    name = "slow_pre_llm"
    stage = Stage.PRE_LLM

    def reduce(self, video: VideoTokens) -> Reduction:
        CLOCK.now += 1.0
        return keep_everything(video)


def test_a_pre_llm_reducer_counts_in_the_prefill_not_in_the_vision_time(monkeypatch):
    model, batch = tiny_model("llava_onevision"), inputs()
    monkeypatch.setattr(time, "perf_counter", CLOCK)
    with reduction_point(model, SlowPreLLM()):
        _, timing = timed_generate(model, batch, max_new_tokens=1, do_sample=False)
    assert (timing.vision_ms, timing.prefill_ms) == (0.0, 1000.0)
