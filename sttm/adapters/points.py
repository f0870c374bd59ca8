"""Reduction points inside one transformers video-LLM instance (LLaVA-OneVision, Qwen2-VL, Qwen2.5-VL, Qwen3-VL).

Each point is a context manager that installs forward hooks on the given model instance, yields a
:class:`~sttm.adapters.reduction_log.ReductionLog`, and on exit removes its hooks and gives the model back what they
changed on it (the rope deltas); no class is patched. Where each family keeps its parts: :mod:`sttm.adapters.family`;
the bookkeeping of the reduced sequence: :mod:`sttm.adapters.plan`; the state a point's hooks share, which builds the
reduced sequence and places later forwards on its cache: :mod:`sttm.adapters.session`; the hooks of
:func:`llm_layer`: :mod:`sttm.adapters.layer_hooks`.

* :func:`pre_llm`: the reducer sees the video's projected tokens; a pre-hook on the language model rewrites
  ``inputs_embeds``, the 2-D attention mask and the position ids. Every layer's cache holds the reduced prompt.
* :func:`vision`: as :func:`pre_llm`, with the attention the vision tower's patches receive as evidence (SigLIP's,
  or a Qwen ViT's at its last full-attention block).
* :func:`llm_layer`: the reducer sees the hidden states at the input of decoder layer ``k`` during prefill; layers
  below ``k`` keep the full sequence and cache, layers from ``k`` on see the reduced one.
* :func:`two_stages`: a reducer before the LLM whose method also acts inside it (``Reducer.inner_stage``: HoliTom's
  merge, FlashVID's pruning, PruneVid's question-guided selection): the inner stage acts at its layer on the tokens
  the outer one kept, in their order (a 1×1×n grid, with the outer reduction as ``VideoTokens.outer``), keeping the
  positions they have; the outer stage hands it its plan and reductions through a :class:`Handoff`.

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

import torch

from sttm.adapters import family
from sttm.adapters.attention import received_attention_and_keys, vit_received_attention_and_keys
from sttm.adapters.cache import cache_of, fills_cache, is_prefill
from sttm.adapters.kv_pruning import KVPruning, kv_pruning_hooks
from sttm.adapters.layer_hooks import LayerHooks
from sttm.adapters.plan import frames_to_sequence
from sttm.adapters.reduction_log import ReductionLog
from sttm.adapters.session import Handoff, ReductionSession
from sttm.api import Reducer, Stage


@contextmanager
def installed(model, *handles) -> Iterator[None]:
    """The hooks of ``handles`` stay on ``model`` while inside; on exit they are removed and the model gets back the
    rope deltas it had on entry (a reduced prefill shifts them:
    :meth:`~sttm.adapters.session.ReductionSession.remember`)."""
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
                handoff.plan = handoff.reductions = None
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
                    handoff.plan, handoff.reductions = plan, session.log.last.reductions
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
