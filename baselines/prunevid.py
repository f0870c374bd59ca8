"""PruneVid: merge static regions over time and cluster tokens in space before the LLM, then keep the video tokens
the question attends to inside it.

Paper: Huang, Zhou and Han, "PruneVid: Visual Token Pruning for Efficient Video Large Language Models", ACL 2025
Findings (arXiv 2412.16117). Reference code: github.com/Visual-AI/PruneVid at commit
b12600c6176c606ee4b6b7d9e26f4aa46d0dfd42, the PLLaVA variant (the only one released: the README lists the
LLaVA-OneVision and ST-LLM releases as to do). Stage 1 is ``models/pllava/modeling_pllava.py``:
``PllavaForConditionalGeneration.merge_frames_dynamic`` with ``cluster_dpc_knn``, ``refine_clusters``,
``segment_lengths``, ``spatial_merge_tokens`` and ``compute_cluster_vectors``. Stage 2 is
``models/pllava/elastic_cache.py``: ``VTPWindowCache.process_attention`` and ``prompt_prefill``, called from
``models/pllava/llama.py``: ``LlamaModelVTP.forward``. Defaults from ``scripts/eval.sh`` (the paper's setting):
tau = 0.8, temporal_segment_ratio = 0.25, cluster_ratio = 0.5, alpha = 0.4, selected_layer = 10, and k = 7
nearest neighbours hard-coded in ``merge_frames_dynamic``. A second reading: ModelTC/LightCompress
``llmc/compression/token_reduction/prunevid.py`` runs the same stage 1 on LLaVA-OneVision after its 2-D pooling
(the grid this reducer receives there), with the same defaults, and has no stage 2.

Stage 1, as the authors run it on one video's [T, L, C] tokens (L = H·W):

1. DPC-kNN (:func:`dpc_knn`) clusters the T frame means into ``int(T · temporal_segment_ratio)`` clusters.
   :func:`temporal_segments` turns the labels into contiguous segments: per label only its longest runs survive
   (all of them on a tie; none when the longest is one frame), and each stretch of removed frames joins the longer
   of the blocks beside it (the left one on a tie, label 0 when there is none).
2. In each segment of w frames, a slot is static when the mean cosine similarity of its w tokens over all pairs of
   distinct frames exceeds tau (:func:`segment_statistics`); a static slot becomes one token, its mean over the
   segment.
3. Each set of tokens, the segment's static tokens and each frame's dynamic ones, with more than 14 tokens (the
   authors' constant, ``max_unclustered``) is clustered by DPC-kNN (k = 7) into ``int(n · cluster_ratio)``
   clusters, each becoming its members' mean; a set of at most 14 stays as it is.
4. Output order: per segment, its static tokens, then each frame's dynamic tokens; a clustered set in the order
   of its cluster centres (descending DPC score), an unclustered one in raster order. PLLaVA places these tokens
   as one run of the prompt, at consecutive positions.

Here every non-empty set is one row of a single padded batch (members first, in raster order; the clustered sets first),
so DPC-kNN runs once for all the clustered sets and one matrix product makes every token, and the host waits for the
device twice (the frame labels, the static slots), then lays the batch out itself. A token's box is one patch: the slot
of its cluster centre (an unclustered token's own slot), at the segment's first frame for a static token;
``num_patches`` counts the input slots it stands for (w per static slot), and ``members`` names the token each grid
patch went into: every token is the plain mean of its patches (a static set's entries all average w frames). DPC-kNN
adds ``rand · 1e-6`` to the densities to break ties; the authors draw it from the global RNG on the features' device,
here it comes from a CPU generator seeded with ``seed``, drawn in the authors' order (their calls, a set each, take the
stream one call takes), so the result is the authors' one after ``torch.manual_seed(seed)`` on the CPU, and the same on
any device. Similarities are computed in float32 (or wider), distances in float32 (the values ``torch.cdist`` gives,
:func:`baselines.products.pairwise_distances`; of half-precision tokens on a GPU, the same exact products summed in
float32 on tensor cores unless ``tensor_cores`` is off), means in the grid's dtype.

Unlike the reference, videos of fewer than k = 7 frames work: their frames are clustered with T neighbours, and
into one segment at least (the reference's ``topk`` fails there); a one-frame segment, which only a one-frame video
has, is all dynamic (the reference divides by zero there).

``variant="corrected"`` drops the one quirk, that noise: it makes the result depend on the RNG, and it does not
even break every tie, since ``1e-6 · rand`` often rounds away on a float32 density near 0.5 (spacing 3e-8 to 6e-8):
two tied tokens then both become centres. The corrected variant draws nothing and breaks every tie by index (a
token is denser than an equally dense token after it; equal scores rank by index). Otherwise it is the same.

Budget. The authors' knobs set no token count; the count of stage 1 is Σ_sets ``int(n · cluster_ratio)`` for the
sets it clusters plus the sizes of the others, after segmentation and the static split, which do not depend on the
cluster ratio. Given a budget b, the cluster ratio is the smallest one that keeps the most tokens not above
``b · T·H·W`` (:func:`cluster_ratio_for_budget`); tau, the segment ratio and k stay at the authors' values. When no
ratio gives every clustered set a cluster (the authors' code fails on a set with none) at or below the budget,
the ratio that does with the fewest tokens is used and the achieved ratio exceeds the budget (``info["floor"]``).
Giving ``cluster_ratio`` runs the authors' setting, and the budget is ignored. At budget 1.0 every token is kept
unchanged (the authors' code at cluster ratio 1 would still average static slots over time). ``info`` records the
knobs used, the segments and the static/dynamic sizes that stage 2 groups by.

Stage 2 (:func:`question_guided_keep`). At decoder layer ``selected_layer`` the authors take the attention of every
token after the video (the question and the prompt's end) to the video tokens, its max over heads and over those
queries, and in each segment keep the ``int(s · alpha)`` most attended of its s static tokens and, per frame, the
``int(d · alpha)`` most attended of its d dynamic ones, in their original order; the hidden states entering layer
``selected_layer + 1`` and the KV cache of layers 0 … ``selected_layer`` keep only those (and every text token),
at their positions. That attention is softmax(q·k/√d) of the layer's queries and keys without rotary embeddings and
without the causal mask, over every key of the prompt (``LlamaAttention.forward``, ``attn_weights_wo_pos``).

Here stage 2 is ``PruneVid.inner_stage()`` (None with ``question_guided=False``: stage 1 alone, as LightCompress
runs it): a ``PruneVidLLM`` with budget ``alpha`` at the input of layer ``selected_layer + 1``, which the
``two_stages`` point runs on the tokens stage 1 kept, in its order; it groups them by stage 1's sizes, which it
reads from stage 1's reduction (``VideoTokens.outer``). Its ``importance`` is the authors' attention
(``importance_queries = "after_video"``, ``sttm.adapters.attention.after_video_attention``), read at the input of
layer ``selected_layer``: the queries are the prompt's tokens after the last kept video token (in
LLaVA-OneVision the video's newline token, which the harness keeps as text, is one of them), the keys every prompt
token but padding, in float32 (the authors multiply in the model's dtype and round the weights to it, so near-ties
may rank otherwise; their ``topk`` leaves exact ties open, ties here go to the lower index). The kept tokens keep
the positions stage 1 gave them. ``info`` records ``stage1_ratio`` (stage 1's kept fraction), ``stage2_ratio``
(stage 2's, of stage 1's tokens) and ``overall_ratio``; the cell's records carry the inner layer and its kept
tokens.

One departure, on the cache: the layers before ``selected_layer + 1`` keep stage 1's whole cache, where the authors cut
it to the kept tokens after the prefill (``VTPWindowCache.prompt_prefill``). The prefill is the authors' (given stage
1's tokens and positions), and so the first generated token (a whole one-letter answer); after it, a decoded token
attends at layers 0 … ``selected_layer`` to all of stage 1's video tokens, not only the kept ones, and those layers'
cache is larger than theirs. The harness cannot express their cut exactly: its reduction points make cached decoding
equal a forward without a cache over the prompt and the generated tokens, and in such a forward the generated tokens
would need, at layers 0 … ``selected_layer``, a mask made from the attention of layer ``selected_layer``, which is only
known once those layers have run; so the authors' decoding is not one forward over the whole sequence. (Masking the
dropped columns in cached decoding alone would give their tokens but break that equality.)

On a GPU, the frames' clustering (the first step: some sixty short ops on [T, C] frame means) is replayed from a
CUDA graph once a shape has been seen twice (``sttm.graphs``; the same kernels, so the same labels);
``cuda_graphs=False`` launches it op by op.

The reducer ``prunevid_llm`` runs stage 2 alone at the ``llm_layer`` point on the whole grid: every frame is one
group of dynamic tokens, ranked by the same attention, and its budget is alpha.
"""

from __future__ import annotations

import bisect
import functools
import math
from dataclasses import replace
from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F

from baselines import products
from sttm.api import (
    RankedInLLM,
    Reducer,
    Reduction,
    Stage,
    VideoTokens,
    check_budget,
    keep_everything,
    keep_subset,
    patch_boxes,
    register,
)
from sttm.graphs import Captures, replayed
from sttm.transfer import to_device

VARIANTS = ("official", "corrected")

#: the authors' scale of the density tie-break noise in DPC-kNN
NOISE_SCALE = 1e-6


def dpc_knn(
    x: torch.Tensor,
    valid: torch.Tensor,
    num_clusters: list[int],
    k: int,
    noise: torch.Tensor | None = None,
    tensor_cores: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Cluster the valid tokens of each row with DPC-kNN, as the authors' ``cluster_dpc_knn`` clusters one set.

    x: [B, N, C] tokens; valid: [B, N] bool, the members of each row's set (the rest is padding); num_clusters: [B]
    clusters per row (from 1 to its members); noise: [B, N] uniform draws in [0, 1) whose ``1e-6`` multiple is
    added to the densities (the authors' tie-break), or None for deterministic ties (the lower index).

    Distances are :func:`baselines.products.pairwise_distances` (``tensor_cores`` as there); a token's density is
    ``exp(−mean of its k smallest squared distances)`` (itself included); its score is the density times the distance
    to the nearest denser token (the largest distance of the set for the densest). The ``m`` best scores are the
    centres, and every token joins its nearest centre (the first in centre order on a tie), a centre itself.

    Returns centres [B, M] (M = max clusters): token indices in descending score order, −1 past a row's count; and
    assignment [B, N]: the rank of each member's centre, −1 for padding.
    """
    batch, size, _ = x.shape
    if not 1 <= k <= size:
        raise ValueError(f"k must lie in [1, {size}] (the nearest neighbours of a token), got {k}")
    if min(num_clusters) < 1:
        raise ValueError(f"every row needs at least one cluster, got num_clusters {num_clusters}")
    count = max(num_clusters)
    invalid = ~valid
    dist = products.pairwise_distances(x, tensor_cores)  # [B, N, N]
    nearest = dist.masked_fill(invalid[:, None, :], torch.inf).topk(k, dim=-1, largest=False).values
    density = (-(nearest**2).mean(dim=-1)).exp()
    if noise is not None:
        density = density + noise * NOISE_SCALE
    density = density.masked_fill(invalid, -torch.inf)
    denser = density[:, None, :] > density[:, :, None]  # [b, i, j]: j is denser than i
    if noise is None:
        index = torch.arange(size, device=x.device)
        denser |= (density[:, None, :] == density[:, :, None]) & (index[None, :] < index[:, None])
    largest = torch.where(valid[:, :, None] & valid[:, None, :], dist, 0).flatten(1).amax(dim=1)[:, None, None]
    score = (torch.where(denser, dist, largest).amin(dim=-1) * density).masked_fill(invalid, -torch.inf)
    if noise is None:
        centres = score.sort(dim=1, descending=True, stable=True).indices[:, :count]
    else:
        centres = score.topk(count, dim=1).indices
    to_centre = dist.gather(1, centres[:, :, None].expand(batch, count, size))  # [B, M, N]
    to_centre.scatter_(2, centres[:, :, None], -1.0)  # a centre is nearer to itself than to any other
    if min(num_clusters) == count:
        return centres, to_centre.argmin(dim=1).masked_fill(invalid, -1)
    past = torch.arange(count, device=x.device) >= to_device(num_clusters, x.device, torch.long)[:, None]  # [B, M]
    assignment = to_centre.masked_fill_(past[:, :, None], torch.inf).argmin(dim=1)
    return centres.masked_fill(past, -1), assignment.masked_fill(invalid, -1)


def frame_labels(
    wanted: int, k: int, tensor_cores: bool, means: torch.Tensor, noise: torch.Tensor | None = None
) -> torch.Tensor:
    """[T, C] frame means -> [T] int64: the DPC-kNN cluster of each frame (:func:`dpc_knn` into ``wanted``
    clusters, k neighbours; ``noise`` [1, T] or None)."""
    everyone = torch.ones(1, len(means), dtype=torch.bool, device=means.device)
    return dpc_knn(means[None], everyone, [wanted], k, noise, tensor_cores)[1][0]


#: CUDA graphs of the frames' clustering, whose shapes are a video's [T, C], the same for every video of a model:
#: some sixty short ops the host would otherwise launch one by one (``sttm.graphs``).
FRAME_CLUSTERING = Captures(size=2)


def cluster_means(x: torch.Tensor, assignment: torch.Tensor, count: int) -> tuple[torch.Tensor, torch.Tensor]:
    """[B, N, C] tokens, [B, N] cluster of each (−1: none) -> ([B, count, C] mean of each cluster in x's dtype,
    [B, count] int64 members); an empty cluster's mean is 0."""
    members = (assignment[..., None] == torch.arange(count, device=x.device)).to(x.dtype)  # [B, N, count]
    sizes = members.sum(dim=1)
    return members.transpose(1, 2) @ x / sizes.clamp(min=1)[..., None], sizes.long()


def temporal_segments(labels: list[int]) -> list[int]:
    """[T] cluster label of each frame -> the lengths of the contiguous segments they become (summing to T).

    The authors' ``refine_clusters`` then ``segment_lengths``: per label only its longest runs survive (every run of
    that length; none when it is one frame); each stretch of removed frames, left to right, joins the longer of the
    blocks beside it (the left one on a tie), label 0 when all frames were removed; equal neighbours merge.
    """
    runs: list[list[int]] = []  # [label, length]
    for label in labels:
        if runs and runs[-1][0] == label:
            runs[-1][1] += 1
        else:
            runs.append([label, 1])
    longest: dict[int, int] = {}
    for label, length in runs:
        longest[label] = max(longest.get(label, 0), length)
    survives = [length == longest[label] > 1 for label, length in runs]
    blocks: list[list[int]] = []

    def append(label: int, length: int) -> None:
        if blocks and blocks[-1][0] == label:
            blocks[-1][1] += length
        else:
            blocks.append([label, length])

    index = 0
    while index < len(runs):
        if survives[index]:
            append(*runs[index])
            index += 1
            continue
        end, removed = index, 0
        while end < len(runs) and not survives[end]:
            removed += runs[end][1]
            end += 1
        left_label, left_length = blocks[-1] if blocks else (None, 0)
        right_label, right_length = runs[end] if end < len(runs) else (None, 0)
        if left_length > right_length or (left_length == right_length and left_label is not None):
            label = left_label
        else:
            label = right_label
        append(0 if label is None else label, removed)
        index = end
    return [length for _, length in blocks]


def segment_statistics(frames: torch.Tensor, lengths: list[int], tau: float) -> tuple[torch.Tensor, torch.Tensor]:
    """[T, L, C] tokens, segment lengths [S] -> ([S, L] bool static slots, [S, L, C] segment means).

    A slot is static when its tokens' cosine similarity, averaged over the pairs of distinct frames of the segment,
    exceeds ``tau``; a one-frame segment has none. As the authors, that sum is the one over all ordered pairs minus
    one per frame (a unit vector's similarity to itself), here ``|Σ unit vectors|² − w``. Sums in float32 or wider;
    means in the tokens' dtype.
    """
    steps, area, channels = frames.shape
    wide = frames.to(torch.promote_types(frames.dtype, torch.float32))
    segment = np.repeat(np.arange(len(lengths)), lengths)
    membership = to_device(segment[None, :] == np.arange(len(lengths))[:, None], frames.device, wide.dtype)
    unit_sums = (membership @ F.normalize(wide, dim=-1).reshape(steps, -1)).reshape(-1, area, channels)
    width = membership.sum(dim=1)[:, None]
    static = ((unit_sums.square().sum(dim=-1) - width) / (width * (width - 1)) > tau) & (width > 1)
    means = (membership @ wide.reshape(steps, -1)).reshape(-1, area, channels) / width[..., None]
    return static, means.to(frames.dtype)


def ragged(lengths: list[int]) -> tuple[np.ndarray, np.ndarray]:
    """Lengths [R] -> (row, column) of every entry of R rows of those lengths, row by row."""
    lengths = np.asarray(lengths, dtype=np.int64)
    row = np.repeat(np.arange(len(lengths)), lengths)
    return row, np.arange(len(row)) - np.repeat(np.cumsum(lengths) - lengths, lengths)


def clusters_per_set(sizes: list[int], cluster_ratio: float, max_unclustered: int) -> list[int]:
    """The authors' cluster counts: ``int(n · cluster_ratio)`` for a set of more than ``max_unclustered`` tokens, 0
    (not clustered) for the others."""
    return [int(size * cluster_ratio) if size > max_unclustered else 0 for size in sizes]


def cluster_ratio_for_budget(
    sizes: list[int], budget: float, num_tokens: int, max_unclustered: int
) -> tuple[float, float]:
    """(cluster ratio, floor) for sets of ``sizes`` and a budget of ``budget · num_tokens`` tokens.

    The ratio is the smallest that keeps the most tokens not above the budget while giving every clustered set at
    least one cluster; when none stays within the budget, the smallest such ratio. The floor is the kept fraction
    of that smallest ratio (of the sizes alone when no set is clustered, the ratio then being the budget).
    """
    clustered = [size for size in sizes if size > max_unclustered]
    whole = sum(size for size in sizes if size <= max_unclustered)
    if not clustered:
        return budget, whole / num_tokens
    distinct, repeats = np.unique(clustered, return_counts=True)
    candidates = np.unique(np.concatenate([np.arange(1, n + 1) / n for n in distinct]))

    def kept(index: int) -> int:  # grows with the ratio, as does the number of sets given a cluster
        return whole + int(np.floor(distinct * candidates[index]) @ repeats)

    smallest = int(np.argmax(np.floor(distinct[0] * candidates) >= 1))  # the first giving every set a cluster
    floor = kept(smallest) / num_tokens
    target = math.floor(budget * num_tokens + 1e-9)
    last = bisect.bisect_right(range(len(candidates)), target, lo=smallest, key=kept) - 1
    if last < smallest:
        return float(candidates[smallest]), floor
    first = bisect.bisect_left(range(len(candidates)), kept(last), lo=smallest, hi=last, key=kept)
    return float(candidates[first]), floor


def question_guided_keep(
    attention: torch.Tensor,
    alpha: float,
    static_sizes: list[int],
    dynamic_sizes: list[int],
    window_sizes: list[int],
) -> torch.Tensor:
    """The video tokens stage 2 keeps: [K] int64 indices among the N, ascending.

    attention: [..., N] attention paid to the N video tokens (the authors': [heads, Q, N], every query after the
    video, at layer ``selected_layer``), reduced by its max over every leading dimension. The tokens are stage 1's,
    in its order: per segment ``static_sizes[i]`` static tokens, then ``window_sizes[i]`` frames of
    ``dynamic_sizes[i] / window_sizes[i]`` dynamic tokens each. Each of those groups keeps the ``int(size · alpha)``
    most attended of its tokens (ties to the lower index; the authors' ``topk`` leaves them open).
    """
    if not 0.0 < alpha <= 1.0:
        raise ValueError(f"alpha must lie in (0, 1] (the kept fraction of each group), got {alpha}")
    if not len(static_sizes) == len(dynamic_sizes) == len(window_sizes):
        raise ValueError(
            f"static_sizes, dynamic_sizes and window_sizes must have one entry per segment, got lengths "
            f"{len(static_sizes)}, {len(dynamic_sizes)} and {len(window_sizes)}"
        )
    groups = []
    for static, dynamic, frames in zip(static_sizes, dynamic_sizes, window_sizes, strict=True):
        if frames < 1 or dynamic % frames:
            raise ValueError(f"a segment of {frames} frames cannot hold {dynamic} dynamic tokens in equal frames")
        groups += [static] + [dynamic // frames] * frames
    scores = attention.reshape(-1, attention.shape[-1]).amax(dim=0)
    if sum(groups) != len(scores):
        raise ValueError(f"the segments hold {sum(groups)} video tokens but attention is paid to {len(scores)}")
    width = max(groups)
    row, column = ragged(groups)
    sources = np.full(len(groups) * width, len(scores))  # each group a row, padded with the −inf after the scores
    sources[row * width + column] = np.arange(len(scores))
    kept_row, kept_rank = ragged([int(size * alpha) for size in groups])
    fields = [sources, kept_row * width + kept_rank, (np.cumsum(groups) - groups)[kept_row]]
    packed = to_device(np.concatenate(fields), scores.device, torch.long)
    sources, kept_places, kept_first = packed.split([f.size for f in fields])
    padded = F.pad(scores, (0, 1), value=-torch.inf)[sources].view(len(groups), width)
    ranked = padded.sort(dim=1, descending=True, stable=True).indices  # each group's, most attended first
    return (ranked.view(-1)[kept_places] + kept_first).sort().values


class TokenSets(NamedTuple):
    """Stage 1's non-empty sets in the authors' order (per segment its static set, then each of its frames' dynamic
    set), as host arrays. Per set [G]: ``static``, ``segment``, ``row`` (of the segment means or of the frames),
    ``frame`` (the first it stands for), ``span`` (the frames it stands for) and ``size``; ``slots`` [G, L], its
    members in raster order, then its row's other slots. Per grid patch [T·L]: ``patch_set``, the set it is in, and
    ``patch_rank``, its rank there."""

    static: np.ndarray
    segment: np.ndarray
    row: np.ndarray
    frame: np.ndarray
    span: np.ndarray
    size: np.ndarray
    slots: np.ndarray
    patch_set: np.ndarray
    patch_rank: np.ndarray


def token_sets(lengths: list[int], static: np.ndarray) -> TokenSets:
    """Stage 1's sets from the segment lengths [S] and the static slots [S, L] (bool)."""
    segments = len(lengths)
    lengths = np.asarray(lengths, dtype=np.int64)
    first = np.cumsum(lengths) - lengths  # each segment's first frame
    frame_segment = np.repeat(np.arange(segments), lengths)
    segment = np.repeat(np.arange(segments), lengths + 1)  # every set, empty ones too
    static_set = first + np.arange(segments)
    is_static = np.zeros(len(segment), dtype=bool)
    is_static[static_set] = True
    frame = np.where(is_static, first[segment], np.arange(len(segment)) - segment - 1)
    masks = static[segment] == is_static[:, None]  # [S + T, L]
    patch_static = static[frame_segment]  # [T, L]
    dynamic_set = np.arange(len(frame_segment)) + frame_segment + 1  # each frame's
    patch_set = np.where(patch_static, static_set[frame_segment, None], dynamic_set[:, None])
    patch_rank = np.where(patch_static, patch_static.cumsum(axis=1), (~patch_static).cumsum(axis=1)) - 1
    size = masks.sum(axis=1)
    kept = size > 0
    renumbered = np.cumsum(kept) - 1
    return TokenSets(
        static=is_static[kept],
        segment=segment[kept],
        row=np.where(is_static, segment, frame)[kept],
        frame=frame[kept],
        span=np.where(is_static, lengths[segment], 1)[kept],
        size=size[kept],
        slots=(~masks[kept]).argsort(axis=1, kind="stable"),
        patch_set=renumbered[patch_set].ravel(),
        patch_rank=patch_rank.ravel(),
    )


class BatchLayout(NamedTuple):
    """Where stage 1's sets sit in the one padded batch [G, W, C] that DPC-kNN and the cluster means run on: the R
    clustered sets first, then the others, each a row of its members, then others of its source row (real tokens,
    so that padding stays finite). Host arrays: ``clusters`` [R] of each clustered row; ``slots`` [G, W], each
    entry's flat grid patch (a static set's at its segment's first frame); ``static_entries`` [E] the flat [G, W]
    entries of the static sets' rows and ``static_sources`` [E] their rows in the segment means [S·L]; ``sizes``
    [G]; ``span`` [G]; ``pick`` [N], each output token's flat [G, M] (set, cluster) place; ``places`` [G·M], the
    output token at each place (−1: none); ``patch_entries`` [T·L], each grid patch's flat [G, W] entry and
    ``patch_places`` [T·L], its row's first flat [G, M] place. M is ``most``, the most tokens a set becomes."""

    clusters: list[int]
    width: int
    most: int
    slots: np.ndarray
    static_entries: np.ndarray
    static_sources: np.ndarray
    sizes: np.ndarray
    span: np.ndarray
    pick: np.ndarray
    places: np.ndarray
    patch_entries: np.ndarray
    patch_places: np.ndarray


def batch_layout(sets: TokenSets, clusters: np.ndarray, area: int) -> BatchLayout:
    """The batch of ``sets``, ``clusters`` [G] per set (0: kept whole), grids of ``area`` = H·W slots a frame."""
    clustered = clusters > 0
    order = np.concatenate([np.flatnonzero(clustered), np.flatnonzero(~clustered)])  # each row's set
    row = np.argsort(order)  # each set's row
    width = int(sets.size.max())
    counts = np.where(clustered, clusters, sets.size)
    most = int(counts.max())
    slots = sets.slots[order, :width]
    static_rows = np.flatnonzero(sets.static[order])
    token_set, token_rank = ragged(counts)  # the output, set by set
    pick = row[token_set] * most + token_rank
    places = np.full(len(order) * most, -1, dtype=np.int64)
    places[pick] = np.arange(len(pick))
    patch_row = row[sets.patch_set]
    return BatchLayout(
        clusters=clusters[order[: clustered.sum()]].tolist(),
        width=width,
        most=most,
        slots=sets.frame[order, None] * area + slots,
        static_entries=(static_rows[:, None] * width + np.arange(width)).ravel(),
        static_sources=(sets.row[order][static_rows, None] * area + slots[static_rows]).ravel(),
        sizes=sets.size[order],
        span=sets.span[order],
        pick=pick,
        places=places,
        patch_entries=patch_row * width + sets.patch_rank,
        patch_places=patch_row * most,
    )


def cluster_noise(draws: torch.Tensor, sizes: list[int], width: int) -> torch.Tensor:
    """[R, width] the authors' density noise of R clustered sets of ``sizes``: the first Σ sizes of ``draws``, one
    set after the other, as the authors draw them (a call a set, of ``size`` draws, takes the same stream); 0 on
    padding."""
    row, column = ragged(sizes)
    noise = torch.zeros(len(sizes) * width)
    return noise.index_copy_(0, torch.from_numpy(row * width + column), draws[: len(row)]).view(len(sizes), width)


def merge(
    frames: torch.Tensor,
    means: torch.Tensor,
    layout: BatchLayout,
    k: int,
    noise: torch.Tensor | None,
    tensor_cores: bool = True,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Stage 1's output in the authors' order, from the frames [T, L, C] and the segment means [S, L, C]: [N, C]
    tokens, [N] flat slots, [N] patches each stands for and [T·L] the token each patch went into (each token is the
    plain mean of its patches).

    The clustered rows go through :func:`dpc_knn` together (``noise`` [R, W] or None); a row kept whole is its own
    clusters, one per member, in raster order, and the cluster means of every row make the tokens.
    """
    device, channels = frames.device, frames.shape[2]
    rows, width, most, clustered = len(layout.sizes), layout.width, layout.most, len(layout.clusters)
    entries = np.arange(width)
    fields = [layout.slots, layout.static_entries, layout.static_sources, layout.sizes[:clustered], layout.span,
              layout.pick, layout.places, layout.patch_entries, layout.patch_places,
              np.where(entries < layout.sizes[clustered:, None], entries, -1)]  # fmt: skip
    packed = to_device(np.concatenate([field.ravel() for field in fields]), device, torch.long)
    slots, static_entries, static_sources, sizes, span, pick, places, patch_entries, patch_places, singles = (
        packed.split([f.size for f in fields])
    )
    batch = frames.reshape(-1, channels)[slots]
    if len(static_entries):
        batch[static_entries] = means.reshape(-1, channels)[static_sources]
    batch, slots = batch.view(rows, width, channels), slots.view(rows, width)
    assignment = singles.view(-1, width)  # a row kept whole: each member its own cluster
    centres = torch.arange(most, device=device).expand(rows - clustered, most)
    if clustered:
        valid = torch.arange(width, device=device) < sizes[:, None]
        found, joined = dpc_knn(batch[:clustered], valid, layout.clusters, k, noise, tensor_cores)
        assignment = torch.cat([joined, assignment])
        centres = torch.cat([F.pad(found.clamp(min=0), (0, most - found.shape[1])), centres])
    tokens, members = cluster_means(batch, assignment, most)
    return (
        tokens.reshape(-1, channels)[pick],
        slots.gather(1, centres).reshape(-1)[pick],
        (members * span[:, None]).reshape(-1)[pick],
        places[patch_places + assignment.reshape(-1)[patch_entries]],
    )


@register("prunevid")
class PruneVid(Reducer):
    """PruneVid's stage 1 (Huang et al., ACL 2025 Findings): static slots merged over time, DPC-kNN in space."""

    stage = Stage.PRE_LLM
    query_aware = False

    def __init__(
        self,
        budget: float = 0.5,
        cluster_ratio: float | None = None,
        tau: float = 0.8,
        temporal_segment_ratio: float = 0.25,
        k: int = 7,
        max_unclustered: int = 14,
        variant: str = "official",
        seed: int = 0,
        question_guided: bool = True,
        selected_layer: int = 10,
        alpha: float = 0.4,
        cuda_graphs: bool = True,
        tensor_cores: bool = True,
    ) -> None:
        self.budget = check_budget(budget)
        if cluster_ratio is not None and not 0.0 < cluster_ratio <= 1.0:
            raise ValueError(f"cluster_ratio must lie in (0, 1] (clusters per token of a set), got {cluster_ratio}")
        if not 0.0 < temporal_segment_ratio <= 1.0:
            raise ValueError(
                f"temporal_segment_ratio must lie in (0, 1] (clusters per frame), got {temporal_segment_ratio}"
            )
        if not 1 <= k <= max_unclustered + 1:
            raise ValueError(f"k must lie in [1, max_unclustered + 1] = [1, {max_unclustered + 1}], got {k}")
        if variant not in VARIANTS:
            raise ValueError(f"unknown variant {variant!r}; choose one of: {', '.join(VARIANTS)}")
        if selected_layer < 0:
            raise ValueError(f"selected_layer must be >= 0 (a decoder layer), got {selected_layer}")
        self.cluster_ratio, self.tau, self.temporal_segment_ratio = cluster_ratio, tau, temporal_segment_ratio
        self.k, self.max_unclustered, self.variant, self.seed = k, max_unclustered, variant, seed
        self.selected_layer, self.alpha, self.cuda_graphs = selected_layer, alpha, bool(cuda_graphs)
        self.tensor_cores = bool(tensor_cores)
        self.inner = PruneVidLLM(budget=alpha, layer=selected_layer + 1) if question_guided else None

    def inner_stage(self) -> PruneVidLLM | None:
        """Stage 2, the question-guided selection inside the LLM, or None where ``question_guided`` is off."""
        return self.inner

    def knobs(self) -> dict:
        inner = None if self.inner is None else {"selected_layer": self.selected_layer, "alpha": self.alpha}
        return {"tau": self.tau, "temporal_segment_ratio": self.temporal_segment_ratio, "k": self.k,
                "max_unclustered": self.max_unclustered, "variant": self.variant, "seed": self.seed,
                "question_guided": inner}  # fmt: skip

    def reduce(self, video: VideoTokens) -> Reduction:
        if self.cluster_ratio is None and self.budget == 1.0:
            return replace(keep_everything(video), info={**self.knobs(), "cluster_ratio": None})
        t, h, w, c = video.grid.shape
        area, device = h * w, video.grid.device
        wanted = max(1, int(t * self.temporal_segment_ratio))
        frames = video.grid.reshape(t, area, c)
        generator = torch.Generator().manual_seed(self.seed) if self.variant == "official" else None
        noise = None if generator is None else to_device(torch.rand(1, t, generator=generator), device, torch.float)
        k, frame_means = min(self.k, t), frames.mean(dim=1)
        args = (frame_means,) if noise is None else (frame_means, noise)
        labels = replayed(FRAME_CLUSTERING, (wanted, k, self.tensor_cores),
                          functools.partial(frame_labels, wanted, k, self.tensor_cores), *args,
                          enabled=self.cuda_graphs)  # fmt: skip
        lengths = temporal_segments(labels.tolist())
        static, means = segment_statistics(frames, lengths, self.tau)
        # the sets' noise, at most a draw a patch, drawn while the device works
        draws = None if generator is None else torch.rand(t * area, generator=generator)
        sets = token_sets(lengths, static.cpu().numpy())
        sizes = sets.size.tolist()
        ratio, floor = self.cluster_ratio, None
        if ratio is None:
            ratio, floor = cluster_ratio_for_budget(sizes, self.budget, t * area, self.max_unclustered)
        clusters = np.array(clusters_per_set(sizes, ratio, self.max_unclustered), dtype=np.int64)
        empty = [n for n, m in zip(sizes, clusters, strict=True) if n > self.max_unclustered and not m]
        if empty:
            raise ValueError(
                f"cluster_ratio {ratio} gives a set of {empty[0]} tokens no cluster (the authors' code fails)"
            )
        layout = batch_layout(sets, clusters, area)
        noise = None
        if draws is not None and layout.clusters:
            noise = cluster_noise(draws, layout.sizes[: len(layout.clusters)].tolist(), layout.width)
            noise = to_device(noise, device, torch.float)
        tokens, slots, patches, members = merge(frames, means, layout, self.k, noise, self.tensor_cores)
        counts = np.where(clusters > 0, clusters, sets.size)
        per_segment = [np.bincount(sets.segment[kind], counts[kind], len(lengths)).astype(np.int64).tolist()
                       for kind in (sets.static, ~sets.static)]  # fmt: skip
        info = {**self.knobs(), "cluster_ratio": ratio, "floor": floor, "window_sizes": lengths,
                "static_sizes": per_segment[0], "dynamic_sizes": per_segment[1]}  # fmt: skip
        return Reduction(tokens, patch_boxes(slots, h, w), patches, video.num_tokens, info=info, members=members)


def stage_two_groups(video: VideoTokens) -> tuple[list[int], list[int], list[int]]:
    """The groups stage 2 keeps a share of, as :func:`question_guided_keep` takes them (static, dynamic and window
    sizes): stage 1's sets where the grid is the tokens it kept (``video.outer``), otherwise each frame's tokens
    (stage 2 alone, or after a stage 1 that kept every token, in raster order)."""
    outer = video.outer
    if outer is not None and "static_sizes" in outer.info:
        return outer.info["static_sizes"], outer.info["dynamic_sizes"], outer.info["window_sizes"]
    frames = len(video.grid) if outer is None else len(outer.boxes[:, 0].unique())
    return [0], [video.num_tokens], [frames]


@register("prunevid_llm")
class PruneVidLLM(RankedInLLM):
    """PruneVid's stage 2 inside the LLM: per group (stage 1's static set of a segment, or one frame's dynamic
    tokens), the video tokens the prompt after the video attends to most at layer ``layer`` − 1."""

    importance_queries = "after_video"

    def __init__(self, budget: float = 0.4, layer: int = 11) -> None:
        super().__init__(budget, layer)

    def reduce(self, video: VideoTokens) -> Reduction:
        kept = question_guided_keep(video.importance.reshape(-1), self.budget, *stage_two_groups(video))
        outer = video.outer
        received = video.num_tokens if outer is None else outer.num_input
        info = {"alpha": self.budget, "selected_layer": self.layer - 1,
                "stage1_ratio": None if outer is None else outer.kept_ratio,
                "stage2_ratio": len(kept) / video.num_tokens, "overall_ratio": len(kept) / received}  # fmt: skip
        return keep_subset(video, kept.to(video.grid.device), info=info)
