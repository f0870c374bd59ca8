"""FlashVID: attention-and-diversity token selection and tree-based spatio-temporal merging, before the LLM.

Paper: Fan et al., "FlashVID: Efficient Video Large Language Models via Training-free Tree-based Spatiotemporal
Token Merging", ICLR 2026 (arXiv 2602.08024). Reference code: github.com/Fanziyang-v/FlashVID at commit
``1d37422c5afcaa15ee46b5355f5ba798fa93290a``: ``flashvid/utils.py::flashvid_compression`` (with
``segment``/``additional_segment``, ``segment_compression``, ``spatiotemporal_compression``, ``dpc_knn``),
``flashvid/token_selection.py::attn_div_v2_based_token_selection`` (LLaVA) and ``attn_div_based_token_selection``
(Qwen), and ``flashvid/utils.py::fastv_prune`` for the pruning step inside the LLM.

Per video of T frames of N tokens, with a per-frame budget B split into ``n_ad = ceil(B·alpha)`` selected and
``n_st = B − n_ad`` merged tokens:

1. DySeg: frames are cut where the cosine of consecutive mean tokens drops below ``segment_threshold``; with fewer
   than ``min_segment_num`` segments, the least similar transitions are cut too.
2. ADTS, per frame: the cosine distances between its tokens, each column scaled by the token's vision-tower
   attention (× 1e6) and, in ``attn_div_v2``, by its mean dot product with the segment's mean frame tokens; then a
   greedy max-min selection of ``n_ad`` tokens (the first: the largest second-smallest column value).
3. TSTM, temporal: in a segment, each other token links to its most similar non-selected token of the previous
   frame and merges into it above ``temporal_threshold`` (cosine), forming trees rooted in their earliest frame.
   If fewer than B·L tokens would remain, the threshold drops to the similarity of rank L·N − B·L (a soft floor).
4. TSTM, spatial: the segment's roots are clustered by DPC-kNN, ``ceil(n_f · n_st·L / R)`` clusters in a frame of
   n_f of the segment's R roots; a cluster is the mean of its members and sits at its centre's slot.

It acts before the LLM and needs the vision tower's attention (``Stage.VISION``): ``importance`` is the attention
each patch receives at the layer whose output the LLM uses (mean over heads and queries), pooled like the features,
which is the reference's ``cls_attention``. The reference loops over segments and frames; here each step runs on all
frames at once (the greedy selection one pick at a time, on CUDA in one program per frame of ``baselines.maxmin``;
the tree sums one position in the segment at a time), in the reference's order of summation where rounding could
show; the float32 products the reference takes of the cast half-precision tokens (ADTS's cosines, DPC-kNN's
distances) run, on a GPU, on tensor cores (``tensor_cores``; :mod:`baselines.products`): the same exact products,
summed in float32 in another order. The host reads the device only where shapes need it: for the segments (before
the heavy work), for the cluster counts, and at the end for the counts in ``info``.

Output: the selected tokens and the cluster tokens, sorted by slot (the authors' order); each token's box is its
slot (the selected token, or the cluster centre, which is a tree root), and ``num_patches`` counts the input
slots it stands for (a root's tree; a cluster's members' trees). ``members`` and ``member_weights`` give each token
as a weighted sum of the grid's slots, so that other values of the same slots (Qwen3-VL's DeepStack features) merge
alike (``sttm.api.reduce_like``): a selected token is its slot; a cluster weighs each slot of its roots' trees
``1 / (d · m)``, d its root's divisor (official: 1 + the root's direct children, so a tree's weights sum to more
than 1; corrected: the tree's size) and m the cluster's roots. Officially a one-frame segment clusters its selected
slots again and ADTS v2 may select a slot twice: such a slot is in two tokens and names neither, ``members`` is then
None, ``info["shared_patches"]`` counts those slots, and a model that must merge such values alike refuses the
reduction. (The authors' Qwen3-VL code takes the DeepStack features at the kept slots instead of merging them.)

Budget: by default (``budget_mode="direct"``) the budget b is the vision-side kept fraction, B = ceil(N·b). The
authors' knob ``retention_ratio`` r is instead the average kept fraction over the LLM's layers, and their vision
side keeps B = ceil(N·r·expansion) (expansion 1.25, which the pruning inside the LLM brings back to r: layer 20 of
28 keeping 0.3, or layer 28 of 36 keeping 0.1); ``budget_mode="authors"`` reads the budget as r this way (the
reference check uses it). ``Reduction.info`` records both ratios (r = vision ratio / expansion), B, n_ad, n_st and
the other knobs. The achieved ratio exceeds the vision ratio by up to one token per frame (each frame's cluster
count is rounded up), plus one per soft-floored segment. A budget with B ≥ N keeps every token (where the authors'
code would fail or select tokens twice).

``variant="official"`` (default) reproduces the reference, quirks included:

* a tree root's token is its tree's sum over (1 + its direct children), not the tree's mean;
* the soft floor merges strictly above the rank-k similarity, so it keeps one token more than B·L;
* a one-frame segment clusters all N tokens of its frame, the selected ones included (with ratio n_st/N), so a
  selected token can also sit in a cluster and a centre can share its slot (two rows with one box);
* ``attn_div_v2`` does not exclude the tokens it already selected (a token can be selected twice);
* cluster counts are rounded up in floating point (ceil(n_f · (M/R)), e.g. 196 · (53/196) gives 54 clusters).

``variant="corrected"`` drops these: roots are tree means, the soft floor keeps exactly B·L tokens, one-frame
segments cluster only the tokens not selected, every selection excludes the tokens already selected, and cluster
counts are exact integer ceilings. In both variants, unlike the reference, the input is never modified in place,
tied rows come out selected token first (the reference sorts unstably), and exact density ties in DPC-kNN go to
the lower slot (the reference adds 1e-6 of random noise; its reference cases do not depend on it).

Pruning inside the LLM (``fastv_prune``, registered as ``flashvid_llm``): before layer K, the visual tokens keep
the ``ceil(n·ratio)`` the last prompt token attends to most at layer K − 1 (mean over heads), in their order and
with their positions: FastV's ranking (:func:`baselines.fastv.most_attended`) with a count rounded up instead of
down. FlashVID's reducer holds that stage's knobs (``llm_layer``, ``llm_keep``, ``llm_prune`` to
switch it off) and hands it out as ``inner_stage()``.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F

from baselines import maxmin, products
from baselines.fastv import most_attended
from baselines.fastvid import slot_members
from sttm.api import (
    RankedInLLM,
    Reducer,
    Reduction,
    Stage,
    VideoTokens,
    check_budget,
    keep_subset,
    patch_boxes,
    register,
)
from sttm.transfer import to_device

SELECTIONS = ("attn_div", "attn_div_v2")
VARIANTS = ("official", "corrected")
BUDGET_MODES = ("direct", "authors")

#: the reference scales the vision tower's attention (about 1/729 per patch) before multiplying distances by it
ATTENTION_SCALE = 1e6
#: the reference's floor for the soft temporal threshold: never merge along an excluded (−1) link
SOFT_THRESHOLD_FLOOR = -1.0 + 1e-6
#: DPC-kNN's neighbourhood for local density: k = min(clusters, MAX_NEIGHBOURS)
MAX_NEIGHBOURS = 7


def occurrences(index: torch.Tensor, size: int) -> torch.Tensor:
    """[E] int64 values in [0, size) -> [size] int64 how often each occurs: ``torch.bincount`` without the waits
    for the device it makes to check and size its input."""
    return torch.zeros(size, dtype=torch.long, device=index.device).index_add_(0, index, torch.ones_like(index))


def smallest(values: torch.Tensor, count: int, dim: int) -> torch.Tensor:
    """The ``count`` smallest of ``values`` along ``dim``, ascending, repeats counted: ``topk(count, largest=False)``'s
    values (where no NaN is among them), by ``count`` passes of ``min``. On a GPU that is a few memory-bound kernels,
    where topk's radix selection is slow on many short slices."""
    rest = values.clone()
    least, at = rest.min(dim=dim, keepdim=True)
    found = [least]
    for _ in range(1, count):
        rest.scatter_(dim, at, math.inf)
        least, at = rest.min(dim=dim, keepdim=True)
        found.append(least)
    return torch.cat(found, dim=dim)


def frame_budget(tokens_per_frame: int, budget: float, budget_mode: str = "direct", expansion: float = 1.25) -> int:
    """Tokens B kept per frame on the vision side: ceil(N·budget), or the authors' ceil(N·r·expansion) for r =
    budget (Python floats, left to right, as the reference computes it)."""
    if budget_mode == "authors":
        return math.ceil(tokens_per_frame * budget * expansion)
    return math.ceil(tokens_per_frame * budget)


def split_budget(frame_tokens: int, alpha: float) -> tuple[int, int]:
    """(selected, merged) tokens per frame: ``n_ad = ceil(B·alpha)`` by ADTS, ``n_st = B − n_ad`` by TSTM."""
    selected = math.ceil(frame_tokens * alpha)
    return selected, frame_tokens - selected


def segment_frames(
    frame_means: torch.Tensor, threshold: float = 0.9, min_segments: int = 8, complementary: bool = True
) -> torch.Tensor:
    """DySeg: [T, C] mean token per frame -> [T] int64 segment of each frame (0, 1, ... in order).

    A segment ends after frame t where cos(m_t, m_{t+1}) < ``threshold``; with fewer than ``min_segments``
    segments (and ``complementary``), the ``min_segments − segments`` transitions of lowest cosine among the
    others (``topk``; all of them if fewer) are cut too.
    """
    unit = frame_means / frame_means.norm(p=2, dim=-1, keepdim=True)
    transitions = (unit[:-1] * unit[1:]).sum(dim=-1)  # [T − 1]
    cut = transitions < threshold
    segments = int(cut.sum()) + 1
    if complementary and segments < min_segments:
        extra = transitions.masked_fill(cut, 1.0).topk(min(min_segments - segments, len(transitions)), largest=False)
        cut = cut.index_fill(0, extra.indices, True)
    return F.pad(cut.long().cumsum(0), (1, 0))


def event_relevance(frames: torch.Tensor, segment: torch.Tensor) -> torch.Tensor:
    """ADTS v2's second calibration: [T, N, C] float tokens, [T] segments -> [T, N] mean dot product of each token
    with the mean tokens of its segment's frames."""
    frame_means = frames.mean(dim=1)  # [T, C]
    same = (segment[:, None] == segment[None, :]).to(frames.dtype)  # [T, T]
    segment_means = (same / same.sum(dim=1, keepdim=True)) @ frame_means  # [T, C]
    return torch.bmm(frames, segment_means[:, :, None]).squeeze(-1)


def frame_cosines(tokens: torch.Tensor, half: torch.Tensor | None = None) -> torch.Tensor:
    """[T, N, C] float32 tokens -> [T, N, N] float32 cosines within each frame: the products of the unit vectors,
    as the reference; or, given ``half`` (the same tokens in bfloat16 or float16 on CUDA), their products on tensor
    cores (:func:`baselines.products.gram`) over the products of the norms."""
    norms = tokens.norm(p=2, dim=-1, keepdim=True)  # [T, N, 1]
    if half is None:
        unit = tokens / norms
        return torch.bmm(unit, unit.transpose(1, 2))
    return products.gram(half) / (norms * norms.transpose(1, 2))


def calibrated_distances(
    tokens: torch.Tensor,
    attention: torch.Tensor,
    relevance: torch.Tensor | None = None,
    half: torch.Tensor | None = None,
) -> torch.Tensor:
    """[T, N, C] float32 tokens, [T, N] attention, optional [T, N] relevance -> [T, N, N] float32 cosine distances
    within each frame (:func:`frame_cosines`, ``half`` as there), column n scaled by ``attention[n]·1e6`` and then
    by ``relevance[n]``."""
    distances = (1.0 - frame_cosines(tokens, half)) * (attention.float() * ATTENTION_SCALE)[:, None, :]
    return distances if relevance is None else distances * relevance[:, None, :]


def adts_distances(
    frames: torch.Tensor, attention: torch.Tensor, segment: torch.Tensor | None, tensor_cores: bool = True
) -> torch.Tensor:
    """ADTS's :func:`calibrated_distances`: [T, N, C] tokens, [T, N] attention, [T] segments for v2's
    :func:`event_relevance` (None: v1's, attention alone) -> [T, N, N] float32, from one float32 copy of the tokens;
    the cosines of half-precision tokens on a GPU on tensor cores unless ``tensor_cores`` is off."""
    tokens = frames.float()
    relevance = None if segment is None else event_relevance(tokens, segment)
    half = frames if products.on_tensor_cores(frames, tensor_cores) else None
    return calibrated_distances(tokens, attention, relevance, half)


def select_diverse(distances: torch.Tensor, count: int, exclude_selected: bool = True) -> torch.Tensor:
    """Greedy max-min selection per frame: [T, N, N] distances -> [T, count] token indices, ascending.

    The first pick maximises the second-smallest value of its column; each next pick maximises its smallest
    distance to the picks so far (the first index on ties), the picks excluded. (ADTS v1 excludes them by setting
    them to −1: the same picks while the others stay above −1, as attention ≤ 1 keeps them above −0.3.) Here a pick
    is excluded by a diagonal of −inf: its distance to itself becomes its smallest one.
    ``exclude_selected=False`` is ADTS v2's: picks stay candidates and may repeat. On CUDA the steps run as
    ``baselines.maxmin``'s kernels (the same picks: comparisons only).
    """
    if maxmin.runs_on_kernels(distances):
        return maxmin.most_diverse(distances, count, exclude_chosen=exclude_selected).sort(dim=1).values
    frames, width, _ = distances.shape
    second_smallest = smallest(distances, 2, dim=1)[:, 1:]  # [T, 1, N] of each column
    if exclude_selected:
        distances = distances.diagonal_scatter(distances.new_full((frames, width), -math.inf), dim1=1, dim2=2)
    # written in place, one pick per step: a step launches three kernels and allocates nothing
    picks = torch.empty(count, frames, 1, 1, dtype=torch.long, device=distances.device)
    written, rows = picks.unbind(0), picks.expand(count, frames, 1, width).unbind(0)  # [T, 1, 1], [T, 1, N] each
    torch.argmax(second_smallest, dim=2, keepdim=True, out=written[0])
    nearest = torch.full_like(second_smallest, math.inf)  # [T, 1, N] each token's distance to its nearest pick
    row = torch.empty_like(nearest)  # the last pick's distances
    for step in range(1, count):
        torch.minimum(nearest, torch.gather(distances, 1, rows[step - 1], out=row), out=nearest)
        torch.argmax(nearest, dim=2, keepdim=True, out=written[step])
    return picks.view(count, frames).t().sort(dim=1).values


def consecutive_cosines(frames: torch.Tensor) -> torch.Tensor:
    """[T, N, C] tokens -> [T − 1, N, N] cosines in the tokens' dtype: [t − 1, n, m] between token n of frame t and
    token m of frame t − 1."""
    unit = frames / frames.norm(p=2, dim=-1, keepdim=True)
    return torch.bmm(unit[1:], unit[:-1].transpose(1, 2))


def temporal_links(
    cosines: torch.Tensor, selected: torch.Tensor, starts: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Each token's most similar token in the previous frame: [T − 1, N, N] consecutive cosines, [T, N] bool
    selected by ADTS, [T] bool first frames of segments -> ([T, N] cosine, −1 where excluded; [T, N] int64 index in
    frame t − 1).

    Selected tokens neither link nor are linked to; a segment's first frame has no previous frame.
    """
    cosines = cosines.masked_fill(selected[1:, :, None] | selected[:-1, None, :], -1.0)
    similarity, parent = cosines.max(dim=2)
    similarity = F.pad(similarity, (0, 0, 1, 0), value=-1.0).masked_fill(starts[:, None], -1.0)
    return similarity, F.pad(parent, (0, 0, 1, 0))


def temporal_merges(
    similarity: torch.Tensor,
    segment: torch.Tensor,
    position: torch.Tensor,
    lengths: list[int],
    frame_tokens: int,
    threshold: float = 0.8,
    exact_floor: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Which tokens merge into their link: [T, N] similarity, [T] segment and position in it, the segments'
    lengths -> ([T, N] bool merged, [S] bool segments whose threshold fell to the soft floor).

    A token merges above ``threshold``. A segment of L frames that would keep fewer than ``frame_tokens``·L tokens
    merges instead strictly above the k-th largest similarity, k = L·N − frame_tokens·L (floored at −1 + 1e-6), which
    keeps one token more than that; ``exact_floor`` merges the k most similar (the lower slot on ties) above the
    floor, keeping exactly frame_tokens·L where there are k to merge.
    """
    width = similarity.shape[1]
    device = similarity.device
    # per segment: the tokens it must keep, where it has several frames (else 0: never soft), and the merges allowed
    floor, merges = to_device([[frame_tokens * length if length > 1 else 0 for length in lengths],
                               [(width - frame_tokens) * length for length in lengths]], device)  # fmt: skip
    merged = similarity > threshold
    soft = torch.zeros_like(floor).index_add_(0, segment, (~merged).sum(dim=1)) < floor
    slots = position[:, None] * width + torch.arange(width, device=device)  # [T, N] place in its segment's table
    table = similarity.new_full((len(lengths), max(lengths) * width), -math.inf)
    table[segment[:, None], slots] = similarity
    ranked = table.sort(dim=1, descending=True, stable=True)
    if exact_floor:
        rank = torch.empty_like(ranked.indices).scatter_(1, ranked.indices, torch.arange(table.shape[1], device=device)
                                                         .expand_as(table))  # fmt: skip
        floored = (rank[segment[:, None], slots] < merges[segment, None]) & (similarity > SOFT_THRESHOLD_FLOOR)
    else:
        soft_threshold = ranked.values.gather(1, (merges - 1)[:, None]).clamp(min=SOFT_THRESHOLD_FLOOR)
        floored = similarity > soft_threshold[segment]
    return torch.where(soft[segment, None], floored, merged), soft


def frames_by_position(lengths: list[int]) -> tuple[list[int], list[int]]:
    """A frame order for processing all segments together, position by position: (the frames [T], position 0 of
    every segment first, each position's segments longest first; the number of frames at each position).

    The segments that reach position p are then the first ones at position p − 1, in the same order.
    """
    starts = [sum(lengths[:index]) for index in range(len(lengths))]
    longest_first = sorted(range(len(lengths)), key=lambda index: -lengths[index])
    counts = [sum(length > step for length in lengths) for step in range(max(lengths))]
    order = [starts[index] + step for step, count in enumerate(counts) for index in longest_first[:count]]
    return order, counts


def tree_sums(frames: torch.Tensor, merged: torch.Tensor, parent: torch.Tensor, lengths: list[int]) -> torch.Tensor:
    """Each token plus the sums of its merged children, accumulated last frame first as the reference does:
    [T, N, C] tokens, [T, N] bool merged, [T, N] parent in the previous frame, the segments' lengths -> [T, N, C]
    (a tree root's value is its whole tree's sum).

    The children's sums join their parents' frame at once (a matrix product, in slot order), so that rounding
    follows the reference; all segments advance together, one position per step.
    """
    order, counts = frames_by_position(lengths)
    index, back = to_device([order, sorted(range(len(order)), key=order.__getitem__)], frames.device)
    sums = frames.index_select(0, index)  # in ``order``; accumulated in place
    frame_count, width = merged.shape
    links = torch.zeros(frame_count, width, width, dtype=frames.dtype, device=frames.device)  # [T, child, parent]
    parents, is_merged = parent.index_select(0, index), merged.index_select(0, index)
    links.scatter_(2, parents[:, :, None], is_merged[:, :, None].to(frames.dtype))
    to_parents = links.transpose(1, 2)
    offsets = [sum(counts[:step]) for step in range(len(counts))]
    for step in range(len(counts) - 1, 0, -1):
        children = slice(offsets[step], offsets[step] + counts[step])
        parents = slice(offsets[step - 1], offsets[step - 1] + counts[step])
        sums[parents].add_(torch.bmm(to_parents[children], sums[children]))
    return sums.index_select(0, back)


def child_counts(merged: torch.Tensor, parent: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """[T, N] bool merged, [T, N] parent in the previous frame -> [T, N] each token's number of merged children."""
    counts = torch.zeros(merged.shape, dtype=dtype, device=merged.device).scatter_add_(1, parent, merged.to(dtype))
    return F.pad(counts[1:], (0, 0, 0, 1))


def tree_roots(merged: torch.Tensor, parent: torch.Tensor, longest: int) -> torch.Tensor:
    """[T, N] bool merged, [T, N] parent in the previous frame -> [T·N] flat slot of each token's tree root."""
    frame_count, width = merged.shape
    flat = torch.arange(frame_count * width, device=merged.device).view(frame_count, width)
    pointer = torch.where(merged, flat - flat % width - width + parent, flat).flatten()
    for _ in range((longest - 1).bit_length()):
        pointer = pointer[pointer]
    return pointer


def cluster_counts(
    valid: torch.Tensor, segment: torch.Tensor, lengths: list[int], merged_tokens: int, exact: bool = False
) -> torch.Tensor:
    """Clusters per frame: [T, N] bool tokens to cluster, [T] segments -> [T] int64.

    A frame of n_f of its segment's R tokens gets ceil(n_f · M/R) clusters for M = ``merged_tokens``·L (in
    floating point as the reference; ``exact``: as integers), or keeps its n_f tokens where M ≥ R.
    """
    per_frame = valid.sum(dim=1)
    budget = to_device([merged_tokens * length for length in lengths], valid.device)[segment]
    total = torch.zeros(len(lengths), dtype=per_frame.dtype, device=valid.device).index_add_(0, segment, per_frame)
    total = total[segment]
    if exact:
        clusters = (per_frame * budget + total - 1) // total
    else:
        clusters = (per_frame.double() * (budget.double() / total.double())).ceil().long()
    return torch.where(budget < total, clusters, per_frame)


def dpc_knn(
    tokens: torch.Tensor, valid: torch.Tensor, clusters: torch.Tensor, tensor_cores: bool = True
) -> tuple[torch.Tensor, torch.Tensor]:
    """Density-peak clustering with kNN density, per frame: [B, N, C] tokens, [B, N] bool tokens to cluster, [B]
    clusters (≤ the valid count) -> ([B, N] cluster of each token, [B, N] the slots by score: the first clusters[b]
    are frame b's centres, cluster by cluster; invalid tokens' clusters are meaningless).

    Distances are Euclidean over sqrt(C) (float32); density exp(−mean of the k = min(clusters, 7) smallest squared
    distances, self included); a token's delta is its distance to the nearest denser token (the largest distance of
    the frame for the densest); the centres are the largest delta·density, in that order, and every token joins its
    nearest centre (the first on ties). Density ties go to the lower slot. The products of half-precision tokens on
    a GPU run on tensor cores unless ``tensor_cores`` is off (:mod:`baselines.products`).
    """
    batch, width, channels = tokens.shape
    points = tokens.float()
    squares = points.square().sum(dim=-1)  # [B, N]
    if products.on_tensor_cores(tokens, tensor_cores):
        squared = products.squared_distances(tokens, squares)
    else:  # as torch.cdist's matrix-product path computes it: (−2·x·y + |x|²) + |y|², clamped, square-rooted
        squared = torch.baddbmm(squares[:, :, None], points, points.transpose(1, 2), alpha=-2) + squares[:, None, :]
    distances = squared.clamp(min=0).sqrt() / math.sqrt(channels)  # [B, N, N]
    to_valid = valid[:, None, :]  # [B, 1, N]
    neighbours = clusters.clamp(max=MAX_NEIGHBOURS)
    nearest = smallest(torch.where(to_valid, distances, math.inf), min(MAX_NEIGHBOURS, width), dim=-1)
    used = torch.arange(nearest.shape[-1], device=tokens.device) < neighbours[:, None, None]
    density = torch.where(used, -nearest.square(), 0.0).sum(dim=-1).div(neighbours[:, None]).exp()
    slot = torch.arange(width, device=tokens.device)
    of_j, of_i = density[:, None, :], density[:, :, None]
    denser = torch.where(of_j == of_i, slot < slot[:, None], of_j > of_i) & to_valid  # [B, i, j]: j is denser than i
    largest = torch.where(valid[:, :, None] & to_valid, distances, -math.inf).amax(dim=(1, 2))
    delta = torch.where(denser, distances, math.inf).amin(dim=-1).minimum(largest[:, None])
    score = torch.where(valid, delta * density, -math.inf)
    order = score.sort(dim=1, descending=True, stable=True).indices  # [B, N] slots by score
    to_ranked = distances.gather(2, order[:, None, :].expand(batch, width, width))  # [b, i, r]: to rank r
    assignment = torch.where(slot < clusters[:, None, None], to_ranked, math.inf).argmin(dim=-1)
    rank = torch.empty_like(order).scatter_(1, order, slot.expand(batch, width))
    return torch.where(rank < clusters[:, None], rank, assignment), order


def cluster_means(tokens: torch.Tensor, valid: torch.Tensor, assignment: torch.Tensor, count: int) -> torch.Tensor:
    """[B, N, C] tokens, [B, N] bool valid, [B, N] cluster of each (< ``count``) -> [B, count, C] the mean of each
    cluster's valid members (NaN where it has none), summed in slot order."""
    batch, width, _ = tokens.shape
    members = torch.zeros(batch, width, count, dtype=tokens.dtype, device=tokens.device)
    members.scatter_(2, assignment[:, :, None], valid[:, :, None].to(tokens.dtype))
    return torch.bmm(members.transpose(1, 2), tokens) / members.sum(dim=1)[:, :, None]


class ClusterTokens(NamedTuple):
    """TSTM's tokens, M clusters frame by frame, and where the T·N input slots went."""

    slots: torch.Tensor  # [M] flat slot of each cluster's centre
    tokens: torch.Tensor  # [M, C]
    num_patches: torch.Tensor  # [M] input slots each stands for
    members: torch.Tensor  # [T·N] the cluster each input slot went into, through its tree root; −1: none
    member_weights: torch.Tensor  # [T·N] float32 its weight there: 1 / (its root's divisor · the cluster's roots)
    soft: torch.Tensor  # [S] bool the segments whose temporal threshold fell to the soft floor


def merged_tokens(
    frames: torch.Tensor,
    cosines: torch.Tensor,
    selected: torch.Tensor,
    segment: torch.Tensor,
    lengths: list[int],
    frame_tokens: int,
    merged_count: int,
    threshold: float = 0.8,
    corrected: bool = False,
    tensor_cores: bool = True,
) -> ClusterTokens:
    """TSTM: [T, N, C] tokens, their [T − 1, N, N] :func:`consecutive_cosines`, [T, N] bool selected by ADTS, [T]
    segments of ``lengths``, B tokens a frame of which ``merged_count`` merged -> the cluster tokens
    (``tensor_cores`` as in :func:`dpc_knn`)."""
    frame_count, width, _ = frames.shape
    device = frames.device
    position = to_device([step for length in lengths for step in range(length)], device)
    similarity, parent = temporal_links(cosines, selected, position == 0)
    merged, soft = temporal_merges(similarity, segment, position, lengths, frame_tokens, threshold, corrected)
    valid = ~merged & ~selected
    if not corrected:  # a one-frame segment clusters its whole frame
        valid |= to_device([length == 1 for length in lengths], device)[segment, None]
    clusters = cluster_counts(valid, segment, lengths, merged_count, exact=corrected)
    counts = clusters.tolist()  # the output's shape; asked before the heavy work below is queued
    sums = tree_sums(frames, merged, parent, lengths)
    root = tree_roots(merged, parent, max(lengths))
    sizes = occurrences(root, frame_count * width).view(frame_count, width)
    if corrected:  # a root's tree mean
        denominators = sizes.clamp(min=1).to(sums.dtype)
    else:  # the reference's: its tree's sum over 1 + its direct children
        denominators = child_counts(merged, parent, sums.dtype) + 1
    roots = sums.div_(denominators[:, :, None])
    assignment, ranked = dpc_knn(roots, valid, clusters, tensor_cores)
    count = max(counts)
    means = cluster_means(roots, valid, assignment, count)
    patches = torch.zeros(frame_count, count, dtype=torch.long, device=device)
    patches.scatter_add_(1, assignment, sizes * valid)
    made = torch.arange(count, device=device) < clusters[:, None]  # [T, K]
    frame, cluster = made.nonzero_static(size=sum(counts)).unbind(1)
    # a slot goes into its tree root's cluster, weighted by the root's divisor and the cluster's roots
    root_frame, root_cluster = root // width, assignment.flatten()[root]
    roots_per_cluster = torch.zeros_like(patches).scatter_add_(1, assignment, valid.long())
    in_cluster = valid.flatten()[root]
    output = made.flatten().cumsum(0).view_as(made) - 1  # each cluster's index among those returned
    members = torch.where(in_cluster, output[root_frame, root_cluster], -1)
    weights = 1 / (denominators.flatten()[root].float() * roots_per_cluster[root_frame, root_cluster])
    return ClusterTokens(frame * width + ranked[frame, cluster], means[frame, cluster], patches[frame, cluster],
                         members, torch.where(in_cluster, weights, 0.0), soft)  # fmt: skip


def selected_and_cluster_members(
    selected: torch.Tensor, clusters: ClusterTokens, order: torch.Tensor
) -> tuple[torch.Tensor | None, torch.Tensor | None, int]:
    """[S] flat slots of the selected tokens (the first S tokens made), the cluster tokens made after them, [K] the
    output order of all -> each slot's output token and weight there (:func:`baselines.fastvid.slot_members`), and the
    slots in two tokens (ADTS v2 may select a slot twice; officially a one-frame segment clusters selected slots)."""
    slots, device = len(clusters.members), selected.device
    times_selected = occurrences(selected, slots)
    selected_as = torch.empty_like(times_selected).index_put_((selected,), torch.arange(len(selected), device=device))
    into = torch.where(times_selected > 0, selected_as, len(selected) + clusters.members)
    share = torch.where(times_selected > 0, 1.0, clusters.member_weights)
    fan = times_selected + (clusters.members >= 0)
    return slot_members(torch.arange(slots, device=device), fan, into, share, order, slots)


def fastv_prune(
    hidden_states: torch.Tensor,
    attention: torch.Tensor,
    visual_start: int,
    visual_length: int,
    keep_ratio: float,
    position_ids: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """FlashVID's pruning inside the LLM: [L, D] hidden states at the input of layer K, [heads, L] the last prompt
    token's attention at layer K − 1, the visual span ``[visual_start, visual_start + visual_length)``, optional [L]
    position ids -> ([L'] kept positions, ascending; [L', D] their hidden states; [L'] their position ids, the
    original ones).

    Every non-visual token stays; of the visual ones, the ``ceil(visual_length · keep_ratio)`` most attended (mean
    over heads), the lower index on ties (FastV's ranking, :func:`baselines.fastv.most_attended`).
    """
    length = hidden_states.shape[0]
    if attention.dim() != 2 or attention.shape[1] != length:
        raise ValueError(f"attention must have shape [heads, {length}], got {tuple(attention.shape)}")
    if not (0 <= visual_start and visual_length >= 1 and visual_start + visual_length <= length):
        raise ValueError(f"visual span [{visual_start}, {visual_start + visual_length}) must lie in [0, {length}]")
    if not 0.0 < keep_ratio <= 1.0:
        raise ValueError(f"keep_ratio must lie in (0, 1], got {keep_ratio}")
    visual_end = visual_start + visual_length
    kept = most_attended(attention.mean(dim=0)[visual_start:visual_end], math.ceil(visual_length * keep_ratio))
    device = hidden_states.device
    keep = torch.cat([torch.arange(visual_start, device=device), kept.to(device) + visual_start,
                      torch.arange(visual_end, length, device=device)])  # fmt: skip
    positions = keep.clone() if position_ids is None else position_ids[keep]
    return keep, hidden_states[keep], positions


@register("flashvid_llm")
class FlashVIDLLM(RankedInLLM):
    """FlashVID's pruning inside the LLM: the ``ceil(budget · n)`` visual tokens the last prompt token attends to
    most at layer ``layer − 1``, in their order. FastV's computation with FlashVID's rounding (up, not down)."""

    def __init__(self, budget: float = 0.3, layer: int = 20) -> None:
        super().__init__(budget, layer)

    def reduce(self, video: VideoTokens) -> Reduction:
        kept = most_attended(video.importance, math.ceil(video.num_tokens * self.budget)).to(video.grid.device)
        return keep_subset(video, kept, info={"llm_retention_ratio": self.budget, "pruning_layer": self.layer})


@register("flashvid")
class FlashVID(Reducer):
    """FlashVID (Fan et al., ICLR 2026) before the LLM: per segment, ADTS-selected tokens plus TSTM clusters."""

    stage = Stage.VISION
    needs = frozenset({"importance"})

    def __init__(
        self,
        budget: float = 0.3125,
        alpha: float = 0.7,
        selection: str = "attn_div_v2",
        temporal_threshold: float = 0.8,
        do_segment: bool = True,
        segment_threshold: float = 0.9,
        min_segment_num: int = 8,
        complementary_segment: bool = True,
        expansion: float = 1.25,
        budget_mode: str = "direct",
        variant: str = "official",
        llm_prune: bool = True,
        llm_layer: int = 20,
        llm_keep: float = 0.3,
        tensor_cores: bool = True,
    ) -> None:
        self.budget = check_budget(budget)
        if not 0.0 < alpha <= 1.0:
            raise ValueError(f"alpha (the share of the frame budget ADTS selects) must lie in (0, 1], got {alpha}")
        if not -1.0 <= temporal_threshold < 1.0:
            raise ValueError(f"temporal_threshold (a cosine) must lie in [-1, 1), got {temporal_threshold}")
        if min_segment_num < 1:
            raise ValueError(f"min_segment_num must be >= 1, got {min_segment_num}")
        if expansion <= 0:
            raise ValueError(f"expansion must be > 0, got {expansion}")
        for knob, value, choices in (("selection", selection, SELECTIONS), ("variant", variant, VARIANTS),
                                     ("budget_mode", budget_mode, BUDGET_MODES)):  # fmt: skip
            if value not in choices:
                raise ValueError(f"{knob} must be one of {', '.join(choices)}, got {value!r}")
        self.inner = FlashVIDLLM(budget=llm_keep, layer=llm_layer)
        self.alpha, self.selection, self.temporal_threshold = alpha, selection, temporal_threshold
        self.do_segment, self.segment_threshold = do_segment, segment_threshold
        self.min_segment_num, self.complementary_segment = min_segment_num, complementary_segment
        self.expansion, self.budget_mode, self.variant, self.llm_prune = expansion, budget_mode, variant, llm_prune
        self.tensor_cores = bool(tensor_cores)

    def inner_stage(self) -> FlashVIDLLM | None:
        """The pruning step inside the LLM that goes with this reducer, or None where ``llm_prune`` is off."""
        return self.inner if self.llm_prune else None

    def knobs(self, tokens_per_frame: int) -> dict:
        """The authors' knob values for a frame of ``tokens_per_frame`` tokens (``Reduction.info``)."""
        frame_tokens = frame_budget(tokens_per_frame, self.budget, self.budget_mode, self.expansion)
        selected, merged = split_budget(frame_tokens, self.alpha)
        vision_ratio = self.budget * self.expansion if self.budget_mode == "authors" else self.budget
        return {
            "variant": self.variant, "budget_mode": self.budget_mode, "vision_ratio": vision_ratio,
            "retention_ratio": vision_ratio / self.expansion, "expansion": self.expansion,
            "tokens_per_frame": frame_tokens, "num_attn_div_tokens": selected, "num_sttm_tokens": merged,
            "alpha": self.alpha, "token_selection_method": self.selection,
            "temporal_threshold": self.temporal_threshold, "do_segment": self.do_segment,
            "segment_threshold": self.segment_threshold, "min_segment_num": self.min_segment_num,
            "complementary_segment": self.complementary_segment,
            "pruning_layer": self.inner.layer if self.llm_prune else None,
            "llm_retention_ratio": self.inner.budget if self.llm_prune else None,
        }  # fmt: skip

    def reduce(self, video: VideoTokens) -> Reduction:
        t, h, w, c = video.grid.shape
        width = h * w
        if width < 2:
            raise ValueError(f"FlashVID's ADTS needs at least 2 tokens per frame, got a {h}x{w} grid")
        if video.importance is None:
            raise ValueError("FlashVID needs importance (the attention each patch receives in the vision tower)")
        info = self.knobs(width)
        frame_tokens = info["tokens_per_frame"]
        if frame_tokens >= width:
            return keep_subset(video, torch.arange(video.num_tokens, device=video.grid.device), info=info)
        corrected = self.variant == "corrected"
        selected_count, merged_count = info["num_attn_div_tokens"], info["num_sttm_tokens"]
        frames = video.grid.reshape(t, width, c)
        device = frames.device
        if self.do_segment:
            segment = segment_frames(frames.mean(dim=1), self.segment_threshold, self.min_segment_num,
                                     self.complementary_segment)  # fmt: skip
        else:
            segment = torch.zeros(t, dtype=torch.long, device=device)
        lengths = torch.bincount(segment.cpu()).tolist()
        info.update(segment_lengths=lengths)

        event_segments = segment if self.selection == "attn_div_v2" else None
        distances = adts_distances(frames, video.importance.reshape(t, width), event_segments, self.tensor_cores)
        # they need no selection: queued before the selection's loop, they keep the device busy during it
        cosines = consecutive_cosines(frames) if merged_count > 0 else None
        exclude = corrected or self.selection == "attn_div"
        chosen = select_diverse(distances, selected_count, exclude_selected=exclude)  # [T, n_ad]
        rows = torch.arange(t, device=device)[:, None]
        kept_idx = [(rows * width + chosen).flatten()]
        kept_tokens, kept_patches = [frames[rows, chosen].reshape(-1, c)], [torch.ones_like(kept_idx[0])]

        clusters = None
        if merged_count > 0:
            selected = torch.zeros(t, width, dtype=torch.bool, device=device).scatter_(1, chosen, True)
            clusters = merged_tokens(frames, cosines, selected, segment, lengths, frame_tokens, merged_count,
                                     self.temporal_threshold, corrected, self.tensor_cores)  # fmt: skip
            kept_idx.append(clusters.slots)
            kept_tokens.append(clusters.tokens)
            kept_patches.append(clusters.num_patches)

        token_idx = torch.cat(kept_idx)
        order = token_idx.sort(stable=True).indices
        tokens, patches = torch.cat(kept_tokens)[order], torch.cat(kept_patches)[order]
        boxes = patch_boxes(token_idx[order], h, w)
        members = weights = None  # without clusters every token is a selected one, unchanged
        if clusters is None:
            info.update(soft_threshold_segments=0)
        else:  # the counts last: the host has queued everything by then
            members, weights, shared = selected_and_cluster_members(kept_idx[0], clusters, order)
            info.update(soft_threshold_segments=int(clusters.soft.sum()), shared_patches=shared)
        return Reduction(tokens, boxes, patches, video.num_tokens, info=info, members=members, member_weights=weights)
