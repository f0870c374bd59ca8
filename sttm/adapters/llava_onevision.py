"""Token reduction inside one ``LlavaOnevisionForConditionalGeneration`` instance, through hooks only.

The visual tokens of a video are the run of ``video_token_id`` placeholders in ``input_ids``: T·H·W grid tokens
(H = W = ceil(image_size / patch_size / 2) after LLaVA's bilinear pooling), then one ``image_newline`` token,
which stays out of the grid and is kept. A reduction point is a context manager that installs forward hooks on
the model instance and removes them on exit; the model's classes are never patched.

* ``reduce_before_llm``: the reducer sees the projector's pooled output (a forward pre-hook on the language
  model rewrites ``inputs_embeds``, the 2-D mask and the position ids).
* ``reduce_at_layer(k)``: the reducer sees the hidden states at the input of decoder layer k during prefill;
  layers below k keep the full sequence and KV cache, layers from k on the reduced one.

Positions: ``original`` gives each kept token the position of its top-left source patch (text keeps its own;
decoding continues after the full prompt). ``compact`` renumbers the reduced prompt 0..N'−1 while decoding
continues at the full length, as the STTM authors' LLaVA code does (STTM_SPEC.md §3.2). Generated tokens are
the ones after the request's prompt, so a forward without a cache over prompt + generated tokens places them
as cached decoding does.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch

from sttm.api import Reducer, Reduction, VideoTokens, flat_positions

POSITIONS = ("original", "compact")


@dataclass
class ReductionLog:
    """What the reducer did at each prefill inside the context (one entry per prefill and batch row)."""

    reductions: list[Reduction] = field(default_factory=list)

    @property
    def last(self) -> Reduction:
        return self.reductions[-1]


@dataclass
class Plan:
    """How one prefill's sequence was reduced.

    keep:       [N'] indexes of the kept tokens in the full sequence, of length ``full``.
    positions:  [N'] their position ids.
    """

    keep: torch.Tensor
    full: int
    positions: torch.Tensor


def grid_side(model) -> int:
    vision = model.config.vision_config
    return math.ceil(vision.image_size // vision.patch_size / 2)


def plan_reduction(
    states: torch.Tensor, request: dict, side: int, reducer: Reducer, log: ReductionLog, positions: str
) -> tuple[torch.Tensor, Plan]:
    """Reduce the video span of ``states`` [1, L, D]; return the new states [1, N', D] and the plan.

    ``request["video_mask"]`` [1, L] marks the video placeholders (the last is the newline, which is kept);
    ``request["prompt_length"]`` tells the prompt from tokens generated after it.
    """
    video_mask = request["video_mask"]
    if states.shape[0] != 1:
        raise ValueError(f"token reduction supports batch size 1, got {states.shape[0]}")
    span = video_mask[0].nonzero().squeeze(1)
    if len(span) == 0:
        raise ValueError("no video tokens in the prompt: nothing to reduce")
    grid_tokens = len(span) - 1
    frames = grid_tokens // (side * side)
    if frames * side * side != grid_tokens or not torch.equal(
        span, span[0] + torch.arange(len(span), device=span.device)
    ):
        raise ValueError(f"the video tokens do not form one {side}x{side} grid per frame plus a newline")
    start, newline = int(span[0]), int(span[-1])
    grid = states[0, start:newline].reshape(frames, side, side, -1)
    reduction = reducer(VideoTokens(grid))
    log.reductions.append(reduction)
    kept_at = start + flat_positions(reduction.boxes, side, side)
    length = states.shape[1]
    device = states.device
    keep = torch.cat([torch.arange(start, device=device), kept_at, torch.arange(newline, length, device=device)])
    reduced = torch.cat([states[0, :start], reduction.tokens.to(states.dtype), states[0, newline:]])[None]
    if positions == "original":
        position_ids = keep
    else:
        in_prompt = keep < request["prompt_length"]
        position_ids = torch.where(in_prompt, torch.cumsum(in_prompt, 0) - 1, keep)
    return reduced, Plan(keep, length, position_ids)


def gather_mask(mask, plan: Plan, rows: bool):
    """The attention mask for the reduced sequence: a 2-D [B, kv] or 4-D [B, 1, q, kv] mask, or None."""
    if mask is None or not isinstance(mask, torch.Tensor):
        return mask
    kv_len = mask.shape[-1]
    columns = torch.cat([plan.keep, torch.arange(plan.full, kv_len, device=mask.device)])
    mask = mask[..., columns]
    if rows and mask.dim() == 4 and mask.shape[-2] == plan.full:
        mask = mask[:, :, plan.keep]
    return mask


def decode_with_reduced_cache(kwargs: dict, plan: Plan) -> dict:
    """A decoding step's language-model arguments when every layer's cache holds the reduced prompt: the 2-D
    mask keeps the kept columns, and the new tokens' positions continue after the full prompt."""
    embeds, cache = kwargs["inputs_embeds"], kwargs["past_key_values"]
    kwargs["attention_mask"] = gather_mask(kwargs.get("attention_mask"), plan, rows=False)
    if kwargs.get("position_ids") is None:
        step = torch.arange(embeds.shape[1], device=embeds.device)[None]
        kwargs["position_ids"] = step + cache.get_seq_length() + (plan.full - len(plan.keep))
    return kwargs


def _check_positions(positions: str) -> None:
    if positions not in POSITIONS:
        raise ValueError(f"unknown positions mode {positions!r}; choose one of: {', '.join(POSITIONS)}")


@contextmanager
def _hooks(*handles) -> Iterator[None]:
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


def _capture_request(model, state: dict):
    """A pre-hook on the multimodal model that notes where the video placeholders are and, for a sequence that
    extends the previous one, how long the request's prompt was."""
    video_token = model.config.video_token_id

    def hook(module, args, kwargs):
        input_ids = kwargs.get("input_ids", args[0] if args else None)
        if input_ids is None or not (input_ids == video_token).any():
            return
        prompt = state.get("prompt")
        extends = prompt is not None and input_ids.shape[1] > prompt.shape[1]
        if not (extends and torch.equal(input_ids[:, : prompt.shape[1]], prompt)):
            state["prompt"] = prompt = input_ids
        state["request"] = {"video_mask": input_ids == video_token, "prompt_length": prompt.shape[1]}

    return model.model.register_forward_pre_hook(hook, with_kwargs=True)


@contextmanager
def reduce_before_llm(model, reducer: Reducer, positions: str = "original") -> Iterator[ReductionLog]:
    """Reduce the video's projected tokens before the first decoder layer, for every forward in the context."""
    _check_positions(positions)
    side, log, state = grid_side(model), ReductionLog(), {"plan": None}

    def on_text_model(module, args, kwargs):
        embeds = kwargs["inputs_embeds"]
        cache = kwargs.get("past_key_values")
        prefill = cache is None or cache.get_seq_length() == 0
        request = state.pop("request", None)
        if prefill and request is not None:
            reduced, plan = plan_reduction(embeds, request, side, reducer, log, positions)
            state["plan"] = plan
            kwargs["inputs_embeds"] = reduced
            # an explicit mask: without one (and without a cache) transformers reads position ids that jump, as
            # original positions do, as packed sequences and stops attention at every jump
            mask = kwargs.get("attention_mask")
            mask = torch.ones(embeds.shape[:2], dtype=torch.long, device=embeds.device) if mask is None else mask
            kwargs["attention_mask"] = gather_mask(mask, plan, rows=False)
            kwargs["position_ids"] = plan.positions[None]
        elif state["plan"] is not None and not prefill:
            kwargs = decode_with_reduced_cache(kwargs, state["plan"])
        return args, kwargs

    with _hooks(
        _capture_request(model, state),
        model.model.language_model.register_forward_pre_hook(on_text_model, with_kwargs=True),
    ):
        yield log


@contextmanager
def reduce_at_layer(model, reducer: Reducer, layer: int, positions: str = "original") -> Iterator[ReductionLog]:
    """Reduce the video's hidden states at the input of decoder layer ``layer`` during prefill."""
    _check_positions(positions)
    text_model = model.model.language_model
    if not 0 <= layer < len(text_model.layers):
        raise ValueError(f"layer {layer} is out of range: the language model has {len(text_model.layers)} layers")
    side, log, state = grid_side(model), ReductionLog(), {"plan": None}

    def on_text_model(module, args, kwargs):
        cache = kwargs.get("past_key_values")
        state["prefill"] = cache is None or cache.get_seq_length(layer) == 0
        if state["prefill"]:
            state["plan"], state["pending"] = None, state.pop("request", None)
        elif layer == 0 and state["plan"] is not None:
            kwargs = decode_with_reduced_cache(kwargs, state["plan"])
        return args, kwargs

    def on_layer(index: int):
        def hook(module, args, kwargs):
            plan = state["plan"]
            if state["prefill"]:
                if index == layer:
                    if state["pending"] is None:
                        return args, kwargs
                    hidden, plan = plan_reduction(args[0], state["pending"], side, reducer, log, positions)
                    state["plan"] = plan
                    args = (hidden, *args[1:])
                if plan is None:
                    return args, kwargs
                kwargs["attention_mask"] = gather_mask(kwargs.get("attention_mask"), plan, rows=True)
                kwargs["position_ids"] = plan.positions[None]
                if positions == "original":
                    cos, sin = kwargs["position_embeddings"]
                    kwargs["position_embeddings"] = (cos[:, plan.keep], sin[:, plan.keep])
                else:
                    kwargs["position_embeddings"] = text_model.rotary_emb(args[0], plan.positions[None])
            elif plan is not None and layer > 0:  # the mask is sized by layer 0's cache, which is full
                kwargs["attention_mask"] = gather_mask(kwargs.get("attention_mask"), plan, rows=False)
            return args, kwargs

        return hook

    handles = [
        _capture_request(model, state),
        text_model.register_forward_pre_hook(on_text_model, with_kwargs=True),
        *(
            decoder.register_forward_pre_hook(on_layer(index), with_kwargs=True)
            for index, decoder in enumerate(text_model.layers)
            if index >= layer
        ),
    ]
    with _hooks(*handles):
        yield log
