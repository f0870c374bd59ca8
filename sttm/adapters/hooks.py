"""Reduction points inside one transformers video-LLM instance (LLaVA-OneVision, Qwen2-VL, Qwen2.5-VL).

Each point is a context manager that installs forward hooks on the given model instance, yields a
:class:`ReductionLog`, and removes its hooks on exit; no class is patched.

* :func:`pre_llm`: the reducer sees the video's projected tokens; a pre-hook on the language model rewrites
  ``inputs_embeds``, the 2-D attention mask and the position ids. Every layer's cache holds the reduced prompt.
* :func:`llm_layer`: the reducer sees the hidden states at the input of decoder layer ``k`` during prefill; layers
  below ``k`` keep the full sequence and cache, layers from ``k`` on see the reduced one.

The visual tokens of a row are the run of the model's video placeholder ids in ``input_ids``: a ``[T, H, W]`` grid
(LLaVA-OneVision: H = W = ceil(patches per side / 2) after bilinear pooling, followed by one ``image_newline`` token
that stays out of the grid and is kept; Qwen: ``video_grid_thw`` over the spatial merge size). One video per row.
Rows that keep different numbers of tokens are left-padded with masked filler slots to a common length.

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
import math
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch

from sttm.adapters.attention import decoder_queries_and_keys, last_token_attention, received_attention_and_keys
from sttm.api import Reducer, Reduction, Stage, VideoTokens, flat_positions

POSITION_MODES = ("original", "compact")


@dataclass(frozen=True)
class ReducedCall:
    """One reducing forward: a reduction per batch row."""

    reductions: tuple[Reduction, ...]

    @property
    def num_input(self) -> int:
        """Visual tokens before reduction, over the batch."""
        return sum(reduction.num_input for reduction in self.reductions)

    @property
    def num_kept(self) -> int:
        return sum(reduction.num_kept for reduction in self.reductions)

    @property
    def kept_ratio(self) -> float:
        return self.num_kept / self.num_input

    @property
    def reducer_ms(self) -> float:
        return sum(reduction.reducer_ms for reduction in self.reductions)


@dataclass
class ReductionLog:
    """What the reducer did at each reducing forward inside the context."""

    calls: list[ReducedCall] = field(default_factory=list)
    pruning_steps: list = field(default_factory=list)

    @property
    def last(self) -> ReducedCall:
        return self.calls[-1]


@dataclass(frozen=True)
class VideoSpan:
    """One row's video grid: tokens ``start`` to ``start + T·H·W`` of the sequence, laid out [T, H, W]."""

    start: int
    frames: int
    height: int
    width: int

    @property
    def end(self) -> int:
        return self.start + self.frames * self.height * self.width


@dataclass(frozen=True)
class Request:
    """A forward's video placeholders [B, L], and the length of its prompt (later tokens were generated after it)."""

    placeholders: torch.Tensor
    prompt_length: int


@dataclass(frozen=True)
class Plan:
    """How a sequence of length ``full`` was reduced, row by row, to length N'.

    keep:            [B, N'] index in the full sequence of each token of the reduced one.
    valid:           [B, N'] bool, False for the filler slots that left-pad rows shorter than the longest.
    visual:          [B, N'] bool, True for the video's tokens.
    attention_mask:  [B, N'] the 2-D mask of the reduced sequence.
    padded:          whether any row has filler slots (known on the host, so that no layer waits for the device).
    """

    keep: torch.Tensor
    valid: torch.Tensor
    visual: torch.Tensor
    full: int
    attention_mask: torch.Tensor
    padded: bool

    @property
    def length(self) -> int:
        return self.keep.shape[1]

    @property
    def blocked_columns(self) -> torch.Tensor | None:
        """[B, N'] True for the filler slots, or None when there are none."""
        return ~self.valid if self.padded else None


def is_qwen(model) -> bool:
    return model.config.model_type in ("qwen2_vl", "qwen2_5_vl")


def newlines_per_video(model) -> int:
    """Tokens after a video's grid that share its placeholder id: LLaVA-OneVision's ``image_newline``."""
    return 0 if is_qwen(model) else 1


def grid_shape(model, placeholders: int, rope_ids: torch.Tensor | None) -> tuple[int, int, int]:
    """(T, H, W) of a video grid of ``placeholders`` tokens: LLaVA-OneVision's from its config; Qwen's from the
    M-RoPE (t, h, w) ids [3, n] of its tokens, whose h and w ids count the rows and columns."""
    if not is_qwen(model):
        vision = model.config.vision_config
        side = math.ceil(vision.image_size // vision.patch_size / 2)
        return (placeholders - newlines_per_video(model)) // side**2, side, side
    if rope_ids is None:
        raise ValueError("Qwen needs its M-RoPE position ids to lay out the video: pass mm_token_type_ids")
    height, width = (int(ids.max() - ids.min()) + 1 for ids in rope_ids[1:])
    return placeholders // (height * width), height, width


def locate_videos(model, placeholders: torch.Tensor, position_ids: torch.Tensor | None) -> list[VideoSpan]:
    """The video grid of each row, from the placeholder mask [B, L] and (Qwen) the M-RoPE ids [3|4, B, L].

    Raises ValueError unless each row holds one video.
    """
    spans = []
    for row, indexes in enumerate(row.nonzero().squeeze(1) for row in placeholders):
        if len(indexes) == 0 or int(indexes[-1] - indexes[0]) + 1 != len(indexes):
            raise ValueError("token reduction needs one video per batch row (one run of video placeholders)")
        rope_ids = None if position_ids is None or position_ids.dim() < 3 else position_ids[-3:, row, indexes]
        frames, height, width = grid_shape(model, len(indexes), rope_ids)
        if frames == 0 or frames * height * width + newlines_per_video(model) != len(indexes):
            raise ValueError(f"{len(indexes)} video placeholders do not form a {frames}x{height}x{width} grid")
        spans.append(VideoSpan(int(indexes[0]), frames, height, width))
    return spans


def gather_along(values: torch.Tensor, index: torch.Tensor, dim: int) -> torch.Tensor:
    """Per batch row b, ``values[b]`` at ``index[b]`` along ``dim``: values [B|1, ...], index [B, N] → N at ``dim``,
    on the device of ``values`` (a model split over GPUs keeps masks and rotary tables where it made them)."""
    index = index.to(values.device)
    dim = dim % values.dim()
    values = values.expand(index.shape[0], *values.shape[1:])
    shape = [1] * values.dim()
    shape[0], shape[dim] = index.shape
    target = list(values.shape)
    target[dim] = index.shape[1]
    return values.gather(dim, index.reshape(shape).expand(target))


def gather_positions(position_ids: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """Position ids [B|1, L] or [R, B|1, L] at ``index`` [B, N] along the sequence → [B, N] or [R, B, N]."""
    if position_ids.dim() == 2:
        return gather_along(position_ids, index, 1)
    return gather_along(position_ids.movedim(1, 0), index, -1).movedim(0, 1)


def masked_value(mask: torch.Tensor):
    """What a 4-D mask holds where attention is blocked: False (boolean masks) or the dtype's minimum."""
    return False if mask.dtype == torch.bool else torch.finfo(mask.dtype).min


def causal_mask(allowed_columns: torch.Tensor, queries: int) -> torch.Tensor:
    """Boolean [B, 1, q, kv] mask: the last ``queries`` of kv tokens attend causally to the allowed columns [B, kv]."""
    kv = allowed_columns.shape[1]
    causal = torch.ones(queries, kv, dtype=torch.bool, device=allowed_columns.device).tril(kv - queries)
    return causal[None, None] & allowed_columns[:, None, None, :].bool()


def left_pad(rows: list[torch.Tensor], fill) -> tuple[torch.Tensor, torch.Tensor]:
    """Stack [n_b, ...] rows into [B, max n_b, ...], filling on the left; also return the [B, N] valid mask."""
    length = max(len(row) for row in rows)
    if all(len(row) == length for row in rows):
        padded = rows[0][None] if len(rows) == 1 else torch.stack(rows)
        return padded, torch.ones(padded.shape[:2], dtype=torch.bool, device=padded.device)
    padded = torch.stack([torch.cat([row.new_full((length - len(row), *row.shape[1:]), fill), row]) for row in rows])
    valid = torch.stack([torch.arange(length, device=padded.device) >= length - len(row) for row in rows])
    return padded, valid


def default_positions(states: torch.Tensor) -> torch.Tensor:
    """[B, L] positions 0..L−1: what the language model uses when given none (it ignores padding too)."""
    batch, length = states.shape[:2]
    return torch.arange(length, device=states.device).expand(batch, length)


class ReductionSession:
    """The state shared by the hooks of one reduction point: the pending request, the plan of the last prefill that
    filled a cache (``prefilled``) and the plan of the prompt the cache holds now (``plan``: the prefill's, or it
    followed by a continued prompt)."""

    def __init__(self, model, reducer: Reducer, positions: str) -> None:
        if positions not in POSITION_MODES:
            raise ValueError(f"unknown positions mode {positions!r}; choose one of: {', '.join(POSITION_MODES)}")
        if positions == "compact" and is_qwen(model):
            raise ValueError("compact positions are defined for LLaVA-OneVision; Qwen keeps its M-RoPE ids")
        self.model, self.reducer, self.positions = model, reducer, positions
        self.log = ReductionLog()
        self.plan_visual: torch.Tensor | None = None
        self.request: Request | None = None
        self.videos: list[VideoSpan] | None = None
        self.prompt_length: int | None = None
        self.prompt: torch.Tensor | None = None
        self.prefilled: Plan | None = None
        self.plan: Plan | None = None

    def capture_request(self, module, args, kwargs) -> None:
        """Pre-hook on the multimodal model: note each row's video and how long the request's prompt is."""
        input_ids = kwargs.get("input_ids", args[0] if args else None)
        if input_ids is None or not (input_ids == self.model.config.video_token_id).any():
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
        self.request = Request(input_ids == self.model.config.video_token_id, self.prompt.shape[1])

    def locate_videos(self, position_ids: torch.Tensor | None) -> bool:
        """At the language model's input in prefill: find the request's videos (consuming the request), if any."""
        request, self.request = self.request, None
        self.videos = None if request is None else locate_videos(self.model, request.placeholders, position_ids)
        self.prompt_length = None if request is None else request.prompt_length
        return self.videos is not None

    def reduce(
        self,
        states: torch.Tensor,
        position_ids: torch.Tensor | None,
        attention_mask: torch.Tensor | None,
        evidence: dict[str, torch.Tensor] | None = None,
    ) -> tuple[torch.Tensor, Plan, torch.Tensor]:
        """Reduce each row's video in ``states`` [B, L, C] (positions [B|1, L] or [R, B, L], 2-D mask [B, L]);
        ``evidence`` holds what the reducer needs besides the grid, aligned with the sequence ([B, L, ...]).

        Returns the reduced states [B, N', C], the plan and the reduced sequence's position ids [B, N'] or
        [R, B, N']; logs the reductions.
        """
        length, device = states.shape[1], states.device
        tokens, keeps, reductions = [], [], []
        for index, (row, span) in enumerate(zip(states, self.videos, strict=True)):
            grid_shape = (span.frames, span.height, span.width)
            grid = row[span.start : span.end].reshape(*grid_shape, -1)
            extras = {
                name: values[index, span.start : span.end].reshape(*grid_shape, *values.shape[2:])
                for name, values in (evidence or {}).items()
            }
            reduction = self.reducer(VideoTokens(grid, **extras))
            reductions.append(reduction)
            kept_at = span.start + flat_positions(reduction.boxes.to(device), span.height, span.width)
            before, after = torch.arange(span.start, device=device), torch.arange(span.end, length, device=device)
            keeps.append(torch.cat([before, kept_at, after]))
            tokens.append(torch.cat([row[: span.start], reduction.tokens.to(states.dtype), row[span.end :]]))
        self.log.calls.append(ReducedCall(tuple(reductions)))
        keep, valid = left_pad(keeps, 0)
        reduced, _ = left_pad(tokens, 0)
        padded = len({len(row) for row in keeps}) > 1
        # where each row's kept video begins once left-padded (host integers: nothing waits for the device)
        firsts = [keep.shape[1] - len(row) + span.start for row, span in zip(keeps, self.videos, strict=True)]
        slots = torch.arange(keep.shape[1], device=device)
        visual = torch.stack(
            [(slots >= first) & (slots < first + r.num_kept) for first, r in zip(firsts, reductions, strict=True)]
        )
        mask = torch.ones_like(keep) if attention_mask is None else gather_along(attention_mask, keep, 1)
        mask = mask * valid.to(mask.device)
        full_positions = default_positions(states) if position_ids is None else position_ids
        positions = gather_positions(full_positions, keep)
        if self.positions == "compact":
            renumbered = (mask.cumsum(-1) - 1).clamp(min=0).to(positions.device)
            positions = torch.where(keep.to(positions.device) < self.prompt_length, renumbered, positions)
        return reduced, Plan(keep, valid, visual, length, mask, padded), positions

    def remember(self, plan: Plan, caching: bool, reduces_first_layer: bool) -> None:
        """Keep the plan for decoding if the forward fills a cache; where the first layer's cache holds the reduced
        prompt, the Qwen models' ``rope_deltas`` absorb the N − N' tokens it lacks."""
        self.prefilled = self.plan = plan if caching else None
        rope_deltas = getattr(self.model.model, "rope_deltas", None)
        if self.plan is not None and reduces_first_layer and rope_deltas is not None:
            self.model.model.rope_deltas = rope_deltas + (plan.full - plan.length)

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


def cache_of(kwargs: dict):
    """The cache a forward's keyword arguments carry, or None: ``past_key_values`` (transformers 5.17), ``cache``
    (5.24)."""
    return kwargs.get("cache", kwargs.get("past_key_values"))


def is_prefill(cache, layer: int) -> bool:
    return cache is None or cache.get_seq_length(layer) == 0


def fills_cache(model, kwargs: dict) -> bool:
    """Whether a language-model forward with ``kwargs`` fills a cache (it makes one when asked and given none)."""
    use_cache = kwargs.get("use_cache")
    use_cache = model.config.text_config.use_cache if use_cache is None else use_cache
    return cache_of(kwargs) is not None or bool(use_cache)


def decode_columns(plan: Plan, generated: int) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The full sequence's kv columns [B, N' + g] a reduced layer keeps while decoding (the kept prompt, then the
    ``generated`` tokens since, the new ones included), and which of them are blocked (filler; None: none)."""
    batch = plan.keep.shape[0]
    tail = torch.arange(plan.full, plan.full + generated, device=plan.keep.device).expand(batch, generated)
    blocked = plan.blocked_columns
    if blocked is not None:
        blocked = torch.nn.functional.pad(blocked, (0, generated), value=False)
    return torch.cat([plan.keep, tail], dim=1), blocked


def continued_plan(plan: Plan, attention_mask: torch.Tensor) -> Plan:
    """``plan`` followed by q more prompt tokens, all kept, whose 2-D mask is ``attention_mask`` [B, q]."""
    queries = attention_mask.shape[1]
    keep, _ = decode_columns(plan, queries)
    valid = torch.nn.functional.pad(plan.valid, (0, queries), value=True)
    visual = torch.nn.functional.pad(plan.visual, (0, queries), value=False)
    mask = torch.cat([plan.attention_mask, attention_mask.to(plan.attention_mask)], dim=1)
    return Plan(keep, valid, visual, plan.full + queries, mask, plan.padded)


def reduced_layer_mask(
    mask, rows: torch.Tensor | None, columns: torch.Tensor, blocked: torch.Tensor | None, queries: int
):
    """A layer's 4-D mask [B, 1, q, kv] (or None) restricted to the kept ``rows`` [B, q] (None: all) and ``columns``
    [B, kv'], with the ``blocked`` columns [B, kv'] (None: none) masked."""
    if mask is None:
        return None if blocked is None else causal_mask(~blocked, queries)
    if rows is not None:
        mask = gather_along(mask, rows, 2)
    mask = gather_along(mask, columns, 3)
    if blocked is None:
        return mask
    return mask.masked_fill(blocked[:, None, None, :].to(mask.device), masked_value(mask))


@contextmanager
def installed(*handles) -> Iterator[None]:
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


def text_model_of(model):
    return model.model.language_model


def vision_encoder_layers(model) -> torch.nn.ModuleList:
    """The encoder layers of a LLaVA-OneVision model's SigLIP tower (a bare transformer or one inside a model)."""
    tower = model.model.vision_tower
    return getattr(tower, "vision_model", tower).encoder.layers


def check_needs(reducer: Reducer, provided: frozenset[str], point: str) -> None:
    missing = sorted(reducer.needs - provided)
    if missing:
        raise ValueError(f"reducer {reducer.name!r} needs {', '.join(missing)}, which the {point} point cannot give")


def frames_to_sequence(values: torch.Tensor, videos: list[VideoSpan], length: int) -> torch.Tensor:
    """Per-frame values [B·T, S, ...] (S = H·W grid tokens per frame) laid along each row's video span: [B, L, ...]."""
    per_row = values.reshape(len(videos), -1, *values.shape[2:])
    aligned = values.new_zeros(len(videos), length, *values.shape[2:])
    for row, span in enumerate(videos):
        aligned[row, span.start : span.end] = per_row[row]
    return aligned


@contextmanager
def pre_llm(
    model,
    reducer: Reducer,
    positions: str = "original",
    frame_evidence: dict[str, torch.Tensor] | None = None,
    kv_pruning: KVPruning | None = None,
) -> Iterator[ReductionLog]:
    """Reduce each video's projected tokens before the first decoder layer, in every forward inside the context.

    ``frame_evidence`` (filled by :func:`vision`) holds per-frame values [B·T, H·W, ...] the reducer needs;
    ``kv_pruning`` also prunes the video's KV cache while decoding (DyCoke's second stage).
    """
    session = ReductionSession(model, reducer, positions)
    check_needs(reducer, frozenset() if frame_evidence is None else frozenset({"importance", "keys"}), "pre_llm")

    def on_text_model(module, args, kwargs):
        cache = cache_of(kwargs)
        if is_prefill(cache, 0):
            session.plan = session.prefilled = None
            if session.locate_videos(kwargs.get("position_ids")):
                embeds = kwargs["inputs_embeds"]
                evidence = {
                    name: frames_to_sequence(values, session.videos, embeds.shape[1])
                    for name, values in (frame_evidence or {}).items()
                }
                reduced, plan, position_ids = session.reduce(
                    embeds, kwargs.get("position_ids"), kwargs.get("attention_mask"), evidence
                )
                # an explicit mask: without one and without a cache, transformers reads position ids that jump
                # (as original positions do) as packed sequences
                kwargs.update(inputs_embeds=reduced, attention_mask=plan.attention_mask, position_ids=position_ids)
                session.remember(plan, fills_cache(model, kwargs), reduces_first_layer=True)
        elif session.plan is not None:
            kwargs = session.forward_on_reduced_first_layer(kwargs)
        return args, kwargs

    handles = [
        model.model.register_forward_pre_hook(session.capture_request, with_kwargs=True),
        text_model_of(model).register_forward_pre_hook(on_text_model, with_kwargs=True),
    ]
    if kv_pruning is not None:
        handles += kv_pruning_hooks(model, session, kv_pruning)
    with installed(*handles):
        yield session.log


@contextmanager
def vision(model, reducer: Reducer, positions: str = "original") -> Iterator[ReductionLog]:
    """Reduce each video's projected tokens before the LLM using the vision tower's attention: the attention each
    patch receives and the keys at the encoder layer whose output the LLM uses, pooled to the grid as the features
    are (LLaVA-OneVision's SigLIP; Qwen's windowed vision attention is not read)."""
    if is_qwen(model):
        raise ValueError("the vision reduction point reads SigLIP attention: LLaVA-OneVision models only")
    encoder_layers = vision_encoder_layers(model)
    feature_layer = model.config.vision_feature_layer
    if not isinstance(feature_layer, int):
        raise ValueError(f"the vision reduction point needs one vision_feature_layer, got {feature_layer}")
    # hidden_states[i] is the output of encoder layer i - 1 (hidden_states[0] is the embeddings)
    read = feature_layer % (len(encoder_layers) + 1)
    if read == 0:
        raise ValueError(f"vision_feature_layer {feature_layer} is the patch embeddings: no encoder layer made them")
    layer = encoder_layers[read - 1]
    evidence: dict[str, torch.Tensor] = {}

    def on_encoder_layer(module, args):
        with torch.no_grad():
            importance, keys = received_attention_and_keys(module, args[0])
        evidence["importance"] = model.model.apply_pooling(importance[..., None])[..., 0]
        evidence["keys"] = model.model.apply_pooling(keys)

    with (
        installed(layer.register_forward_pre_hook(on_encoder_layer)),
        pre_llm(model, reducer, positions, frame_evidence=evidence) as log,
    ):
        yield log


@contextmanager
def llm_layer(model, reducer: Reducer, layer: int, positions: str = "original") -> Iterator[ReductionLog]:
    """Reduce each video's hidden states at the input of decoder layer ``layer``, during prefill. A reducer that
    needs ``importance`` gets the attention the last prompt token pays each visual token at layer
    ``layer − reducer.importance_lag`` (FastV ranks by the layer before the one it prunes at)."""
    session = ReductionSession(model, reducer, positions)
    check_needs(reducer, frozenset({"importance"}), "llm_layer")
    text_model = text_model_of(model)
    if not 0 <= layer < len(text_model.layers):
        raise ValueError(f"layer {layer} is out of range: the language model has {len(text_model.layers)} layers")
    state = {}

    def on_text_model(module, args, kwargs):
        cache = cache_of(kwargs)
        state["prefill"] = is_prefill(cache, layer)
        if state["prefill"]:
            session.plan = session.prefilled = None
            state.update(attention_mask=kwargs.get("attention_mask"), plan=None)
            state["has_videos"] = session.locate_videos(kwargs.get("position_ids"))
        elif layer == 0 and session.plan is not None:
            kwargs = session.forward_on_reduced_first_layer(kwargs)
        elif session.plan is not None:
            plan, generated, new_positions = session.place_new_tokens(kwargs, layer)
            state["decode_columns"] = decode_columns(plan, generated + kwargs["inputs_embeds"].shape[1])
            # compact: the reduced layers place a continued prompt after the reduced prompt, the full ones after
            # the full prompt
            if positions == "compact":
                state["rotary"] = new_positions, text_model.rotary_emb(kwargs["inputs_embeds"], new_positions)
            else:
                state["rotary"] = None
        return args, kwargs

    scored_layer = layer - reducer.importance_lag

    def on_scored_layer(module, args, kwargs):
        if state["prefill"] and state["has_videos"] and "importance" in reducer.needs:
            state["importance"] = last_token_attention(
                module, args[0], kwargs["position_embeddings"], state["attention_mask"]
            )
        return args, kwargs

    def on_reducing_layer(module, args, kwargs):
        if scored_layer == layer:
            on_scored_layer(module, args, kwargs)
        if state["prefill"] and state["has_videos"]:
            evidence = {"importance": state.pop("importance")} if "importance" in reducer.needs else {}
            reduced, plan, position_ids = session.reduce(
                args[0], kwargs.get("position_ids"), state["attention_mask"], evidence
            )
            session.remember(plan, fills_cache(model, kwargs), reduces_first_layer=layer == 0)
            cos, sin = kwargs["position_embeddings"]
            if positions == "original":
                state["rotary"] = position_ids, (gather_along(cos, plan.keep, -2), gather_along(sin, plan.keep, -2))
            else:
                state["rotary"] = position_ids, text_model.rotary_emb(reduced, position_ids)
            state["plan"] = plan
            args = (reduced, *args[1:])
        return on_reduced_layer(module, args, kwargs)

    def on_reduced_layer(module, args, kwargs):
        plan = state["plan"] if state["prefill"] else session.plan
        if plan is None or (not state["prefill"] and layer == 0):
            return args, kwargs
        mask, queries = kwargs.get("attention_mask"), args[0].shape[1]
        if state["prefill"]:
            kwargs["attention_mask"] = reduced_layer_mask(mask, plan.keep, plan.keep, plan.blocked_columns, queries)
        else:
            kwargs["attention_mask"] = reduced_layer_mask(mask, None, *state["decode_columns"], queries)
        if state["rotary"] is not None:
            position_ids, kwargs["position_embeddings"] = state["rotary"]
            if kwargs.get("position_ids") is not None:
                kwargs["position_ids"] = position_ids
        return args, kwargs

    if not 0 <= scored_layer <= layer:
        raise ValueError(f"reducer {reducer.name!r} ranks by the attention of layer {scored_layer}, before layer 0")
    layer_hooks = [
        decoder.register_forward_pre_hook(on_reducing_layer if index == layer else on_reduced_layer, with_kwargs=True)
        for index, decoder in enumerate(text_model.layers)
        if index >= layer
    ]
    if scored_layer < layer:
        layer_hooks.append(text_model.layers[scored_layer].register_forward_pre_hook(on_scored_layer, with_kwargs=True))
    with installed(
        model.model.register_forward_pre_hook(session.capture_request, with_kwargs=True),
        text_model.register_forward_pre_hook(on_text_model, with_kwargs=True),
        *layer_hooks,
    ):
        yield session.log


@dataclass(frozen=True)
class KVPruning:
    """DyCoke's second stage (Tao et al., CVPR 2025; KD-TAO/DyCoke ``PrunableDynamicCache.dycoke_pruning``): at each
    decoding step, the attention the new token pays the video's tokens at layer ``layer`` − 1 (mean over heads) is
    compared with the previous step's; when their cosine similarity is below ``similarity``, layers from ``layer`` on
    attend, in this step, only to the int(n·(1 − ``prune_ratio``)) most attended of the n video tokens. As in the
    authors' code a step whose attention barely moved prunes nothing. Pruned entries are masked, not removed, so the
    next step may choose others; the authors' defaults are layer 3 and prune ratio 0.7."""

    layer: int = 3
    prune_ratio: float = 0.7
    similarity: float = 0.9


@dataclass
class PruningStep:
    """One decoding step of :class:`KVPruning`: whether it pruned, and the kept video columns of each row."""

    pruned: bool
    kept_columns: list[torch.Tensor]


def kv_pruning_hooks(model, session: ReductionSession, pruning: KVPruning) -> list:
    """Hooks on decoder layers ``pruning.layer - 1`` (scores) and from ``pruning.layer`` on (masks); the steps are
    logged in ``session.log.pruning_steps``. Needs the session's plan, so it runs beside a reduction point."""
    layers = text_model_of(model).layers
    if not 1 <= pruning.layer < len(layers):
        raise ValueError(f"KV pruning layer {pruning.layer} is out of range 1..{len(layers) - 1}")
    state = {"previous": None, "blocked": None}

    def score(module, args, kwargs):
        cache = cache_of(kwargs)
        state["blocked"] = None
        if session.plan is None or is_prefill(cache, pruning.layer - 1) or args[0].shape[1] != 1:
            state["previous"] = None
            return
        plan, hidden = session.plan, args[0]
        queries, new_keys = decoder_queries_and_keys(module, hidden, kwargs["position_embeddings"], slice(-1, None))
        cached = cache.layers[pruning.layer - 1].keys
        cached = cached.repeat_interleave(queries.shape[1] // cached.shape[1], dim=1)
        scores = (torch.cat([cached, new_keys], dim=2).float() @ queries.float().transpose(-1, -2))[..., 0]
        attended = torch.ones(scores.shape[0], scores.shape[-1], dtype=torch.bool, device=scores.device)
        attended[:, : plan.length] = plan.attention_mask.bool()
        scores = scores.masked_fill(~attended[:, None], -torch.inf)
        weights = (scores * module.self_attn.scaling).softmax(dim=-1).mean(dim=1)[:, : plan.length]
        attention = [row[visual] for row, visual in zip(weights, plan.visual, strict=True)]
        previous, state["previous"] = state["previous"], attention
        similar = previous is not None and all(
            torch.nn.functional.cosine_similarity(now, before, dim=0) >= pruning.similarity
            for now, before in zip(attention, previous, strict=True)
        )
        if similar:
            session.log.pruning_steps.append(PruningStep(False, []))
            return
        blocked = torch.zeros(hidden.shape[0], cache.get_seq_length(pruning.layer - 1) + 1, dtype=torch.bool,
                              device=hidden.device)  # fmt: skip
        kept_columns = []
        for row, (scores_row, visual) in enumerate(zip(attention, plan.visual, strict=True)):
            columns = visual.nonzero().squeeze(1)
            kept = scores_row.topk(int(len(columns) * (1 - pruning.prune_ratio))).indices.sort().values
            blocked[row, columns] = True
            blocked[row, columns[kept]] = False
            kept_columns.append(columns[kept])
        state["blocked"] = blocked
        session.log.pruning_steps.append(PruningStep(True, kept_columns))

    def mask(module, args, kwargs):
        blocked = state["blocked"]
        if blocked is not None:
            current = kwargs.get("attention_mask")
            if current is None:
                kwargs["attention_mask"] = causal_mask(~blocked, args[0].shape[1])
            else:
                kwargs["attention_mask"] = current.masked_fill(blocked[:, None, None, :], masked_value(current))
        return args, kwargs

    return [
        layers[pruning.layer - 1].register_forward_pre_hook(score, with_kwargs=True),
        *(layer.register_forward_pre_hook(mask, with_kwargs=True) for layer in layers[pruning.layer :]),
    ]


def reduction_point(model, reducer: Reducer | None, positions: str = "original"):
    """The context that applies ``reducer`` at its declared stage (nothing for full tokens). A reducer with a
    ``kv_pruning`` attribute (DyCoke) also prunes the KV cache while decoding."""
    if reducer is None:
        return contextlib.nullcontext(ReductionLog())
    if reducer.stage is Stage.VISION:
        return vision(model, reducer, positions)
    if reducer.stage is Stage.PRE_LLM:
        return pre_llm(model, reducer, positions, kv_pruning=getattr(reducer, "kv_pruning", None))
    if reducer.stage is Stage.LLM_LAYER:
        return llm_layer(model, reducer, reducer.layer, positions)
    raise ValueError(f"reducer {reducer.name!r} acts at stage {reducer.stage.value!r}, which has no reduction point")
