"""KV-cache reuse: one prefill of the video prefix serves every question, with the same answers and logits, in both
position modes."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from toy_reducers import BlockMean

from sttm.adapters.points import llm_layer, pre_llm, reduction_point
from sttm.adapters.reuse import check_kv_reuse, greedy_from_prefix, looks_at_question, prefill_prefix, prefix_length
from sttm.adapters.session import POSITION_MODES
from sttm.adapters.tiny import FAMILIES, FRAME_SIZE, tiny_model, tiny_processor
from sttm.api import available_reducers, build_reducer
from sttm.reducer import STTM

QUESTIONS = ["what color is the ball ?", "which shape moved first ?", "how many times did it appear ?"]


POINTS = {
    "none": lambda model, positions: torch.no_grad(),
    "pre_llm": lambda model, positions: pre_llm(model, BlockMean(), positions),
    "layer_2": lambda model, positions: llm_layer(model, BlockMean(), 2, positions),
    "sttm_layer_0": lambda model, positions: llm_layer(
        model, STTM(threshold=0.2, temporal_threshold=0.1, root_level=0, layer=0), 0, positions
    ),
}
# compact positions are LLaVA-OneVision's (Qwen refuses them); without a reducer there is nothing to renumber
CASES = [
    (family, point, positions)
    for family in FAMILIES
    for point in POINTS
    for positions in POSITION_MODES
    if positions == "original" or (family == "llava_onevision" and point != "none")
]
QUERY_AGNOSTIC = [name for name in available_reducers() if not looks_at_question(build_reducer(name, budget=0.5))]


def prompts(family: str) -> list[dict]:
    processor = tiny_processor(family)
    video = np.random.default_rng(0).integers(0, 255, (4, FRAME_SIZE, FRAME_SIZE, 3), dtype=np.uint8)
    batches = []
    for question in QUESTIONS:
        messages = [{"role": "user", "content": [{"type": "video"}, {"type": "text", "text": question}]}]
        text = processor.apply_chat_template(messages, add_generation_prompt=True)
        batches.append(dict(processor(text=text, videos=[video], return_tensors="pt")))
    return batches


def reused_and_whole(model, point, batches: list[dict], max_new_tokens: int):
    """Inside the reduction point: greedy generation of each prompt prefilled whole, then the same prompts answered
    in sequence from one prefill of the first one's video prefix, the first prompt again last (a question after
    others starts from the same prefix state)."""
    with point, torch.no_grad():
        whole = [
            model.generate(**batch, max_new_tokens=max_new_tokens, do_sample=False, output_logits=True,
                           return_dict_in_generate=True, pad_token_id=model.config.text_config.pad_token_id)
            for batch in batches
        ]  # fmt: skip
        prefix = prefill_prefix(model, batches[0])
        reused = [greedy_from_prefix(model, prefix, batch["input_ids"], max_new_tokens) for batch in batches]
        again = greedy_from_prefix(model, prefix, batches[0]["input_ids"], max_new_tokens)
    return whole + whole[:1], reused + [again], batches + batches[:1]


def assert_same_answers_and_first_logits(whole, reused, batches) -> None:
    for reference, answer, batch in zip(whole, reused, batches, strict=True):
        assert torch.equal(reference.sequences[:, batch["input_ids"].shape[1] :], answer.tokens)
        assert (reference.logits[0] - answer.first_logits).abs().max() <= 1e-4


@pytest.mark.parametrize(("family", "point", "positions"), CASES)
def test_reusing_the_video_prefix_gives_the_answers_and_logits_of_full_prefills(family, point, positions):
    model = tiny_model(family)
    whole, reused, batches = reused_and_whole(model, POINTS[point](model, positions), prompts(family), 4)
    assert_same_answers_and_first_logits(whole, reused, batches)
    assert all(answer.prefill_ms > 0 for answer in reused)


def test_a_prompt_that_does_not_start_with_the_prefix_or_has_no_video_or_question_is_refused():
    model = tiny_model("llava_onevision")
    first, second = prompts("llava_onevision")[:2]
    prefix = prefill_prefix(model, first)
    with pytest.raises(ValueError, match="does not start with the prefilled video prefix"):
        greedy_from_prefix(model, prefix, torch.cat([second["input_ids"][:, 1:], second["input_ids"][:, :1]], 1), 2)
    with pytest.raises(ValueError, match="needs two tokens or more"):
        greedy_from_prefix(model, prefix, first["input_ids"][:, : prefix.length + 1], 2)
    with pytest.raises(ValueError, match="no video placeholder"):
        prefix_length(torch.tensor([[1, 2, 3]]), model.config.video_token_id)


@pytest.mark.parametrize("point", ["pre_llm", "layer_2"])
def test_a_forward_of_several_tokens_after_decoding_is_refused(point):
    model = tiny_model("llava_onevision")
    batch = prompts("llava_onevision")[0]
    with POINTS[point](model, "compact"), torch.no_grad():
        cache = model(**batch, use_cache=True).past_key_values
        model(input_ids=batch["input_ids"][:, -1:], past_key_values=cache, use_cache=True)
        with pytest.raises(ValueError, match="must continue the last prefilled prompt"):
            model(input_ids=batch["input_ids"][:, -2:], past_key_values=cache, use_cache=True)


@pytest.mark.parametrize("positions", POSITION_MODES)
@pytest.mark.parametrize("name", [*QUERY_AGNOSTIC, "dycoke_kv_pruning"])
def test_every_query_agnostic_reducer_gives_the_same_answers_and_logits_with_reuse(name, positions):
    model = tiny_model("llava_onevision")
    if name == "dycoke_kv_pruning":  # and DyCoke's pruning of the video's cache while decoding
        reducer = build_reducer("dycoke", budget=0.5, kv_prune_ratio=0.7, kv_layer=3)
    else:
        reducer = build_reducer(name, budget=0.5)
    point = reduction_point(model, reducer, positions)
    whole, reused, batches = reused_and_whole(model, point, prompts("llava_onevision")[:2], 3)
    assert_same_answers_and_first_logits(whole, reused, batches)


@pytest.mark.parametrize("name", [name for name in available_reducers() if name not in QUERY_AGNOSTIC])
def test_query_aware_reducers_and_compact_positions_on_qwen_are_refused(name):
    with pytest.raises(ValueError, match=f"query-agnostic reducer; '{name}' looks at the question"):
        check_kv_reuse(True, build_reducer(name, budget=0.5))
    with pytest.raises(ValueError, match="compact positions are defined for LLaVA-OneVision"):
        with reduction_point(tiny_model("qwen2_vl"), build_reducer("sttm", budget=0.5), "compact"):
            pass
