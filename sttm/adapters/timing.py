"""Per-request timing of ``generate`` on a video LLM, without synchronising inside the generation loop.

Definitions (all in milliseconds; CUDA events on GPU, ``perf_counter`` on CPU; the video is already decoded):

* ``vision_ms``: from the vision tower's start to the language model's start: vision encoder, projector,
  pooling and the placement of the features among the text embeddings.
* ``prefill_ms``: the language model's first forward (all decoder layers over the prompt, a reducer acting
  at its input or inside it included), as the STTM paper's "pre-filling" time; the vision encoder is not in it.
* ``ttft_ms``: from the call of ``generate`` to the first generated token.
* ``decode_ms_per_token``: the time of each later token, averaged.
* ``peak_memory_mb``: the device's peak allocated memory during the call (NaN on CPU).

Clocks are marked from hooks and a logits processor; on GPU the events are read once, after the call.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from transformers import LogitsProcessor, LogitsProcessorList

from sttm.adapters.family import text_model, vision_tower
from sttm.clock import Clock


@dataclass(frozen=True)
class Timing:
    vision_ms: float
    prefill_ms: float
    ttft_ms: float
    decode_ms_per_token: float
    peak_memory_mb: float
    new_tokens: int


class _MarkTokens(LogitsProcessor):
    """Marks the first and the latest token as generate asks for them."""

    def __init__(self, clock: Clock) -> None:
        self.clock, self.calls = clock, 0

    def __call__(self, input_ids, scores):
        self.calls += 1
        self.clock.mark("first_token" if self.calls == 1 else "last_token")
        return scores


def timed_generate(model, inputs: dict, **generate_kwargs) -> tuple[torch.Tensor, Timing]:
    """``model.generate(**inputs, **generate_kwargs)`` with its timing (see the module docstring)."""
    device = next(model.parameters()).device
    clock = Clock(device)
    marker = _MarkTokens(clock)
    language_model = text_model(model)
    state = {"prefill_done": False}

    def on_vision_start(module, args):
        if "vision" not in clock.marks:
            clock.mark("vision")

    def on_language_start(module, args, kwargs):
        if not state["prefill_done"]:
            clock.mark("prefill_start")

    def on_language_end(module, args, kwargs, output):
        if not state["prefill_done"]:
            clock.mark("prefill_end")
            state["prefill_done"] = True

    handles = [
        vision_tower(model).register_forward_pre_hook(on_vision_start),
        # first among the language model's pre-hooks: a reducer acting at its input counts in the prefill
        language_model.register_forward_pre_hook(on_language_start, with_kwargs=True, prepend=True),
        language_model.register_forward_hook(on_language_end, with_kwargs=True),
    ]
    if clock.cuda:
        torch.cuda.reset_peak_memory_stats(device)
    processors = LogitsProcessorList([*generate_kwargs.pop("logits_processor", []), marker])
    try:
        clock.mark("call")
        output = model.generate(**inputs, logits_processor=processors, **generate_kwargs)
        clock.mark("end")
    finally:
        for handle in handles:
            handle.remove()
    new_tokens = output.shape[1] - inputs["input_ids"].shape[1]
    timing = Timing(
        vision_ms=clock.between("vision", "prefill_start"),
        prefill_ms=clock.between("prefill_start", "prefill_end"),
        ttft_ms=clock.between("call", "first_token"),
        decode_ms_per_token=clock.between("first_token", "last_token") / (marker.calls - 1)
        if marker.calls > 1
        else math.nan,
        peak_memory_mb=torch.cuda.max_memory_allocated(device) / 2**20 if clock.cuda else math.nan,
        new_tokens=new_tokens,
    )
    return output, timing
