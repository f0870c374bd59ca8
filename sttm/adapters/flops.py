"""Prefill FLOPs of a decoder-only language model from the tokens each of its layers sees.

A reducer shortens the sequence from the layer where it acts: every layer before it sees the whole prompt, every
layer from it on the reduced one (a method with a stage inside the LLM shortens it twice). Per layer, for n tokens
of width D, with ``D_kv`` the width of the keys and values (grouped-query attention) and I the MLP's inner width:

    projections  2·n·D·(D + 2·D_kv)  +  2·n·D·D        (queries, keys and values; the output)
    attention    2·n²·D                                 (QKᵀ and the weighted sum of values, causal: half of n²)
    MLP          6·n·D·I                                (SwiGLU: gate, up and down)

counting a multiply-add as two FLOPs, the embedding lookup, norms, rotary embeddings, softmax and the LM head
(one token in prefill) left out: FastV's count (Chen et al., 2024), with the causal mask and a gated MLP.
"""

from __future__ import annotations

from collections.abc import Sequence

from sttm.adapters.reduction_log import ReductionLog
from sttm.api import Reducer, Stage


def layer_flops(tokens: int, hidden: int, kv_width: int, intermediate: int) -> float:
    """FLOPs of one decoder layer over ``tokens`` tokens in prefill (see the module docstring)."""
    n, d = float(tokens), float(hidden)
    projections = 2 * n * d * (d + 2 * kv_width) + 2 * n * d * d
    return projections + 2 * n * n * d + 6 * n * d * intermediate


def prefill_flops(text_config, tokens_per_layer: Sequence[int]) -> float:
    """FLOPs of the language model's prefill when layer i sees ``tokens_per_layer[i]`` tokens (``text_config``: a
    transformers text config: hidden, intermediate and key-value widths)."""
    if len(tokens_per_layer) != text_config.num_hidden_layers:
        raise ValueError(
            f"{len(tokens_per_layer)} token counts for a language model of {text_config.num_hidden_layers} layers"
        )
    head_dim = getattr(text_config, "head_dim", None) or text_config.hidden_size // text_config.num_attention_heads
    kv_width = text_config.num_key_value_heads * head_dim
    return sum(
        layer_flops(n, text_config.hidden_size, kv_width, text_config.intermediate_size) for n in tokens_per_layer
    )


def tokens_per_layer(layers: int, prompt: int, cuts: Sequence[tuple[int, int]]) -> list[int]:
    """[layers] the tokens each layer sees: ``prompt`` tokens, less ``removed`` from layer ``first`` on for each
    ``(first, removed)`` of ``cuts`` (a reduction before the LLM cuts from layer 0)."""
    counts = [prompt] * layers
    for first, removed in cuts:
        if not 0 <= first < layers:
            raise ValueError(f"a cut at layer {first} is outside the language model's {layers} layers")
        counts[first:] = [count - removed for count in counts[first:]]
    return counts


def first_reduced_layer(reducer: Reducer) -> int:
    """The first decoder layer that sees the reduced sequence: 0 for a reducer before the LLM, else its layer."""
    return reducer.layer if reducer.stage is Stage.LLM_LAYER else 0


def logged_tokens_per_layer(layers: int, prompt: int, reducer: Reducer | None, log: ReductionLog) -> list[int]:
    """[layers] the tokens each layer saw in a prefill of ``prompt`` tokens as ``log`` recorded ``reducer``'s last
    forward: from :func:`first_reduced_layer` on, less the visual tokens it removed, and from its stage inside the
    LLM's layer on (``Reducer.inner_stage``), less those that stage removed; the whole prompt in every layer without
    a reduction."""
    cuts = []
    if reducer is not None and log.calls:
        cuts.append((first_reduced_layer(reducer), log.last.num_input - log.last.num_kept))
        if log.inner is not None and log.inner.calls:
            cuts.append((reducer.inner_stage().layer, log.inner.last.num_input - log.inner.last.num_kept))
    return tokens_per_layer(layers, prompt, cuts)
