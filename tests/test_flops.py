"""Prefill FLOPs from the tokens each layer sees, against a small case computed by hand."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from baselines.holitom import HoliTom
from sttm.adapters.flops import layer_flops, logged_tokens_per_layer, prefill_flops, tokens_per_layer
from sttm.adapters.reduction_log import ReducedCall, ReductionLog
from sttm.api import VideoTokens, keep_subset
from sttm.reducer import STTM

# two layers of width 4, two heads of 2, one key-value head (GQA), MLP width 8
CONFIG = SimpleNamespace(num_hidden_layers=2, hidden_size=4, num_attention_heads=2, num_key_value_heads=1,
                         intermediate_size=8, head_dim=None)  # fmt: skip


def test_one_layer_by_hand():
    # n = 3, D = 4, D_kv = 2, I = 8: projections 2·3·4·(4+4) + 2·3·4·4 = 192 + 96; attention 2·9·4 = 72;
    # MLP 6·3·4·8 = 576
    assert layer_flops(3, 4, 2, 8) == 192 + 96 + 72 + 576


def test_a_cut_at_layer_one_counts_the_reduced_sequence_from_there():
    counts = tokens_per_layer(2, prompt=3, cuts=[(1, 2)])
    assert counts == [3, 1]
    assert prefill_flops(CONFIG, counts) == layer_flops(3, 4, 2, 8) + layer_flops(1, 4, 2, 8)


def test_two_stages_cut_twice_and_a_cut_before_the_llm_cuts_every_layer():
    assert tokens_per_layer(4, prompt=100, cuts=[(0, 40), (2, 30)]) == [60, 60, 30, 30]
    with pytest.raises(ValueError, match="outside the language model's 4 layers"):
        tokens_per_layer(4, prompt=100, cuts=[(4, 1)])
    with pytest.raises(ValueError, match="3 token counts for a language model of 2 layers"):
        prefill_flops(CONFIG, [1, 2, 3])


def test_attention_grows_with_the_square_of_the_tokens():
    linear = layer_flops(2000, 64, 64, 0) - 2 * 2000**2 * 64
    assert layer_flops(4000, 64, 64, 0) - 2 * 4000**2 * 64 == pytest.approx(2 * linear)


def logged(*kept: int, visual: int = 8) -> ReductionLog:
    """A log of one forward per stage, the first handed ``visual`` tokens, each keeping ``kept[i]`` of those it is
    handed."""
    handed = [visual, *kept[:-1]]
    calls = [ReductionLog([ReducedCall((keep_subset(VideoTokens(torch.zeros(1, 1, size, 3)), torch.arange(count)),))])
             for size, count in zip(handed, kept, strict=True)]  # fmt: skip
    for outer, inner in zip(calls, calls[1:], strict=False):
        outer.inner = inner
    return calls[0] if calls else ReductionLog()


def test_the_logged_token_counts_cut_where_each_stage_acts():
    """A prompt of 10 tokens, 8 of them visual, in two layers: STTM at layer 1 keeping 3 cuts layer 1 to 5 tokens;
    HoliTom before the LLM keeping 4 and its merge inside the LLM at layer 1 keeping 2 cut layer 0 to 6 and layer 1
    to 4; no reduction leaves both layers at 10."""
    assert logged_tokens_per_layer(2, 10, None, ReductionLog()) == [10, 10]
    assert logged_tokens_per_layer(2, 10, STTM(budget=0.5, layer=1), logged(3)) == [10, 5]
    assert logged_tokens_per_layer(2, 10, HoliTom(budget=0.5, inner_layer=1), logged(4, 2)) == [6, 4]
    assert prefill_flops(CONFIG, [6, 4]) == layer_flops(6, 4, 2, 8) + layer_flops(4, 4, 2, 8)
