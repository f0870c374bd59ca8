"""One prefill per video for all of its questions (query-agnostic KV-cache reuse).

The prompt is [system + video | question + assistant header]: its prefix, up to the last video placeholder, does
not depend on the question. Attention is causal and a query-agnostic reducer looks only at the prefix, so the
prefix's cache, reduction included, is the same for every question about the video. ``prefill_prefix`` runs the
model (and the reducer, inside a reduction point) on the prefix once; ``greedy_from_prefix`` copies that cache,
prefills only the question's tokens and decodes greedily. Inside the reduction point the question's forward
continues the last prefilled prompt (``sttm.adapters.session.ReductionSession.place_new_tokens``) where a prefill of
the whole prompt places it, in both position modes: after the full prefix with original positions, after the
reduced one with compact positions; decoding then continues after the full prompt. So a video's questions come
after its prefix's prefill and before the next prefill inside the same reduction point.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch

from sttm.adapters.family import video_token_id
from sttm.api import Reducer
from sttm.clock import Clock, timed

SEQUENCE_INPUTS = ("input_ids", "attention_mask", "mm_token_type_ids")


def looks_at_question(reducer: Reducer) -> bool:
    """Whether the reduction depends on the question: the reducer's, or that of its stage inside the LLM."""
    inner = reducer.inner_stage()
    return reducer.query_aware or (inner is not None and inner.query_aware)


def check_kv_reuse(kv_reuse: bool, reducer: Reducer | None) -> None:
    """Reuse needs a reduction that does not depend on the question."""
    if kv_reuse and reducer is not None and looks_at_question(reducer):
        raise ValueError(f"kv_reuse needs a query-agnostic reducer; {reducer.name!r} looks at the question")


def prefix_length(input_ids: torch.Tensor, video_token_id: int) -> int:
    """Tokens up to and including the last video placeholder of the single row of ``input_ids`` [1, L]."""
    if input_ids.shape[0] != 1:
        raise ValueError(f"KV reuse runs one request at a time, got a batch of {input_ids.shape[0]}")
    placeholders = (input_ids[0] == video_token_id).nonzero()
    if len(placeholders) == 0:
        raise ValueError("the prompt holds no video placeholder: there is no video prefix to reuse")
    return int(placeholders[-1]) + 1


@dataclass
class Prefix:
    """A video's prefilled prefix: its token ids [1, P] and cache, and the time the prefill took."""

    input_ids: torch.Tensor
    cache: object
    prefill_ms: float

    @property
    def length(self) -> int:
        return self.input_ids.shape[1]


def prefill_prefix(model, inputs: dict) -> Prefix:
    """Run the model on the prompt's video prefix, with the visual inputs, filling a cache (vision encoder and a
    reducer's work included in the time)."""
    length = prefix_length(inputs["input_ids"], video_token_id(model))
    prefix_inputs = {name: value[:, :length] if name in SEQUENCE_INPUTS else value for name, value in inputs.items()}
    output, prefill_ms = timed(lambda: model(**prefix_inputs, use_cache=True), model.device)
    return Prefix(prefix_inputs["input_ids"], output.past_key_values, prefill_ms)


@dataclass(frozen=True)
class Continuation:
    """Greedy tokens after a question, with the first step's logits [1, vocab] and timing in milliseconds."""

    tokens: torch.Tensor
    first_logits: torch.Tensor
    prefill_ms: float
    decode_ms_per_token: float


def greedy_from_prefix(model, prefix: Prefix, input_ids: torch.Tensor, max_new_tokens: int) -> Continuation:
    """Greedy decoding of the prompt ``input_ids`` [1, L] whose first tokens are ``prefix``'s, from a copy of its
    cache: only the L − P question tokens are prefilled, in one forward (the hooks tell it from a decoding step by
    its several tokens). Stops at the end-of-sequence token. Plain greedy: logits processors of the checkpoint's
    generation config (e.g. a repetition penalty) are not applied."""
    if not torch.equal(input_ids[:, : prefix.length], prefix.input_ids):
        raise ValueError("the prompt does not start with the prefilled video prefix")
    if input_ids.shape[1] - prefix.length < 2:
        raise ValueError("the question after the video prefix needs two tokens or more: one reads as a decoding step")
    cache = copy.deepcopy(prefix.cache)
    eos = model.generation_config.eos_token_id
    stop = set(eos if isinstance(eos, list) else [eos]) - {None}
    clock = Clock(model.device)
    step_ids, tokens, first_logits = input_ids[:, prefix.length :], [], None
    clock.mark("start")
    for step in range(max_new_tokens):
        # no mask (one unpadded row): every model then places new tokens after its cache, as in generate
        logits = model(input_ids=step_ids, past_key_values=cache, use_cache=True).logits[:, -1]
        clock.mark("prefilled" if step == 0 else "decoded")
        first_logits = logits if first_logits is None else first_logits
        step_ids = logits.argmax(dim=-1, keepdim=True)
        tokens.append(step_ids)
        if int(step_ids) in stop:
            break
    decode_ms = clock.between("prefilled", "decoded") / (len(tokens) - 1) if len(tokens) > 1 else float("nan")
    return Continuation(torch.cat(tokens, dim=1), first_logits, clock.between("start", "prefilled"), decode_ms)
