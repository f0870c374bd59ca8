"""Methods with a stage before the LLM and one inside it (HoliTom's merge, FlashVID's pruning): the inner stage acts
at its layer on the tokens the outer one kept, cached decoding equals recomputing the two-stage forward, and each
layer's cache holds the sequence its stage left."""

from __future__ import annotations

import pytest
import torch
from test_points import generate, inputs, installed_hooks

from baselines.flashvid import FlashVID
from baselines.holitom import HoliTom
from sttm.adapters.points import reduction_point, stage_point
from sttm.adapters.tiny import tiny_model

INNER_LAYER = 2


def two_stage_reducers() -> dict:
    return {
        "holitom": HoliTom(budget=0.5, inner_layer=INNER_LAYER, inner_keep=0.5),
        "flashvid": FlashVID(budget=0.5, llm_layer=INNER_LAYER, llm_keep=0.5),
    }


@pytest.mark.parametrize("attention", ["sdpa", "eager"])
@pytest.mark.parametrize("method", ["holitom", "flashvid"])
@pytest.mark.parametrize("batch", [1, 2])
def test_cached_decoding_equals_recomputing_the_two_stage_forward(attention, method, batch):
    model = tiny_model("llava_onevision", attn_implementation=attention)
    model_inputs = inputs("llava_onevision", batch)
    with reduction_point(model, two_stage_reducers()[method]) as log:
        _, cached = generate(model, model_inputs, use_cache=True)
        _, recomputed = generate(model, model_inputs, use_cache=False)
    assert log.inner is not None
    assert log.inner.last.num_input == log.last.num_kept  # the inner stage got the tokens the outer one kept
    assert log.inner.last.num_kept < log.last.num_kept < log.last.num_input
    assert (cached - recomputed).abs().max() <= 1e-4


@pytest.mark.parametrize("method", ["holitom", "flashvid"])
def test_layers_below_the_inner_stage_hold_the_outer_sequence_and_the_others_the_inner_one(method):
    model = tiny_model("llava_onevision")
    model_inputs = inputs("llava_onevision", 1)
    with reduction_point(model, two_stage_reducers()[method]) as log:
        out, _ = generate(model, model_inputs, steps=3)
    full = model_inputs["input_ids"].shape[1]
    outer = full - log.last.num_input + log.last.num_kept
    inner = outer - log.inner.last.num_input + log.inner.last.num_kept
    layers = model.config.text_config.num_hidden_layers
    lengths = [out.past_key_values.get_seq_length(index) for index in range(layers)]
    assert lengths == [outer + 2] * INNER_LAYER + [inner + 2] * (layers - INNER_LAYER)


def test_an_inner_stage_keeping_everything_is_the_outer_stage_alone():
    model = tiny_model("llava_onevision")
    model_inputs = inputs("llava_onevision", 2)
    keep_all = HoliTom(budget=0.5, inner_layer=INNER_LAYER, inner_keep=1.0)
    with stage_point(model, keep_all) as log:
        _, alone = generate(model, model_inputs)
    assert log.inner is None
    with reduction_point(model, keep_all) as log:
        _, both = generate(model, model_inputs)
    assert log.inner.last.kept_ratio == 1.0 and torch.equal(alone, both)


def test_switching_the_inner_stage_off_leaves_the_outer_one():
    assert HoliTom(inner_merge=False).inner_stage() is None
    assert FlashVID(llm_prune=False).inner_stage() is None


def test_the_two_stages_leave_no_hooks():
    model = tiny_model("llava_onevision")
    model_inputs = inputs("llava_onevision", 1)
    generate(model, model_inputs)
    before = installed_hooks(model)
    with reduction_point(model, two_stage_reducers()["flashvid"]):
        generate(model, model_inputs)
    assert installed_hooks(model) == before
