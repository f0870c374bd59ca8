"""FastVID: dynamic temporal segments, then per segment the most attended tokens and density-peak merging.

Paper: Shen et al., "FastVID: Dynamic Density Pruning for Fast Video Large Language Models", NeurIPS 2025 (arXiv
2503.11187). Reference code: github.com/LunarShen/FastVID at commit a40a109cb8df20e8c2c17c6850f8269717369990, the
LLaVA-OneVision version: the block marked ``FastVID`` in ``Qwen2Model.forward``,
``fastvid_llavaonevision/LLaVA-NeXT/llava/model/language_model/modeling_qwen2.py`` (L900-L1075), fed by
``LlavaMetaForCausalLM.encode_images`` / ``get_attn_2dPool`` (``llava/model/llava_arch.py``) and
``SigLipVisionAbstract`` (``multimodal_encoder/siglip_encoder.py``); defaults from ``scripts/eval.sh``.

What the authors do, on the pooled 14x14 grid of N = H·W tokens per frame that enters the LLM:

1. DySeg. Frames are cut into segments after every frame i whose global feature's cosine with frame i+1's is
   among the ``DySeg_c − 1`` smallest or below ``DySeg_tau`` (so at least ``DySeg_c`` segments).
2. Counts. Each frame keeps ``keep = int(N · retention_ratio)`` tokens: ``ctx = int(keep · STPrune_d)`` context
   tokens and ``s = keep − ctx`` salient ones (Python truncation of float products).
3. Anchors. In a segment of L frames, the last frame and every ``DTM_p``-th frame before it are anchor frames;
   each takes ``ctx·L // ceil(L / DTM_p)`` context tokens, the other frames none.
4. ATS. Each frame's ``s`` tokens of highest score (the MAP head's attention) are kept unchanged.
5. Density. On each frame's other tokens: distances ``cdist / sqrt(C)`` (float32; of half-precision tokens on a
   GPU on tensor cores unless ``tensor_cores`` is off, :mod:`baselines.products`), density ``exp(−mean of the
   squared distances to the 4 nearest, itself included)`` plus ``rand · 1e-6``, and the score ``density · the
   distance to the nearest strictly denser token`` (for the densest, the frame's largest distance).
6. DTM. Each anchor frame's highest-scoring tokens are its targets. Every non-salient token of the anchor's pool
   goes to its most similar target (cosine, first on ties) and each target becomes ``w · target + (1 − w) · mean
   of its members`` with ``w = max(1 / (n + 1), DTM_beta)``, n its members (itself among them). The pool is the
   whole segment (all its frames, the other anchors' targets included, so a token feeds one target per anchor
   frame) unless the anchor's count equals ``ctx`` (every single-frame segment): then it is its own frame.
7. The kept tokens come out in ascending grid order; each one's slot is its own (a salient token) or its
   target's (a merged one).

Here each token's box is its slot, and ``num_patches`` counts the input slots that fed it: 1 for a salient token,
its members and itself for a merged one. Officially a token feeds one target per anchor frame of its segment, so
the counts sum to more than T·H·W where a segment has several anchors; in the corrected variant to T·H·W.

``members`` and ``member_weights`` give each token as a weighted sum of the grid's slots (a salient token: its slot;
a merged one: ``w + (1 − w) / n`` on its target's slot and ``(1 − w) / n`` on each other member's), so that other
values of the same slots (Qwen3-VL's DeepStack features) merge alike (``sttm.api.reduce_like``). A slot that feeds
several tokens (official, a segment with several anchor frames) names no single one: ``members`` is then None,
``info["shared_patches"]`` counts those slots, and a model that must merge such values alike refuses the reduction.
The corrected variant partitions each segment, so its slots always name their token.

There is no stage inside the LLM: all of this runs once, on the LLM's input embeddings, before the first layer.
Here it is one reduction before the LLM that reads the vision tower's attention (``Stage.VISION``): the grid is the
projected, pooled features, ``importance`` the ATS score. The authors' score is the SigLIP MAP head's probe
attention (head-averaged, pooled 27→14 like the features), whereas the harness's ``importance`` is the attention
each patch receives at the encoder layer the LLM reads; DySeg's global features are the MAP head's output, which
the harness does not give: :meth:`FastVID.reduce` takes them as ``global_features`` and otherwise uses the features
named by ``segment_features`` ("frame_mean": each frame's mean token of the grid, the only choice today).

Variants. ``official`` reproduces the authors' code, quirks included: the truncated counts, the per-anchor floor
(a 5-frame segment with p = 4 keeps 2·(5·ctx // 2) context tokens), the whole-segment pool and the ``count ==
ctx`` own-frame pool, and the density noise, drawn here from a generator seeded with ``noise_seed`` so that
``reduce`` stays pure (the authors draw it from the global RNG). ``corrected`` changes three things:

* counts are rounded (``round(N · retention_ratio)``, ``round(keep · STPrune_d)``) and each segment keeps
  exactly ``ctx · L`` context tokens, its anchors' shares differing by at most one (the extra ones to the latest
  anchors, as the authors' LLaVA-Video code spreads them);
* each non-salient token of a segment merges into one target only, its most similar among all the segment's
  targets (whatever the anchors' counts), and a target is its own member: merged tokens partition the segment;
* density ties go to the lower index instead of noise, so that of identical tokens exactly one is a peak.

Anchors counted from the end of each segment are kept in both variants: the authors' two implementations
(LLaVA-OneVision, LLaVA-Video) both do it.

Budget. The budget is the authors' ``retention_ratio``; the achieved ratio is at most it (the official truncations
and floors) and is recorded with every reduction, whose ``info`` carries the knobs used, the per-frame counts and
the segment sizes. At budget 1.0 every token is kept unchanged (``keep_everything``): the authors' code then
makes every non-salient token its own target when all segments are single frames, and fails otherwise.

Bad inputs raise ValueError where the authors' code fails: fewer frames than ``DySeg_c``, no context token per
frame, fewer than 4 non-salient tokens (the density's 4 nearest), or an anchor needing more targets than its frame
has non-salient tokens (e.g. budget 0.5, p = 4, 14x14, a 4-frame segment: 156 > 137).
"""

from __future__ import annotations

import math
from dataclasses import replace
from itertools import accumulate
from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F

from baselines import products
from sttm.api import Reducer, Reduction, Stage, VideoTokens, check_budget, keep_everything, patch_boxes, register
from sttm.transfer import to_device

VARIANTS = ("official", "corrected")

#: what DySeg compares when no global features are given: "frame_mean" is each frame's mean token of the grid
SEGMENT_FEATURES = ("frame_mean",)

#: the density's neighbourhood: the 4 nearest tokens, the token itself among them
DENSITY_NEIGHBOURS = 4

#: the scale of the official variant's density noise
DENSITY_NOISE = 1e-6


def _check_variant(variant: str) -> None:
    if variant not in VARIANTS:
        raise ValueError(f"unknown FastVID variant {variant!r}; choose one of: {', '.join(VARIANTS)}")


def _round_half_up(value: float) -> int:
    return math.floor(value + 0.5)


def frame_mean_features(grid: torch.Tensor) -> torch.Tensor:
    """[T, H, W, C] -> [T, C] float32 mean token of each frame: DySeg's features when no global ones are given."""
    return grid.mean(dim=(1, 2), dtype=torch.float32)


def dynamic_segments(global_features: torch.Tensor, min_segments: int, threshold: float) -> torch.Tensor:
    """[T, Cg] per-frame features -> [T] int64 segment index of each frame (0, 1, …, non-decreasing).

    A segment ends after frame i (i < T − 1) when the cosine of frames i and i + 1 is among the
    ``min_segments − 1`` smallest or below ``threshold``. A video of fewer than ``min_segments`` frames (where the
    authors' ``topk`` fails) has every frame in a segment of its own, as a video of exactly that many frames has.
    """
    frames = global_features.shape[0]
    if global_features.dim() != 2:
        raise ValueError(f"global_features must have shape [T, Cg], got {tuple(global_features.shape)}")
    if min_segments < 1:
        raise ValueError(f"DySeg_c must be >= 1 (the fewest segments), got {min_segments}")
    if frames < min_segments:
        return torch.arange(frames, device=global_features.device)
    unit = global_features / global_features.norm(dim=1, keepdim=True)
    similarity = (unit[:-1] * unit[1:]).sum(dim=1)
    cut = similarity < threshold
    cut[similarity.topk(min_segments - 1, largest=False).indices] = True
    return F.pad(cut, (1, 0)).cumsum(0)


def token_counts(tokens_per_frame: int, retention_ratio: float, context_share: float, variant: str) -> tuple[int, int]:
    """(salient, context) tokens per frame: ``keep = N · retention_ratio``, ``context = keep · context_share``,
    truncated (official) or rounded (corrected), ``salient = keep − context``."""
    _check_variant(variant)
    whole = int if variant == "official" else _round_half_up
    keep = whole(tokens_per_frame * retention_ratio)
    context = whole(keep * context_share)
    return keep - context, context


def anchor_counts(segment: torch.Tensor, context: int, period: int, variant: str) -> torch.Tensor:
    """[T] segment index of each frame -> [T] int64 context targets each frame picks (0: not an anchor frame).

    In a segment of L frames the anchors are the last frame and every ``period``-th before it, a = ceil(L / period)
    of them. Official: each takes ``context · L // a``. Corrected: together they take ``context · L``, the
    ``context · L % a`` latest ones one more than the others.
    """
    _check_variant(variant)
    if period < 1:
        raise ValueError(f"DTM_p must be >= 1 (the spacing of anchor frames), got {period}")
    sizes = torch.bincount(segment)
    length = sizes[segment]
    from_end = sizes.cumsum(0)[segment] - 1 - torch.arange(len(segment), device=segment.device)
    anchors = (length + period - 1) // period
    share = context * length // anchors
    if variant == "corrected":
        share = share + (from_end // period < context * length % anchors)
    return torch.where(from_end % period == 0, share, 0)


def split_salient(importance: torch.Tensor, count: int) -> tuple[torch.Tensor, torch.Tensor]:
    """[T, N] scores -> ([T, count] each frame's highest-scoring tokens, [T, N − count] the others, ascending)."""
    salient = importance.topk(count, dim=1).indices
    is_salient = torch.zeros_like(importance, dtype=torch.uint8).scatter_(1, salient, 1)
    rest = is_salient.argsort(dim=1, stable=True)[:, : importance.shape[1] - count]
    return salient, rest


def density_scores(
    tokens: torch.Tensor, noise: torch.Tensor | None = None, ties_by_index: bool = False, tensor_cores: bool = True
) -> torch.Tensor:
    """[T, R, C] tokens of each frame -> [T, R] float32 density-peak score of each within its frame.

    ``density = exp(−mean squared distance to the 4 nearest, itself included)`` (distances ``cdist / sqrt(C)`` in
    float32) plus ``noise`` [T, R] if given; the score is the density times the distance to the nearest denser
    token of the frame (strictly denser; with ``ties_by_index`` an equally dense one of lower index counts too),
    or for a token with none the frame's largest distance. The distances of half-precision tokens on a GPU take
    their products on tensor cores unless ``tensor_cores`` is off (:func:`baselines.products.pairwise_distances`).
    """
    if tokens.shape[1] < DENSITY_NEIGHBOURS:
        raise ValueError(
            f"FastVID's density needs at least {DENSITY_NEIGHBOURS} non-salient tokens per frame, got {tokens.shape[1]}"
        )
    distance = products.pairwise_distances(tokens, tensor_cores)
    nearest = distance.topk(DENSITY_NEIGHBOURS, dim=-1, largest=False).values
    density = torch.exp(-nearest.square().mean(dim=-1))
    if noise is not None:
        density = density + noise
    other, this = density[:, None, :], density[:, :, None]  # [T, i, j]: j is the other token
    denser = other > this
    if ties_by_index:
        index = torch.arange(tokens.shape[1], device=tokens.device)
        denser |= (other == this) & (index[None, :] < index[:, None])
    farthest = distance.amax(dim=(1, 2), keepdim=True)
    return torch.where(denser, distance, farthest).min(dim=-1).values * density


def own_weight(count: torch.Tensor, weight_floor: float) -> torch.Tensor:
    """A target's own weight in its merged token, ``max(1 / (n + 1), weight_floor)`` for n members [...]."""
    return (count + 1).reciprocal().clamp(min=weight_floor)


def merge_into_targets(
    sums: torch.Tensor, targets: torch.Tensor, count: torch.Tensor, weight_floor: float
) -> torch.Tensor:
    """sums [K, C] of each target's members, targets [K, C], count [K] members (in the tokens' dtype) -> [K, C] the
    merged targets, ``w · target + (1 − w) · mean of its members`` with ``w = max(1 / (n + 1), weight_floor)`` (a
    target without members stays as it is)."""
    mean = sums / count.clamp(min=1)[:, None]
    weight = own_weight(count, weight_floor)[:, None]
    return weight * targets + (1 - weight) * mean


#: target slots per anchor come in multiples of this, so that the similarities' rows stay aligned for the GPU's
#: matrix units
TARGET_ALIGNMENT = 8


class SegmentGroup(NamedTuple):
    """The segments of one length as the merge lays them out (:func:`plan_merge`): ``count`` segments of ``length``
    frames, each with ``anchors`` anchor frames of ``width`` target slots (the i-th best target of its anchor j is
    its slot j·width + i), ``targets`` of them filled."""

    count: int
    length: int
    anchors: int
    first_slot: int  # its first slot among the video's
    first_target: int  # its first filled slot among the video's
    targets: int
    most: int  # most targets an anchor picks
    width: int  # ``most`` rounded up to TARGET_ALIGNMENT
    own_frame_pool: bool  # official: each anchor's pool is its own frame (it picks ``context`` targets)
    anchor_frames: torch.Tensor  # [n, a] each anchor's place in the merge's frame order
    anchor_rows: torch.Tensor  # [a, 1] the first row of an anchor's frame in its segment's pool
    first_slots: torch.Tensor  # [n, 1, a] each anchor's first slot
    unfilled: torch.Tensor  # [a, k] bool: the slots an anchor leaves empty


class MergePlan(NamedTuple):
    """Where the merge puts every frame, anchor and target slot, planned from the segments: frames by segment
    length, then segment by segment; anchors and slots in that order. S slots, K of them filled."""

    groups: list[SegmentGroup]
    frame_order: torch.Tensor  # [T] the frame at each place of the merge's frame order
    filled: torch.Tensor  # [K] the filled slots, ascending
    slot_targets: torch.Tensor  # [S + 1] each slot's index among the filled ones (K: unfilled; the last: no slot)
    target_rows: torch.Tensor  # [K] the first pool row of each filled slot's frame

    @property
    def no_slot(self) -> int:
        return len(self.slot_targets) - 1


def plan_merge(
    sizes: list[int], counts: list[int], rest: int, context: int, variant: str, device: torch.device
) -> MergePlan:
    """[S] segment sizes, [T] context targets of each frame (:func:`anchor_counts`), R non-salient tokens a frame ->
    the merge's plan, made on the host and moved to ``device`` in two copies that do not wait for the device.
    Segments of one length form a group, batched together."""
    starts = list(accumulate(sizes, initial=0))[:-1]
    order, layouts, shapes, mask_shapes, indices, unfilled, anchors = [], [], [], [], [], [], []
    slots = targets = 0
    for length in sorted(set(sizes)):
        firsts = [start for start, size in zip(starts, sizes, strict=True) if size == length]
        share = counts[firsts[0] : firsts[0] + length]
        offsets = [i for i, count in enumerate(share) if count]
        picks = [share[i] for i in offsets]
        n, a, most = len(firsts), len(offsets), max(picks)
        width = -(-most // TARGET_ALIGNMENT) * TARGET_ALIGNMENT
        own_frame_pool = variant == "official" and all(count == context for count in picks)
        layouts.append((n, length, a, slots, targets, sum(picks), most, width, own_frame_pool))
        frames = [len(order) + s * length + i for s in range(n) for i in offsets]
        first_slots = [slots + j * width for j in range(n * a)]
        shapes += [(n, a), (a, 1), (n, 1, a)]
        mask_shapes.append((a, width))
        indices += [*frames, *(i * rest for i in offsets), *first_slots]
        unfilled += [k >= count for count in picks for k in range(width)]
        anchors += zip(frames, first_slots, picks * n, strict=True)
        order += [frame for start in firsts for frame in range(start, start + length)]
        slots, targets = slots + n * a * width, targets + n * sum(picks)
    frames, first_slots, picks = np.array(anchors, dtype=np.int64).T  # host arrays: numpy costs less than torch here
    anchor = np.repeat(np.arange(len(picks)), picks)  # the anchor of each filled slot
    filled = first_slots[anchor] + np.arange(targets) - (np.cumsum(picks) - picks)[anchor]
    slot_targets = np.full(slots + 1, targets)
    slot_targets[filled] = np.arange(targets)
    host = np.concatenate([np.array(indices + order, dtype=np.int64), filled, slot_targets, frames[anchor] * rest])
    parts = [math.prod(shape) for shape in shapes] + [len(order), targets, slots + 1, targets]
    *pieces, frame_order, filled, slot_targets, target_rows = to_device(host, device).split(parts)
    pieces = iter(piece.view(shape) for piece, shape in zip(pieces, shapes, strict=True))
    masks = to_device(np.array(unfilled, dtype=bool), device).split([a * k for a, k in mask_shapes])
    masks = iter(mask.view(shape) for mask, shape in zip(masks, mask_shapes, strict=True))
    groups = [SegmentGroup(*layout, next(pieces), next(pieces), next(pieces), next(masks)) for layout in layouts]
    return MergePlan(groups, frame_order, filled, slot_targets, target_rows)


class GroupMerge(NamedTuple):
    """DTM on the n segments of a group, slot by slot (a anchors of k slots a segment, L·R pool rows a segment)."""

    targets: torch.Tensor  # [n·a·k] each slot's target: its position among its frame's non-salient tokens
    count: torch.Tensor  # [n·a·k] its members, in the tokens' dtype
    sums: torch.Tensor  # [n·a·k, C] their sum
    edges: torch.Tensor  # [n·L·R, a] official, [n·L·R, 1] corrected: the slots each pool row joined (no_slot: none)


def merge_group(
    pool: torch.Tensor, unit: torch.Tensor, scores: torch.Tensor, group: SegmentGroup, plan: MergePlan, variant: str
) -> GroupMerge:
    """DTM on a group of segments of one length, batched over the segments.

    pool [n·L·R, C] the group's non-salient tokens, frame by frame, unit [n·L·R, C] the same scaled to unit norm,
    scores [T, R] the density-peak scores of every frame's (in the merge's order). Each anchor's targets are its
    frame's highest scores. Official:
    each row of an anchor's pool (the whole segment, or the anchor's own frame with ``own_frame_pool``) joins the
    anchor's most similar target. Corrected: each row of the segment joins one target, the most similar of all the
    segment's targets, and every target joins itself.
    """
    n, a, k = group.count, group.anchors, group.width
    rest, c = scores.shape[1], pool.shape[1]
    rows_per_segment = group.length * rest
    tokens, unit = pool.view(n, rows_per_segment, c), unit.view(n, rows_per_segment, c)
    targets = F.pad(scores[group.anchor_frames].topk(group.most, dim=-1).indices, (0, k - group.most))  # [n, a, k]
    target_rows = (targets + group.anchor_rows).view(n, a * k)  # rows of the segment
    similarity = unit @ torch.take_along_dim(unit, target_rows[..., None], dim=1).transpose(1, 2)
    similarity = similarity.view(n, rows_per_segment, a, k).masked_fill(group.unfilled, -math.inf)
    if variant == "official":
        best = similarity.argmax(dim=-1, keepdim=True)  # [n, L·R, a, 1]
        edges, joins = best.view(n, rows_per_segment, a) + group.first_slots, 1.0
        if group.own_frame_pool and group.length > 1:
            frame_rows = torch.arange(rows_per_segment, device=pool.device) // rest * rest
            in_pool = frame_rows[:, None] == group.anchor_rows[:, 0]  # [L·R, a]
            edges = torch.where(in_pool, edges, plan.no_slot)
            joins = in_pool.to(pool.dtype)[..., None].expand_as(best)
        assignment = torch.zeros_like(similarity).scatter_(-1, best, joins).view(n, rows_per_segment, a * k)
    else:
        best = similarity.view(n, rows_per_segment, a * k).argmax(dim=-1)  # [n, L·R]
        filled = plan.filled[group.first_target : group.first_target + group.targets] - group.first_slot
        best.scatter_(1, target_rows[:, filled], filled.expand(n, -1))  # every target joins itself
        assignment = torch.zeros_like(similarity.view(n, rows_per_segment, a * k)).scatter_(2, best[..., None], 1.0)
        edges = best[..., None] + group.first_slots[..., :1]
    sums = assignment.transpose(1, 2) @ tokens
    return GroupMerge(targets.flatten(), assignment.sum(dim=1).flatten(), sums.flatten(0, 1),
                      edges.view(n * rows_per_segment, -1))  # fmt: skip


def pool_feeds(
    edges: torch.Tensor, target_rows: torch.Tensor, count: torch.Tensor, weight_floor: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """edges [M, E] the targets each pool row joined (index among the K targets; K: none), target_rows [K] the row
    each target is, count [K] int64 its members -> for every row [M] the targets it feeds with a nonzero weight (as
    a member, and a target itself), the first of them (−1: none) and its summed weight in them; [K] whether each
    target is among its own members. A member's weight is its share ``(1 − w) / n`` of the mean, a target's own
    weight ``w`` comes on top (:func:`merge_into_targets`)."""
    own = own_weight(count.float(), weight_floor)
    weight = F.pad((1 - own) / count.clamp(min=1), (0, 1))[edges]  # [M, E], 0 where no target
    feeds = weight != 0
    targets = torch.arange(len(target_rows), device=edges.device)
    target_of = torch.full((len(edges),), -1, device=edges.device).index_put_((target_rows,), targets)
    itself = edges == target_of[:, None]
    fan = (feeds & ~itself).sum(dim=1).index_add_(0, target_rows, torch.ones_like(target_rows))
    into = torch.where(feeds, edges, -1).amax(dim=1).index_put_((target_rows,), targets)
    share = weight.sum(dim=1).index_add_(0, target_rows, own)
    return fan, into, share, itself.any(dim=1)[target_rows]


def slot_members(
    fed: torch.Tensor, fan: torch.Tensor, into: torch.Tensor, share: torch.Tensor, order: torch.Tensor, slots: int
) -> tuple[torch.Tensor | None, torch.Tensor | None, int]:
    """[E] input slots (each once), the tokens each feeds, the first of them (index in the order the tokens were
    made) and its weight there; [K] the output order of the tokens made -> ([slots] the output token each slot went
    into, −1: none; [slots] float32 its weight there; the slots that fed several tokens). Where some did, a slot
    cannot name its token: (None, None, count)."""
    shared = int((fan > 1).sum())
    if shared:
        return None, None, shared
    position = torch.empty_like(order).scatter_(0, order, torch.arange(len(order), device=order.device))
    members = torch.full((slots,), -1, dtype=torch.long, device=fed.device)
    members[fed] = torch.where(fan > 0, position[into], -1)
    weights = torch.zeros(slots, device=fed.device).index_put_((fed,), share.float())
    return members, weights, 0


class FastVIDTokens(NamedTuple):
    """FastVID's reduction of one video."""

    tokens: torch.Tensor  # [K, C] kept tokens, in the grid dtype
    slots: torch.Tensor  # [K] flat indices ``t·H·W + y·W + x`` of their slots, ascending
    num_patches: torch.Tensor  # [K] input slots that fed each: 1 for a salient token, a merged one's members and itself
    members: torch.Tensor | None  # [T·H·W] the token each slot went into (−1: none); None where a slot fed several
    member_weights: torch.Tensor | None  # [T·H·W] float32 its weight there (a token is the weighted sum of its slots)
    facts: dict  # the counts used: frame_salient_num, frame_context_num, segment_sizes, frame_context_counts, and
    # shared_patches, the slots that fed several tokens (official variant: one target per anchor frame)


def fastvid(
    grid: torch.Tensor,
    importance: torch.Tensor,
    global_features: torch.Tensor,
    retention_ratio: float = 0.1,
    dyseg_c: int = 8,
    dyseg_tau: float = 0.9,
    stprune_d: float = 0.4,
    dtm_p: int = 4,
    dtm_beta: float = 0.6,
    variant: str = "official",
    noise: torch.Tensor | None = None,
    tensor_cores: bool = True,
) -> FastVIDTokens:
    """FastVID on one video: grid [T, H, W, C], importance [T, H, W] (ATS score), global_features [T, Cg] (DySeg).

    ``noise`` [T, N − salient] is added to the density (official variant: the authors' ``rand · 1e-6``; None: no
    noise). The host waits for the device twice: for the segments, which shape the merge, and for the count of
    slots that fed several tokens, which decides whether the slots can name their tokens.
    """
    _check_variant(variant)
    t, h, w, c = grid.shape
    per_frame, device = h * w, grid.device
    if tuple(importance.shape) != (t, h, w):
        raise ValueError(f"importance must have shape [T, H, W] = {(t, h, w)}, got {tuple(importance.shape)}")
    if global_features.dim() != 2 or global_features.shape[0] != t:
        raise ValueError(f"global_features must have shape [T, Cg] with T = {t}, got {tuple(global_features.shape)}")
    salient_count, context = token_counts(per_frame, retention_ratio, stprune_d, variant)
    if context < 1:
        raise ValueError(
            f"FastVID keeps {salient_count + context} tokens per frame at retention_ratio {retention_ratio} and "
            f"STPrune_d {stprune_d}: none is a context token, which the merging needs"
        )
    rest_count = per_frame - salient_count
    segment = dynamic_segments(global_features, dyseg_c, dyseg_tau).cpu()
    sizes, counts = torch.bincount(segment).tolist(), anchor_counts(segment, context, dtm_p, variant).tolist()
    if max(counts) > rest_count:
        raise ValueError(
            f"an anchor frame needs {max(counts)} context targets but its frame has only {rest_count} tokens besides "
            f"the {salient_count} salient ones: lower the budget or STPrune_d, or raise DTM_p"
        )
    plan = plan_merge(sizes, counts, rest_count, context, variant, device)

    frames = plan.frame_order  # from here on frames come in the merge's order
    salient, rest = split_salient(importance.reshape(t, per_frame).to(device)[frames], salient_count)
    first_slots = frames[:, None] * per_frame
    pool_slots = (first_slots + rest).flatten()
    flat = grid.reshape(t * per_frame, c)
    pool = flat.index_select(0, pool_slots)  # [T·R, C]
    noise = None if noise is None else noise[frames]
    scores = density_scores(pool.view(t, rest_count, c), noise, variant == "corrected", tensor_cores)
    unit = pool / pool.norm(dim=-1, keepdim=True)
    rows = [group.count * group.length * rest_count for group in plan.groups]
    merges = [merge_group(*group_rows, scores, group, plan, variant)
              for *group_rows, group in zip(pool.split(rows), unit.split(rows), plan.groups, strict=True)]  # fmt: skip
    targets, count, sums = (torch.cat(parts)[plan.filled] for parts in list(zip(*merges, strict=True))[:3])
    widest = max(merge.edges.shape[1] for merge in merges)
    edges = torch.cat([F.pad(merge.edges, (0, widest - merge.edges.shape[1]), value=plan.no_slot) for merge in merges])

    target_rows = plan.target_rows + targets
    target_slots = pool_slots[target_rows]
    salient_slots = (first_slots + salient).flatten()
    slots = torch.cat([salient_slots, target_slots])
    order = slots.argsort()
    kept = slots[order]
    at = torch.searchsorted(kept, target_slots)
    merged = merge_into_targets(sums, flat.index_select(0, target_slots), count, dtm_beta)
    tokens = flat.index_select(0, kept).index_copy_(0, at, merged)
    count = count.long()
    fan, into, share, own = pool_feeds(plan.slot_targets[edges], target_rows, count, dtm_beta)
    patches = torch.ones_like(kept).index_copy_(0, at, count + ~own)
    made = len(salient_slots)  # the salient tokens were made first, then the targets
    members, member_weights, shared = slot_members(
        torch.cat([salient_slots, pool_slots]), F.pad(fan, (made, 0), value=1),
        torch.cat([torch.arange(made, device=device), made + into]), F.pad(share, (made, 0), value=1.0), order,
        t * per_frame,
    )  # fmt: skip
    facts = {
        "frame_salient_num": salient_count,
        "frame_context_num": context,
        "segment_sizes": sizes,
        "frame_context_counts": counts,
        "shared_patches": shared,
    }
    return FastVIDTokens(tokens, kept, patches, members, member_weights, facts)


@register("fastvid")
class FastVID(Reducer):
    """FastVID (Shen et al., NeurIPS 2025) before the LLM: DySeg segments, ATS salient tokens, DTM density merging.

    The knobs are the authors' (``scripts/eval.sh`` defaults): ``dyseg_c`` (fewest segments), ``dyseg_tau``
    (cosine below which frames are cut), ``stprune_d`` (context share of the kept tokens), ``dtm_p`` (anchor frame
    spacing), ``dtm_beta`` (floor of a target's own weight); the budget is their ``retention_ratio`` (default
    0.10). ``variant`` is "official" or "corrected" (module docstring). ``segment_features`` names what DySeg
    compares when :meth:`reduce` gets no ``global_features``: "frame_mean", each frame's mean token. ``noise_seed``
    seeds the official variant's density noise.
    """

    stage = Stage.VISION
    needs = frozenset({"importance"})

    def __init__(
        self,
        budget: float = 0.1,
        dyseg_c: int = 8,
        dyseg_tau: float = 0.9,
        stprune_d: float = 0.4,
        dtm_p: int = 4,
        dtm_beta: float = 0.6,
        variant: str = "official",
        segment_features: str = "frame_mean",
        noise_seed: int = 0,
        tensor_cores: bool = True,
    ) -> None:
        self.budget = check_budget(budget)
        _check_variant(variant)
        if segment_features not in SEGMENT_FEATURES:
            raise ValueError(
                f"unknown segment_features {segment_features!r}; choose one of: {', '.join(SEGMENT_FEATURES)}"
            )
        if dyseg_c < 1:
            raise ValueError(f"dyseg_c must be >= 1 (the fewest segments), got {dyseg_c}")
        if dtm_p < 1:
            raise ValueError(f"dtm_p must be >= 1 (the spacing of anchor frames), got {dtm_p}")
        if not 0.0 <= stprune_d <= 1.0:
            raise ValueError(f"stprune_d must lie in [0, 1] (the context share of the kept tokens), got {stprune_d}")
        if not 0.0 <= dtm_beta <= 1.0:
            raise ValueError(f"dtm_beta must lie in [0, 1] (a target's least own weight), got {dtm_beta}")
        self.dyseg_c, self.dyseg_tau, self.stprune_d = int(dyseg_c), float(dyseg_tau), float(stprune_d)
        self.dtm_p, self.dtm_beta, self.variant = int(dtm_p), float(dtm_beta), variant
        self.segment_features, self.noise_seed = segment_features, int(noise_seed)
        self.tensor_cores = bool(tensor_cores)

    def knobs(self) -> dict:
        """The authors' parameter values this reducer runs with, under their names."""
        return {"retention_ratio": self.budget, "DySeg_c": self.dyseg_c, "DySeg_tau": self.dyseg_tau,
                "STPrune_d": self.stprune_d, "DTM_p": self.dtm_p, "DTM_beta": self.dtm_beta}  # fmt: skip

    def reduce(self, video: VideoTokens, global_features: torch.Tensor | None = None) -> Reduction:
        """The kept tokens of ``video`` (``importance`` is the ATS score); ``global_features`` [T, Cg] are what
        DySeg compares (the authors': the SigLIP MAP head's output per frame), else those of ``segment_features``."""
        if video.importance is None:
            raise ValueError("FastVID needs importance (its ATS score) besides the grid")
        info = {**self.knobs(), "variant": self.variant}
        info["segment_features"] = "given" if global_features is not None else self.segment_features
        if self.budget == 1.0:
            return replace(keep_everything(video), info=info)
        grid = video.grid
        t, h, w, _ = grid.shape
        if global_features is None:
            global_features = frame_mean_features(grid)
        noise = None
        if self.variant == "official":
            salient, _ = token_counts(h * w, self.budget, self.stprune_d, self.variant)
            generator = torch.Generator(device=grid.device).manual_seed(self.noise_seed)
            noise = torch.rand(t, h * w - salient, generator=generator, device=grid.device) * DENSITY_NOISE
        result = fastvid(
            grid, video.importance, global_features.to(grid.device), self.budget, self.dyseg_c, self.dyseg_tau,
            self.stprune_d, self.dtm_p, self.dtm_beta, self.variant, noise, self.tensor_cores,
        )  # fmt: skip
        return Reduction(result.tokens, patch_boxes(result.slots, h, w), result.num_patches, video.num_tokens,
                         info={**info, **result.facts}, members=result.members,
                         member_weights=result.member_weights)  # fmt: skip
