"""FastV keeps exactly the visual tokens the last prompt token attends to most, at the layer before it prunes."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from baselines.fastv import FastV, most_attended
from sttm.adapters.points import reduction_point
from sttm.adapters.tiny import FRAME_SIZE, tiny_model, tiny_processor
from sttm.api import VideoTokens, flat_positions


def test_keeps_the_top_k_by_importance_in_their_original_order():
    grid = torch.randn(2, 2, 3, 4)
    importance = torch.tensor([[[0.1, 0.9, 0.2], [0.3, 0.0, 0.8]], [[0.7, 0.05, 0.6], [0.4, 0.5, 0.01]]])
    reduction = FastV(budget=0.5)(VideoTokens(grid, importance=importance))
    kept = flat_positions(reduction.boxes, 2, 3)
    assert kept.tolist() == sorted(importance.flatten().topk(6).indices.tolist()) == [1, 5, 6, 8, 9, 10]
    assert torch.equal(reduction.tokens, grid.reshape(-1, 4)[kept])
    assert reduction.kept_ratio == 0.5 and reduction.info["prune_ratio"] == 0.5


def test_ties_go_to_the_lower_index_and_budget_one_keeps_everything():
    assert most_attended(torch.ones(1, 2, 2), 2).tolist() == [0, 1]
    video = VideoTokens(torch.randn(2, 2, 2, 3), importance=torch.rand(2, 2, 2))
    assert FastV(budget=1.0)(video).num_kept == 8


def test_bad_input_names_the_problem():
    with pytest.raises(ValueError, match="needs importance"):
        FastV()(VideoTokens(torch.randn(1, 2, 2, 3), question="what?"))
    with pytest.raises(ValueError, match=r"budget must lie in \(0, 1\]"):
        FastV(budget=0.0)
    with pytest.raises(ValueError, match="layer must be >= 1"):
        FastV(layer=0)


def test_in_the_model_it_keeps_the_most_attended_tokens_of_the_layer_before():
    model = tiny_model("llava_onevision", attn_implementation="eager")
    processor = tiny_processor("llava_onevision")
    messages = [{"role": "user", "content": [{"type": "video"}, {"type": "text", "text": "what color is it ?"}]}]
    text = processor.apply_chat_template(messages, add_generation_prompt=True)
    video = np.random.default_rng(0).integers(0, 255, (4, FRAME_SIZE, FRAME_SIZE, 3), dtype=np.uint8)
    inputs = processor(text=text, videos=[video], return_tensors="pt")
    with torch.no_grad():
        plain = model(**inputs, output_attentions=True)
        with reduction_point(model, FastV(budget=0.25, layer=2)) as log:
            model(**inputs)
    span = (inputs["input_ids"][0] == model.config.video_token_id).nonzero().squeeze(1)[:-1]  # newline stays out
    attention = plain.attentions[1][0, :, -1].mean(dim=0)[span]
    expected = attention.topk(int(0.25 * len(span))).indices.sort().values
    reduction = log.last.reductions[0]
    assert torch.equal(flat_positions(reduction.boxes, 8, 8), expected)


@pytest.mark.parametrize("attention", ["sdpa", "eager"])
def test_cached_decoding_equals_recomputing_the_pruned_forward(attention):
    """Without a cache, each step reruns the prompt with the tokens generated so far: the ranking is still the last
    prompt token's, over the prompt, so the same tokens are pruned."""
    from test_points import generate, inputs

    model = tiny_model("llava_onevision", attn_implementation=attention)
    model_inputs = inputs("llava_onevision", 2)
    with reduction_point(model, FastV(budget=0.25, layer=2)):
        _, cached = generate(model, model_inputs, use_cache=True)
        _, recomputed = generate(model, model_inputs, use_cache=False)
    assert (cached - recomputed).abs().max() <= 1e-4
