"""Per-request timing around generate."""

from __future__ import annotations

import math

import numpy as np
import torch

from sttm.adapters.llava_onevision import reduce_at_layer
from sttm.adapters.timing import timed_generate
from sttm.adapters.tiny import tiny_llava_onevision, tiny_llava_onevision_processor
from sttm.reducer import STTM


def inputs():
    processor = tiny_llava_onevision_processor()
    messages = [{"role": "user", "content": [{"type": "video"}, {"type": "text", "text": "Which shape ?"}]}]
    text = processor.apply_chat_template(messages, add_generation_prompt=True)
    video = np.random.default_rng(0).integers(0, 255, (6, 224, 224, 3), dtype=np.uint8)
    return processor(text=text, videos=[video], return_tensors="pt")


def test_timing_parts_are_measured_and_generation_is_unchanged():
    model, batch = tiny_llava_onevision(), inputs()
    plain = model.generate(**batch, max_new_tokens=4, do_sample=False, min_new_tokens=4)
    output, timing = timed_generate(model, batch, max_new_tokens=4, do_sample=False, min_new_tokens=4)
    assert torch.equal(plain, output) and timing.new_tokens == 4
    assert timing.vision_ms > 0 and timing.prefill_ms > 0 and timing.decode_ms_per_token > 0
    assert timing.ttft_ms >= timing.vision_ms + timing.prefill_ms
    assert math.isnan(timing.peak_memory_mb)  # CPU
    modules = [model.model.vision_tower, model.model.language_model]
    assert all(not m._forward_pre_hooks and not m._forward_hooks for m in modules)


def test_timing_works_inside_a_reduction_context():
    model, batch = tiny_llava_onevision(), inputs()
    with reduce_at_layer(model, STTM(threshold=0.0, temporal_threshold=0.1, root_level=0), 2) as log:
        _, timing = timed_generate(model, batch, max_new_tokens=2, do_sample=False, min_new_tokens=2)
    assert timing.prefill_ms > 0 and log.last.reducer_ms > 0
