"""KV-cache reuse: one prefill of the video prefix serves every question, with the same answers and logits."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from toy_reducers import BlockMean

from sttm.adapters.hooks import llm_layer, pre_llm, reduction_point
from sttm.adapters.reuse import greedy_from_prefix, prefill_prefix, prefix_length
from sttm.adapters.tiny import FAMILIES, FRAME_SIZE, tiny_model, tiny_processor
from sttm.api import available_reducers, build_reducer, reducer_class
from sttm.reducer import STTM

QUESTIONS = ["what color is the ball ?", "which shape moved first ?", "how many times did it appear ?"]


POINTS = {
    "none": lambda model: torch.no_grad(),
    "pre_llm": lambda model: pre_llm(model, BlockMean()),
    "layer_2": lambda model: llm_layer(model, BlockMean(), 2),
    "sttm_layer_0": lambda model: llm_layer(
        model, STTM(threshold=0.2, temporal_threshold=0.1, root_level=0, layer=0), 0
    ),
}


def prompts(family: str) -> list[dict]:
    processor = tiny_processor(family)
    video = np.random.default_rng(0).integers(0, 255, (4, FRAME_SIZE, FRAME_SIZE, 3), dtype=np.uint8)
    batches = []
    for question in QUESTIONS:
        messages = [{"role": "user", "content": [{"type": "video"}, {"type": "text", "text": question}]}]
        text = processor.apply_chat_template(messages, add_generation_prompt=True)
        batches.append(dict(processor(text=text, videos=[video], return_tensors="pt")))
    return batches


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("point", POINTS)
def test_reusing_the_video_prefix_gives_the_answers_and_logits_of_full_prefills(family, point):
    model = tiny_model(family)
    batches = prompts(family)
    with POINTS[point](model), torch.no_grad():
        expected = [
            model.generate(**batch, max_new_tokens=4, do_sample=False, output_logits=True,
                           return_dict_in_generate=True, pad_token_id=model.config.text_config.pad_token_id)
            for batch in batches
        ]  # fmt: skip
        prefix = prefill_prefix(model, batches[0])
        reused = [greedy_from_prefix(model, prefix, batch["input_ids"], max_new_tokens=4) for batch in batches]
    for reference, batch, answer in zip(expected, batches, reused, strict=True):
        assert torch.equal(reference.sequences[:, batch["input_ids"].shape[1] :], answer.tokens)
        assert (reference.logits[0] - answer.first_logits).abs().max() <= 1e-4
    assert all(answer.prefill_ms > 0 for answer in reused)


def test_a_prompt_that_does_not_start_with_the_prefix_or_has_no_video_is_refused():
    model = tiny_model("llava_onevision")
    first, second = prompts("llava_onevision")[:2]
    prefix = prefill_prefix(model, first)
    with pytest.raises(ValueError, match="does not start with the prefilled video prefix"):
        greedy_from_prefix(model, prefix, torch.cat([second["input_ids"][:, 1:], second["input_ids"][:, :1]], 1), 2)
    with pytest.raises(ValueError, match="no video placeholder"):
        prefix_length(torch.tensor([[1, 2, 3]]), model.config.video_token_id)


@pytest.mark.parametrize("name", [name for name in available_reducers() if not reducer_class(name).query_aware])
def test_every_query_agnostic_reducer_gives_the_same_answers_with_reuse(name):
    model = tiny_model("llava_onevision")
    batches = prompts("llava_onevision")[:2]
    reducer = build_reducer(name, budget=0.5)
    with reduction_point(model, reducer), torch.no_grad():
        expected = [model.generate(**batch, max_new_tokens=3, do_sample=False) for batch in batches]
        prefix = prefill_prefix(model, batches[0])
        reused = [greedy_from_prefix(model, prefix, batch["input_ids"], max_new_tokens=3) for batch in batches]
    for reference, batch, answer in zip(expected, batches, reused, strict=True):
        assert torch.equal(reference[:, batch["input_ids"].shape[1] :], answer.tokens)
