"""Reduction points inside one transformers video-LLM instance (LLaVA-OneVision, Qwen2-VL, Qwen2.5-VL, Qwen3-VL).

Each point is a context manager that installs forward hooks on the given model instance, yields a
:class:`~sttm.adapters.reduction_log.ReductionLog`, and on exit removes its hooks and gives the model back what they
changed on it (the rope deltas); no class is patched. Where each family keeps its parts: :mod:`sttm.adapters.family`;
the bookkeeping of the reduced sequence: :mod:`sttm.adapters.plan`.

* :func:`pre_llm`: the reducer sees the video's projected tokens; a pre-hook on the language model rewrites
  ``inputs_embeds``, the 2-D attention mask and the position ids. Every layer's cache holds the reduced prompt.
* :func:`vision`: as :func:`pre_llm`, with the attention the vision tower's patches receive as evidence (SigLIP's,
  or a Qwen ViT's at its last full-attention block).
* :func:`llm_layer`: the reducer sees the hidden states at the input of decoder layer ``k`` during prefill; layers
  below ``k`` keep the full sequence and cache, layers from ``k`` on see the reduced one.
* :func:`two_stages`: a reducer before the LLM whose method also acts inside it (``Reducer.inner_stage``: HoliTom's
  merge, FlashVID's pruning): the inner stage acts at its layer on the tokens the outer one kept, in their order
  (a 1×1×n grid), keeping the positions they have; the outer stage hands it its plan through a :class:`Handoff`.

Where text lies between a video's temporal patches (Qwen3-VL's timestamps), each kept token goes among the tokens of
the temporal patch of its top-left source patch, in the reducer's order; the text stays, in its place.

DeepStack (Qwen3-VL): the features the language model adds to the visual tokens after its first layers are cut as
the tokens are (``sttm.api.reduce_like``: the same selection, or the same weighted means of the same members) and
their visual-position mask becomes the reduced one: at the language model's input for :func:`pre_llm`; for
:func:`llm_layer` at layer k, the levels of layers before k stay whole and those of layers from k on are added by
forward hooks on those layers, cut; at a layer after DeepStack's, nothing else changes.

Positions: ``original`` (default) gives each kept token the position of its top-left source patch (Qwen: that
patch's M-RoPE (t, h, w) ids); text keeps its positions and decoding continues after the full prompt.
``compact`` (LLaVA only) renumbers the reduced prompt 0..N'−1 while decoding continues at the full length, as the
STTM authors' LLaVA code does. A forward without a cache over prompt + generated tokens places the generated
tokens as cached decoding does, so the two agree.

Forwards on top of a reduced cache: one new token is a decoding step; several continue the last prefilled prompt
(KV-cache reuse, :mod:`sttm.adapters.reuse`: a question after its video prefix). A continued prompt is placed as a
prefill of the whole prompt places it, in both modes (``original``: after the full prefix; ``compact``: after the
reduced one, in the reduced layers), its tokens join the plan of the cache, and decoding continues after the full
prompt.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial

import torch

from sttm.adapters import family
from sttm.adapters.attention import last_token_attention, received_attention_and_keys, vit_received_attention_and_keys
from sttm.adapters.cache import cache_of, fills_cache, is_prefill
from sttm.adapters.kv_pruning import KVPruning, kv_pruning_hooks
from sttm.adapters.plan import (
    Plan,
    Request,
    VideoSpan,
    continued_plan,
    decode_columns,
    default_positions,
    frames_to_sequence,
    gather_along,
    gather_positions,
    kept_video_spans,
    left_pad,
    locate_videos,
    reduced_layer_mask,
)
from sttm.adapters.reduction_log import ReducedCall, ReductionLog
from sttm.api import Reducer, Stage, VideoTokens, flat_positions, reduce_like

POSITION_MODES = ("original", "compact")


@dataclass
class Handoff:
    """The plan of an outer stage's latest reducing prefill (None where that prefill held no video), read by the
    stage inside the LLM that follows it in the same forward."""

    plan: Plan | None = None


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
            reduction = self.reducer(VideoTokens(grid, **extras))
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


@contextmanager
def installed(model, *handles) -> Iterator[None]:
    """The hooks of ``handles`` stay on ``model`` while inside; on exit they are removed and the model gets back the
    rope deltas it had on entry (a reduced prefill shifts them: :meth:`ReductionSession.remember`)."""
    deltas = family.rope_deltas(model)
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()
        family.set_rope_deltas(model, deltas)


def check_needs(reducer: Reducer, provided: frozenset[str], point: str) -> None:
    missing = sorted(reducer.needs - provided)
    if missing:
        raise ValueError(f"reducer {reducer.name!r} needs {', '.join(missing)}, which the {point} point cannot give")


@contextmanager
def pre_llm(
    model,
    reducer: Reducer,
    positions: str = "original",
    frame_evidence: dict[str, torch.Tensor] | None = None,
    kv_pruning: KVPruning | None = None,
    handoff: Handoff | None = None,
) -> Iterator[ReductionLog]:
    """Reduce each video's projected tokens before the first decoder layer, in every forward inside the context.

    ``frame_evidence`` (filled by :func:`vision`) holds per-frame values [B·T, H·W, ...] the reducer needs;
    ``kv_pruning`` also prunes the video's KV cache while decoding (DyCoke's second stage); ``handoff`` receives the
    plan of each reducing prefill, for a stage inside the LLM that follows (:func:`two_stages`).
    """
    session = ReductionSession(model, reducer, positions)
    check_needs(reducer, frozenset() if frame_evidence is None else frozenset({"importance", "keys"}), "pre_llm")

    def on_text_model(module, args, kwargs):
        cache = cache_of(kwargs)
        if is_prefill(cache, 0):
            session.plan = session.prefilled = None
            if handoff is not None:
                handoff.plan = None
            if session.locate_videos(kwargs.get("position_ids")):
                embeds = kwargs["inputs_embeds"]
                evidence = {
                    name: frames_to_sequence(values, session.videos, embeds.shape[1])
                    for name, values in (frame_evidence or {}).items()
                }
                reduced, plan, position_ids, deepstack = session.reduce(
                    embeds, kwargs.get("position_ids"), kwargs.get("attention_mask"), evidence,
                    kwargs.get("deepstack_visual_embeds"),
                )  # fmt: skip
                # an explicit mask: without one and without a cache, transformers reads position ids that jump
                # (as original positions do) as packed sequences
                kwargs.update(inputs_embeds=reduced, attention_mask=plan.attention_mask, position_ids=position_ids)
                if deepstack is not None:
                    kwargs.update(visual_pos_masks=plan.visual, deepstack_visual_embeds=deepstack)
                session.remember(plan, fills_cache(model, kwargs), reduces_first_layer=True)
                if handoff is not None:
                    handoff.plan = plan
        elif session.plan is not None:
            kwargs = session.forward_on_reduced_first_layer(kwargs)
        return args, kwargs

    pruning = [] if kv_pruning is None else kv_pruning_hooks(model, session, kv_pruning)
    with installed(
        model,
        family.multimodal_model(model).register_forward_pre_hook(session.capture_request, with_kwargs=True),
        family.text_model(model).register_forward_pre_hook(on_text_model, with_kwargs=True),
        *pruning,
    ):
        yield session.log


@contextmanager
def vision(
    model, reducer: Reducer, positions: str = "original", handoff: Handoff | None = None
) -> Iterator[ReductionLog]:
    """Reduce each video's projected tokens before the LLM using the vision tower's attention: the attention each
    patch receives and its keys, laid out as the tokens are. LLaVA-OneVision: at the SigLIP layer whose output the
    LLM uses, pooled to the grid as the features are. Qwen: at the ViT's last block that attends over whole frames
    (Qwen2.5-VL: its last full-attention block, its window order undone), each token the mean of the 2x2 patches
    its merger takes."""
    layer = family.vision_encoder_layers(model)[family.attention_read_layer(model)]
    evidence: dict[str, torch.Tensor] = {}

    def on_siglip_layer(module, args):
        with torch.no_grad():
            importance, keys = received_attention_and_keys(module, args[0])
        evidence["importance"] = family.pool_frame_features(model, importance[..., None])[..., 0]
        evidence["keys"] = family.pool_frame_features(model, keys)

    grids: dict[str, torch.Tensor] = {}

    def on_tower(module, args, kwargs):
        grids["thw"] = kwargs["grid_thw"] if "grid_thw" in kwargs else args[1]

    def on_vit_block(module, args, kwargs):
        with torch.no_grad():
            importance, keys = vit_received_attention_and_keys(
                module, args[0], kwargs["position_embeddings"], kwargs["cu_seqlens"]
            )
        evidence["importance"] = family.merged_patch_values(model, importance, grids["thw"])
        evidence["keys"] = family.merged_patch_values(model, keys, grids["thw"])

    if family.reads_siglip_attention(model):
        handles = [layer.register_forward_pre_hook(on_siglip_layer)]
    else:
        handles = [
            family.vision_tower(model).register_forward_pre_hook(on_tower, with_kwargs=True),
            layer.register_forward_pre_hook(on_vit_block, with_kwargs=True),
        ]
    with (
        installed(model, *handles),
        pre_llm(model, reducer, positions, frame_evidence=evidence, handoff=handoff) as log,
    ):
        yield log


@dataclass
class LayerPass:
    """What the hooks of :func:`llm_layer` share during one forward of the language model.

    prefill:         whether the reduced layers' cache is empty (or there is none): the forward reduces its videos.
    has_videos:      whether the prefill's rows hold videos to reduce.
    attention_mask:  the prefill's 2-D mask [B, L].
    importance:      [B, L] the attention of the last prompt token at the scored layer, for the reducing layer.
    plan:            the prefill's plan, from the reducing layer on.
    decode_columns:  after a prefill, the kv columns the reduced layers keep and those they block (None: none).
    rotary:          the reduced layers' position ids and (cos, sin); None where the forward's own apply.
    deepstack:       the DeepStack levels of the layers from the reducing one on: whole until it cuts them.
    """

    prefill: bool = False
    has_videos: bool = False
    attention_mask: torch.Tensor | None = None
    importance: torch.Tensor | None = None
    plan: Plan | None = None
    decode_columns: tuple[torch.Tensor, torch.Tensor | None] | None = None
    rotary: tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]] | None = None
    deepstack: list[torch.Tensor] | None = None


class LayerHooks:
    """The hooks of :func:`llm_layer`: on the language model (a new :class:`LayerPass` per forward), on the layer
    whose attention ranks the tokens, on the reducing layer, on the reduced layers after it and, after the reduced
    layers that DeepStack adds to, their cut levels."""

    def __init__(self, session: ReductionSession, layer: int) -> None:
        self.session, self.layer = session, layer
        self.scored_layer = layer - session.reducer.importance_lag
        self.rotary_embedding = family.rotary_embedding(session.model)
        self.current = LayerPass()

    def on_text_model(self, module, args, kwargs):
        session, layer = self.session, self.layer
        self.current = current = LayerPass(prefill=is_prefill(cache_of(kwargs), layer))
        if current.prefill:
            session.plan = session.prefilled = None
            current.attention_mask = kwargs.get("attention_mask")
            current.has_videos = session.locate_videos(kwargs.get("position_ids"))
            levels = kwargs.get("deepstack_visual_embeds")
            if current.has_videos and levels is not None and len(levels) > layer:
                # the language model adds the levels of the layers before this one; the hooks add the others
                current.deepstack = list(levels[layer:])
                kwargs["deepstack_visual_embeds"] = list(levels[:layer])
        elif layer == 0 and session.plan is not None:
            kwargs = session.forward_on_reduced_first_layer(kwargs)
        elif session.plan is not None:
            plan, generated, new_positions = session.place_new_tokens(kwargs, layer)
            current.decode_columns = decode_columns(plan, generated + kwargs["inputs_embeds"].shape[1])
            # compact: the reduced layers place a continued prompt after the reduced prompt, the full ones after
            # the full prompt
            if session.positions == "compact":
                current.rotary = new_positions, self.rotary_embedding(kwargs["inputs_embeds"], new_positions)
        return args, kwargs

    def on_scored_layer(self, module, args, kwargs):
        current = self.current
        if current.prefill and current.has_videos and "importance" in self.session.reducer.needs:
            current.importance = last_token_attention(
                module, args[0], kwargs["position_embeddings"], current.attention_mask, self.session.after_prompt
            )
        return args, kwargs

    def on_reducing_layer(self, module, args, kwargs):
        session, current = self.session, self.current
        if self.scored_layer == self.layer:
            self.on_scored_layer(module, args, kwargs)
        if current.prefill and current.has_videos:
            evidence = {"importance": current.importance} if "importance" in session.reducer.needs else {}
            current.importance = None
            reduced, plan, position_ids, current.deepstack = session.reduce(
                args[0], kwargs.get("position_ids"), current.attention_mask, evidence, current.deepstack
            )
            session.remember(plan, fills_cache(session.model, kwargs), reduces_first_layer=self.layer == 0)
            cos, sin = kwargs["position_embeddings"]
            if session.positions == "original":
                current.rotary = position_ids, (gather_along(cos, plan.keep, -2), gather_along(sin, plan.keep, -2))
            else:
                current.rotary = position_ids, self.rotary_embedding(reduced, position_ids)
            current.plan = plan
            args = (reduced, *args[1:])
        return self.on_reduced_layer(module, args, kwargs)

    def on_reduced_layer(self, module, args, kwargs):
        current = self.current
        plan = current.plan if current.prefill else self.session.plan
        if plan is None or (not current.prefill and self.layer == 0):
            return args, kwargs
        mask, queries = kwargs.get("attention_mask"), args[0].shape[1]
        if current.prefill:
            kwargs["attention_mask"] = reduced_layer_mask(mask, plan.keep, plan.keep, plan.blocked_columns, queries)
        else:
            kwargs["attention_mask"] = reduced_layer_mask(mask, None, *current.decode_columns, queries)
        if current.rotary is not None:
            position_ids, kwargs["position_embeddings"] = current.rotary
            if kwargs.get("position_ids") is not None:
                kwargs["position_ids"] = position_ids
        return args, kwargs

    def after_deepstack_layer(self, level: int):
        """A forward hook on a reduced layer that DeepStack adds to after it: adds its level ``level`` (counted from
        the reducing layer), cut, at the reduced visual positions, as the language model adds a level."""

        def add_level(module, args, kwargs, output):
            current = self.current
            if not current.prefill or current.deepstack is None:
                return output
            return family.deepstack_process(self.session.model)(output, current.plan.visual, current.deepstack[level])

        return add_level


@contextmanager
def llm_layer(
    model, reducer: Reducer, layer: int, positions: str = "original", after: Handoff | None = None
) -> Iterator[ReductionLog]:
    """Reduce each video's hidden states at the input of decoder layer ``layer``, during prefill. A reducer that
    needs ``importance`` gets the attention the last prompt token pays each visual token at layer
    ``layer − reducer.importance_lag`` (FastV ranks by the layer before the one it prunes at). ``after``: the
    videos are the tokens an outer stage kept (:func:`two_stages`)."""
    session = ReductionSession(model, reducer, positions, after)
    check_needs(reducer, frozenset({"importance"}), "llm_layer")
    layers = family.decoder_layers(model)
    if not 0 <= layer < len(layers):
        raise ValueError(f"layer {layer} is out of range: the language model has {len(layers)} layers")
    hooks = LayerHooks(session, layer)
    if not 0 <= hooks.scored_layer <= layer:
        raise ValueError(
            f"reducer {reducer.name!r} ranks by the attention of layer {hooks.scored_layer}, before layer 0"
        )
    layer_hooks = [
        decoder.register_forward_pre_hook(
            hooks.on_reducing_layer if index == layer else hooks.on_reduced_layer, with_kwargs=True
        )
        for index, decoder in enumerate(layers)
        if index >= layer
    ]
    if hooks.scored_layer < layer:
        layer_hooks.append(
            layers[hooks.scored_layer].register_forward_pre_hook(hooks.on_scored_layer, with_kwargs=True)
        )
    layer_hooks += [
        layers[index].register_forward_hook(hooks.after_deepstack_layer(index - layer), with_kwargs=True)
        for index in range(layer, family.deepstack_levels(model))
    ]
    with installed(
        model,
        family.multimodal_model(model).register_forward_pre_hook(session.capture_request, with_kwargs=True),
        family.text_model(model).register_forward_pre_hook(hooks.on_text_model, with_kwargs=True),
        *layer_hooks,
    ):
        yield session.log


def stage_point(model, reducer: Reducer, positions: str = "original", handoff: Handoff | None = None):
    """The context that applies ``reducer`` at its declared stage. A reducer with a ``kv_pruning`` attribute
    (DyCoke) also prunes the KV cache while decoding; ``handoff`` (before the LLM only) receives its plans."""
    if reducer.stage is Stage.VISION:
        return vision(model, reducer, positions, handoff)
    if reducer.stage is Stage.PRE_LLM:
        return pre_llm(model, reducer, positions, kv_pruning=getattr(reducer, "kv_pruning", None), handoff=handoff)
    if reducer.stage is Stage.LLM_LAYER and handoff is None:
        return llm_layer(model, reducer, reducer.layer, positions)
    raise ValueError(
        f"reducer {reducer.name!r} acts at stage {reducer.stage.value!r}, which has no reduction point"
        + (" followed by a stage inside the LLM" if handoff is not None else "")
    )


@contextmanager
def two_stages(model, reducer: Reducer, inner: Reducer, positions: str = "original") -> Iterator[ReductionLog]:
    """``reducer`` at its stage before the LLM, then ``inner`` at the input of decoder layer ``inner.layer`` on the
    tokens it kept, in their order, with the positions they were given (``original`` within the reduced sequence,
    whatever ``positions`` the outer stage uses). The log is the outer stage's; its ``inner`` is the inner one's."""
    if inner.stage is not Stage.LLM_LAYER:
        raise ValueError(f"the inner stage of {reducer.name!r} must act in the LLM, not at {inner.stage.value!r}")
    handoff = Handoff()
    with (
        stage_point(model, reducer, positions, handoff) as log,
        llm_layer(model, inner, inner.layer, "original", after=handoff) as inner_log,
    ):
        log.inner = inner_log
        yield log


def reduction_point(model, reducer: Reducer | None, positions: str = "original"):
    """The context that applies ``reducer`` where it acts (nothing for full tokens), with the stage inside the LLM
    that follows it if it has one (``Reducer.inner_stage``)."""
    if reducer is None:
        return contextlib.nullcontext(ReductionLog())
    inner = reducer.inner_stage()
    if inner is not None:
        return two_stages(model, reducer, inner, positions)
    return stage_point(model, reducer, positions)
