"""The state one reduction point's hooks share (:class:`ReductionSession`), and the handoff of an outer stage's
plan to the stage inside the LLM that follows it (:class:`Handoff`).

The session builds a prefill's reduced sequence (:meth:`ReductionSession.reduce`), keeps the plan of the cache the
prefill filled, and places the tokens of later forwards on top of that cache
(:meth:`ReductionSession.place_new_tokens`); the rules they follow (where kept tokens and text go, the position
modes, continued prompts): :mod:`sttm.adapters.points`.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial

import torch

from sttm.adapters import family
from sttm.adapters.cache import cache_of
from sttm.adapters.plan import (
    Plan,
    Request,
    VideoSpan,
    continued_plan,
    default_positions,
    gather_along,
    gather_positions,
    kept_video_spans,
    left_pad,
    locate_videos,
)
from sttm.adapters.reduction_log import ReducedCall, ReductionLog
from sttm.api import Reducer, Reduction, VideoTokens, flat_positions, reduce_like

POSITION_MODES = ("original", "compact")


@dataclass
class Handoff:
    """The plan of an outer stage's latest reducing prefill and each row's reduction (None where that prefill held
    no video), read by the stage inside the LLM that follows it in the same forward."""

    plan: Plan | None = None
    reductions: tuple[Reduction, ...] | None = None


class ReductionSession:
    """The state shared by the hooks of one reduction point: the pending request, the plan of the last prefill that
    filled a cache (``prefilled``) and the plan of the prompt the cache holds now (``plan``: the prefill's, or it
    followed by a continued prompt)."""

    def __init__(self, model, reducer: Reducer, positions: str, after: Handoff | None = None) -> None:
        if positions not in POSITION_MODES:
            raise ValueError(f"unknown positions mode {positions!r}; choose one of: {', '.join(POSITION_MODES)}")
        if positions == "compact" and not family.compact_positions_apply(model):
            raise ValueError("compact positions are defined for LLaVA-OneVision; Qwen keeps its M-RoPE ids")
        self.model, self.reducer, self.positions, self.after = model, reducer, positions, after
        self.log = ReductionLog()
        self.request: Request | None = None
        self.videos: list[VideoSpan] | None = None
        self.prompt_length: int | None = None
        self.after_prompt = 0  # tokens a prefill runs after the prompt (generated ones, in a forward without a cache)
        self.prompt: torch.Tensor | None = None
        self.prefilled: Plan | None = None
        self.plan: Plan | None = None

    def capture_request(self, module, args, kwargs) -> None:
        """Pre-hook on the multimodal model: note each row's video and how long the request's prompt is."""
        input_ids = kwargs.get("input_ids", args[0] if args else None)
        if input_ids is None or not (input_ids == family.video_token_id(self.model)).any():
            self.request = None
            return
        prompt = self.prompt
        extends = (
            prompt is not None
            and input_ids.shape[0] == prompt.shape[0]
            and input_ids.shape[1] > prompt.shape[1]
            and torch.equal(input_ids[:, : prompt.shape[1]], prompt)
        )
        if not extends:
            self.prompt = input_ids
        grids = kwargs.get("video_grid_thw")
        if grids is not None and len(grids) != len(input_ids):
            raise ValueError(
                f"token reduction needs one video per batch row: {len(grids)} videos in {len(input_ids)} rows"
            )
        self.request = Request(input_ids == family.video_token_id(self.model), self.prompt.shape[1])

    def locate_videos(self, position_ids: torch.Tensor | None) -> bool:
        """At the language model's input in prefill: find the request's videos (consuming the request), if any."""
        request, self.request = self.request, None
        self.after_prompt = 0 if request is None else request.placeholders.shape[1] - request.prompt_length
        if request is None:
            self.videos = self.prompt_length = None
        elif self.after is not None:  # a stage inside the LLM after another: the tokens the outer one kept
            self.videos = None if self.after.plan is None else kept_video_spans(self.after.plan)
            self.prompt_length = request.prompt_length
        else:
            layout, newlines = partial(family.grid_shape, self.model), family.newlines_per_video(self.model)
            self.videos = locate_videos(
                request.placeholders, position_ids, layout, newlines, family.frames_apart(self.model)
            )
            self.prompt_length = request.prompt_length
        return self.videos is not None

    def reduce(
        self,
        states: torch.Tensor,
        position_ids: torch.Tensor | None,
        attention_mask: torch.Tensor | None,
        evidence: dict[str, torch.Tensor] | None = None,
        deepstack: list[torch.Tensor] | None = None,
    ) -> tuple[torch.Tensor, Plan, torch.Tensor, list[torch.Tensor] | None]:
        """Reduce each row's video in ``states`` [B, L, C] (positions [B|1, L] or [R, B, L], 2-D mask [B, L]);
        ``evidence`` holds what the reducer needs besides the grid, aligned with the sequence ([B, L, ...]);
        ``deepstack`` DeepStack levels, each [Σ video tokens, C] (the rows' video tokens in sequence order).

        Returns the reduced states [B, N', C], the plan, the reduced sequence's position ids [B, N'] or
        [R, B, N'] and the DeepStack levels cut alike (their tokens in the reduced sequence's order; None without);
        logs the reductions.
        """
        length, device = states.shape[1], states.device
        tokens, keeps, visuals, reductions = [], [], [], []
        levels: list[list[torch.Tensor]] = [[] for _ in deepstack or ()]
        offset = 0
        for index, (row, span) in enumerate(zip(states, self.videos, strict=True)):
            grid_shape = (span.frames, span.height, span.width)
            positions = span.positions(device)
            grid = row[positions].reshape(*grid_shape, -1)
            extras = {
                name: values[index, positions].reshape(*grid_shape, *values.shape[2:])
                for name, values in (evidence or {}).items()
            }
            outer = None if self.after is None else self.after.reductions[index]
            reduction = self.reducer(VideoTokens(grid, outer=outer, **extras))
            reductions.append(reduction)
            kept_at = positions[flat_positions(reduction.boxes.to(device), span.height, span.width)]
            # kept tokens join the run of their top-left patch, in the reducer's order; the text between runs stays
            run = span.run_of(kept_at)
            kept_order = run.sort(stable=True).indices
            text = torch.ones(length, dtype=torch.bool, device=device).index_fill_(0, positions, False)
            text = text.nonzero_static(size=length - span.num_tokens).squeeze(1)
            keys = torch.cat([2 * span.run_of(text) + 2, 2 * run[kept_order] + 1])
            order = keys.sort(stable=True).indices
            keeps.append(torch.cat([text, kept_at[kept_order]])[order])
            visuals.append(order >= len(text))
            tokens.append(torch.cat([row[text], reduction.tokens.to(states.dtype)[kept_order]])[order])
            for level, cut in zip(deepstack or (), levels, strict=True):
                values = level[offset : offset + span.num_tokens].reshape(*grid_shape, -1)
                cut.append(reduce_like(reduction, values)[kept_order.to(level.device)])
            offset += span.num_tokens
        if deepstack and offset != len(deepstack[0]):
            raise ValueError(
                f"DeepStack holds {len(deepstack[0])} visual tokens, the videos {offset}: reduction takes videos only"
            )
        self.log.calls.append(ReducedCall(tuple(reductions)))
        keep, valid = left_pad(keeps, 0)
        reduced, _ = left_pad(tokens, 0)
        visual, _ = left_pad(visuals, False)
        padded = len({len(row) for row in keeps}) > 1
        mask = torch.ones_like(keep) if attention_mask is None else gather_along(attention_mask, keep, 1)
        mask = mask * valid.to(mask.device)
        full_positions = default_positions(states) if position_ids is None else position_ids
        positions = gather_positions(full_positions, keep)
        if self.positions == "compact":
            renumbered = (mask.cumsum(-1) - 1).clamp(min=0).to(positions.device)
            positions = torch.where(keep.to(positions.device) < self.prompt_length, renumbered, positions)
        cut = None if deepstack is None else [torch.cat(rows) for rows in levels]
        return reduced, Plan(keep, valid, visual, length, mask, padded), positions, cut

    def remember(self, plan: Plan, caching: bool, reduces_first_layer: bool) -> None:
        """Keep the plan for decoding if the forward fills a cache; where the first layer's cache holds the reduced
        prompt, the Qwen models' ``rope_deltas`` absorb the N − N' tokens it lacks."""
        self.prefilled = self.plan = plan if caching else None
        deltas = family.rope_deltas(self.model)
        if self.plan is not None and reduces_first_layer and deltas is not None:
            family.set_rope_deltas(self.model, deltas + (plan.full - plan.length))

    def place_new_tokens(self, kwargs: dict, layer: int) -> tuple[Plan, int, torch.Tensor]:
        """Before a language-model forward (``kwargs``) of q tokens on top of the cache, whose reduced layers start
        at ``layer``: one token is a decoding step; several continue the last prefilled prompt (a question after its
        video prefix, :mod:`sttm.adapters.reuse`), whose cache must then hold just that prompt.

        Returns the plan of the cached prompt, the g tokens generated after it, and the new tokens' positions in the
        reduced layers [B, q]: a decoding step's continue after the full sequence (from N + g), a continued prompt's
        after the full prompt (original) or after the reduced one (compact: from N', as in a prefill of the whole
        prompt). Except for a compact continued prompt, the model's own position ids win where it gives them (Qwen's
        M-RoPE ids [R, B, q]). A continued prompt then joins the plan, so that decoding continues after it.
        """
        cache, embeds = cache_of(kwargs), kwargs["inputs_embeds"]
        batch, queries = embeds.shape[:2]
        continues_prompt = queries > 1
        if continues_prompt:
            if cache.get_seq_length(layer) != self.prefilled.length:
                raise ValueError(
                    "a forward of several tokens on a reduced cache must continue the last prefilled prompt, "
                    "but the cache holds more than that prompt"
                )
            self.plan = self.prefilled
        plan = self.plan
        generated = cache.get_seq_length(layer) - plan.length
        positions = kwargs.get("position_ids")
        after_reduced = continues_prompt and self.positions == "compact"
        if positions is None or after_reduced:
            start = plan.attention_mask.sum(-1, keepdim=True) if after_reduced else plan.full + generated
            positions = (start + torch.arange(queries, device=plan.attention_mask.device)).expand(batch, queries)
            positions = positions.to(embeds.device)
        if continues_prompt:
            mask = kwargs.get("attention_mask")
            added = torch.ones(batch, queries, dtype=torch.long) if mask is None else mask[:, -queries:]
            self.plan = continued_plan(plan, added)
        return plan, generated, positions

    def forward_on_reduced_first_layer(self, kwargs: dict) -> dict:
        """The language-model arguments of a forward on top of the cache when its first layer holds the reduced
        prompt: the 2-D mask keeps the kept columns and the new tokens get their positions
        (:meth:`place_new_tokens`)."""
        plan, generated, positions = self.place_new_tokens(kwargs, 0)
        embeds = kwargs["inputs_embeds"]
        batch, queries = embeds.shape[:2]
        mask = kwargs.get("attention_mask")
        if mask is not None or plan.padded:
            if mask is None:
                mask = torch.ones(batch, plan.full + generated + queries, dtype=torch.long, device=embeds.device)
            kwargs["attention_mask"] = torch.cat([plan.attention_mask.to(mask.dtype), mask[:, plan.full :]], dim=1)
        kwargs["position_ids"] = positions
        return kwargs
