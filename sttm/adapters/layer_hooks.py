"""The hooks of the :func:`~sttm.adapters.points.llm_layer` reduction point (:class:`LayerHooks`) and what they
share during one forward of the language model (:class:`LayerPass`)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from sttm.adapters import family
from sttm.adapters.attention import after_video_attention, last_token_attention
from sttm.adapters.cache import cache_of, fills_cache, is_prefill
from sttm.adapters.plan import Plan, decode_columns, gather_along, reduced_layer_mask
from sttm.adapters.session import ReductionSession

#: the attention the hooks compute as "importance", by ``Reducer.importance_queries``
IMPORTANCE_QUERIES = ("last_token", "after_video")


@dataclass
class LayerPass:
    """What the hooks of :func:`~sttm.adapters.points.llm_layer` share during one forward of the language model.

    prefill:         whether the reduced layers' cache is empty (or there is none): the forward reduces its videos.
    has_videos:      whether the prefill's rows hold videos to reduce.
    attention_mask:  the prefill's 2-D mask [B, L].
    importance:      [B, L] the attention at the scored layer (``Reducer.importance_queries``), for the reducing
                     layer.
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
    """The hooks of :func:`~sttm.adapters.points.llm_layer`: on the language model (a new :class:`LayerPass` per
    forward), on the layer whose attention ranks the tokens, on the reducing layer, on the reduced layers after it
    and, after the reduced layers that DeepStack adds to, their cut levels."""

    def __init__(self, session: ReductionSession, layer: int) -> None:
        self.session, self.layer = session, layer
        self.scored_layer = layer - session.reducer.importance_lag
        if session.reducer.importance_queries not in IMPORTANCE_QUERIES:
            raise ValueError(
                f"reducer {session.reducer.name!r} ranks by the attention of {session.reducer.importance_queries!r}; "
                f"the llm_layer point gives that of: {', '.join(IMPORTANCE_QUERIES)}"
            )
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
        current, session = self.current, self.session
        if current.prefill and current.has_videos and "importance" in session.reducer.needs:
            if session.reducer.importance_queries == "after_video":
                video_ends = [span.end for span in session.videos]
                current.importance = after_video_attention(
                    module, args[0], current.attention_mask, video_ends, session.after_prompt
                )
            else:
                current.importance = last_token_attention(
                    module, args[0], kwargs["position_embeddings"], current.attention_mask, session.after_prompt
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
