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
5. Density. On each frame's other tokens: distances ``cdist / sqrt(C)`` (float32), density ``exp(−mean of the
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
from typing import NamedTuple

import torch
import torch.nn.functional as F

from sttm.api import Reducer, Reduction, Stage, VideoTokens, check_budget, keep_everything, patch_boxes, register

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
    return torch.cat([cut.new_zeros(1), cut]).long().cumsum(0)


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
    tokens: torch.Tensor, noise: torch.Tensor | None = None, ties_by_index: bool = False
) -> torch.Tensor:
    """[T, R, C] tokens of each frame -> [T, R] float32 density-peak score of each within its frame.

    ``density = exp(−mean squared distance to the 4 nearest, itself included)`` (distances ``cdist / sqrt(C)`` in
    float32) plus ``noise`` [T, R] if given; the score is the density times the distance to the nearest denser
    token of the frame (strictly denser; with ``ties_by_index`` an equally dense one of lower index counts too),
    or for a token with none the frame's largest distance.
    """
    if tokens.shape[1] < DENSITY_NEIGHBOURS:
        raise ValueError(
            f"FastVID's density needs at least {DENSITY_NEIGHBOURS} non-salient tokens per frame, got {tokens.shape[1]}"
        )
    wide = tokens.float()
    distance = torch.cdist(wide, wide) / tokens.shape[-1] ** 0.5
    nearest = distance.topk(DENSITY_NEIGHBOURS, dim=-1, largest=False).values
    density = torch.exp(-nearest.square().mean(dim=-1))
    if noise is not None:
        density = density + noise
    other, this = density[:, None, :], density[:, :, None]  # [T, i, j]: j is the other token
    denser = other > this
    if ties_by_index:
        index = torch.arange(tokens.shape[1], device=tokens.device)
        denser |= (other == this) & (index[None, :] < index[:, None])
    farthest = distance.flatten(1).max(dim=1).values[:, None, None]
    return torch.where(denser, distance, farthest).min(dim=-1).values * density


def own_weight(count: torch.Tensor, weight_floor: float) -> torch.Tensor:
    """A target's own weight in its merged token, ``max(1 / (n + 1), weight_floor)`` for n members [...]."""
    return (1 / (count + 1)).clamp(min=weight_floor)


def merge_into_targets(
    tokens: torch.Tensor, targets: torch.Tensor, members: torch.Tensor, weight_floor: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """tokens [..., M, C], targets [..., K, C], members [..., M, K] bool (token m feeds target k) -> the merged
    targets [..., K, C], ``w · target + (1 − w) · mean of its members`` with ``w = max(1 / (n + 1), weight_floor)``,
    and the member counts n [..., K] (a target without members stays as it is)."""
    assignment = members.to(tokens.dtype)
    count = assignment.sum(dim=-2)
    mean = (assignment.transpose(-1, -2) @ tokens) / count.clamp(min=1)[..., None]
    weight = own_weight(count, weight_floor)[..., None]
    return weight * targets + (1 - weight) * mean, count.long()


def target_weights(
    members: torch.Tensor, target_rows: torch.Tensor, count: torch.Tensor, weight_floor: float
) -> torch.Tensor:
    """members [..., M, K] bool, target_rows [..., K] (the token each target is), count [..., K] members -> [..., M, K]
    float32 each token's weight in each merged target (:func:`merge_into_targets`): its share of the members' mean
    plus, for the target itself, its own weight."""
    own = own_weight(count.float(), weight_floor)
    weights = members * ((1 - own) / count.clamp(min=1))[..., None, :]
    return weights.scatter_add_(-2, target_rows[..., None, :], own[..., None, :])


class SegmentGroup(NamedTuple):
    """The segments of one length, planned on the CPU: where they start, which of their frames are anchors, and
    which of the anchors' target slots are filled (anchor j's i-th best target is slot j·width + i)."""

    starts: torch.Tensor  # [n] first frame of each segment
    anchors: torch.Tensor  # [a] offsets of the anchor frames in a segment
    slots: torch.Tensor  # [V] filled target slots
    length: int  # frames per segment
    most: int  # most targets an anchor picks
    width: int  # target slots per anchor: ``most`` rounded up to TARGET_ALIGNMENT
    own_frame_pool: bool  # official: the anchors' pools are their own frames (they pick ``context`` targets)


#: target slots per anchor come in multiples of this, so that the similarities' rows stay aligned for the GPU's
#: matrix units
TARGET_ALIGNMENT = 8


def group_segments(segment: torch.Tensor, counts: torch.Tensor, context: int, variant: str) -> list[SegmentGroup]:
    """[T] segment index and [T] context targets of each frame (on the CPU) -> the segments grouped by length."""
    sizes = torch.bincount(segment)
    starts = sizes.cumsum(0) - sizes
    groups = []
    for length in sizes.unique().tolist():
        first = starts[sizes == length]
        share = counts[first[0] : first[0] + length]
        anchors = share.nonzero().squeeze(1)
        picks = share[anchors]
        most = int(picks.max())
        width = -(-most // TARGET_ALIGNMENT) * TARGET_ALIGNMENT
        slots = (torch.arange(width) < picks[:, None]).flatten().nonzero().squeeze(1)
        own_frame_pool = variant == "official" and bool((picks == context).all())
        groups.append(SegmentGroup(first, anchors, slots, length, most, width, own_frame_pool))
    return groups


def groups_to(groups: list[SegmentGroup], device: torch.device) -> list[SegmentGroup]:
    """The groups with their index tensors on ``device``, moved in one copy."""
    parts = [part for group in groups for part in group[:3]]
    moved = torch.cat(parts).to(device).split([len(part) for part in parts])
    return [group._replace(starts=moved[3 * i], anchors=moved[3 * i + 1], slots=moved[3 * i + 2])
            for i, group in enumerate(groups)]  # fmt: skip


class MergedTargets(NamedTuple):
    """The context tokens of a group of segments, [n, V] each: n segments, V targets per segment."""

    frames: torch.Tensor  # frame of each target
    positions: torch.Tensor  # its position among the frame's non-salient tokens
    tokens: torch.Tensor  # [n, V, C] the merged targets
    fed_by: torch.Tensor  # int64 input slots merged into each: its members and itself
    weights: torch.Tensor  # [n, L·R, V] float32 each of the segment's non-salient tokens' weight in each target


def merge_segments(
    pool: torch.Tensor, scores: torch.Tensor, group: SegmentGroup, weight_floor: float, variant: str
) -> MergedTargets:
    """DTM on a group of segments of one length, batched over the segments.

    pool [T, R, C] non-salient tokens of each frame, scores [T, R] their density-peak scores. Each anchor's targets
    are its frame's highest scores. Official: each token of an anchor's pool (the whole segment, or the anchor's own
    frame with ``own_frame_pool``) feeds the anchor's most similar target. Corrected: each token of the segment
    feeds one target, the most similar of all the segment's targets, and every target feeds itself.
    """
    device, (rest, c) = pool.device, pool.shape[1:]
    n, a, k = len(group.starts), len(group.anchors), group.width
    rows_per_segment = group.length * rest
    frames = group.starts[:, None] + torch.arange(group.length, device=device)  # [n, L]
    anchor_frames = frames[:, group.anchors]
    targets = F.pad(scores[anchor_frames].topk(group.most, dim=-1).indices, (0, k - group.most))  # [n, a, k]
    filled = torch.zeros(a * k, dtype=torch.bool, device=device).index_fill_(0, group.slots, True).reshape(a, k)
    rows = pool[frames].reshape(n, rows_per_segment, c)
    unit = rows / rows.norm(dim=-1, keepdim=True)
    target_rows = (group.anchors[:, None] * rest + targets).reshape(n, a * k)  # rows of the segment
    segments = torch.arange(n, device=device)[:, None]
    similarity = (unit @ unit[segments, target_rows].transpose(1, 2)).reshape(n, rows_per_segment, a, k)
    similarity = similarity.masked_fill(~filled, -math.inf)
    if variant == "official":
        best = similarity.argmax(dim=-1, keepdim=True)  # [n, L·R, a, 1]
        in_pool = torch.ones(rows_per_segment, a, 1, dtype=torch.bool, device=device)
        if group.own_frame_pool:
            row_frame = torch.arange(rows_per_segment, device=device) // rest
            in_pool = (row_frame[:, None] == group.anchors[None, :])[..., None]
        members = torch.zeros_like(similarity, dtype=torch.bool).scatter_(-1, best, in_pool.expand_as(best))
        members = members.flatten(2)
    else:
        best = similarity.flatten(2).argmax(dim=-1)  # [n, L·R]
        best.scatter_(1, target_rows[:, group.slots], group.slots.expand(n, -1))  # every target feeds itself
        members = torch.zeros(n, rows_per_segment, a * k, dtype=torch.bool, device=device)
        members.scatter_(2, best[..., None], True)
    merged, count = merge_into_targets(rows, rows[segments, target_rows], members, weight_floor)
    own = members[segments, target_rows, torch.arange(a * k, device=device)]
    fed_by = count + (~own).long()
    slots = group.slots
    weights = target_weights(members, target_rows, count, weight_floor)[:, :, slots]
    return MergedTargets(anchor_frames.repeat_interleave(k, dim=1)[:, slots], targets.flatten(1)[:, slots],
                         merged[:, slots], fed_by[:, slots], weights)  # fmt: skip


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
) -> FastVIDTokens:
    """FastVID on one video: grid [T, H, W, C], importance [T, H, W] (ATS score), global_features [T, Cg] (DySeg).

    ``noise`` [T, N − salient] is added to the density (official variant: the authors' ``rand · 1e-6``; None: no
    noise).
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
    counts = anchor_counts(segment, context, dtm_p, variant)
    needed = int(counts.max())
    if needed > rest_count:
        raise ValueError(
            f"an anchor frame needs {needed} context targets but its frame has only {rest_count} tokens besides the "
            f"{salient_count} salient ones: lower the budget or STPrune_d, or raise DTM_p"
        )
    groups = groups_to(group_segments(segment, counts, context, variant), device)

    frames = torch.arange(t, device=device)
    salient, rest = split_salient(importance.reshape(t, per_frame).to(device), salient_count)
    flat = grid.reshape(t, per_frame, c)
    pool = flat[frames[:, None], rest]  # [T, R, C]
    scores = density_scores(pool, noise, ties_by_index=variant == "corrected")

    slots, tokens = [frames[:, None] * per_frame + salient], [flat[frames[:, None], salient]]
    patches = [torch.ones_like(salient)]
    # every input slot once: the tokens it feeds, the first of them (counted in the order made), its weight there
    fed, fan, into, share = [slots[0]], [patches[0]], [torch.arange(salient.numel(), device=device)], [patches[0]]
    made = salient.numel()
    for group in groups:
        merged = merge_segments(pool, scores, group, dtm_beta, variant)
        slots.append(merged.frames * per_frame + rest[merged.frames, merged.positions])
        tokens.append(merged.tokens)
        patches.append(merged.fed_by)
        row = torch.arange(group.length * rest_count, device=device)
        row_frame = group.starts[:, None] + row // rest_count  # [n, L·R]
        fed.append(row_frame * per_frame + rest[row_frame, row % rest_count])
        feeds = merged.weights != 0  # [n, L·R, V]
        fan.append(feeds.sum(dim=2))
        first_target = made + torch.arange(len(group.starts), device=device)[:, None] * feeds.shape[2]
        into.append(first_target + feeds.int().argmax(dim=2))
        share.append(merged.weights.sum(dim=2))
        made += merged.tokens.shape[:2].numel()
    slots = torch.cat([s.flatten() for s in slots])
    order = slots.argsort()
    tokens = torch.cat([x.reshape(-1, c) for x in tokens])[order]
    patches = torch.cat([x.flatten() for x in patches])[order]
    members, member_weights, shared = slot_members(
        *(torch.cat([x.flatten() for x in parts]) for parts in (fed, fan, into, share)), order, t * per_frame
    )
    facts = {
        "frame_salient_num": salient_count,
        "frame_context_num": context,
        "segment_sizes": torch.bincount(segment).tolist(),
        "frame_context_counts": counts.tolist(),
        "shared_patches": shared,
    }
    return FastVIDTokens(tokens, slots[order], patches, members, member_weights, facts)


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
            self.stprune_d, self.dtm_p, self.dtm_beta, self.variant, noise,
        )  # fmt: skip
        return Reduction(result.tokens, patch_boxes(result.slots, h, w), result.num_patches, video.num_tokens,
                         info={**info, **result.facts}, members=result.members,
                         member_weights=result.member_weights)  # fmt: skip
