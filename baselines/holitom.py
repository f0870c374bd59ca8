"""HoliTom: holistic token merging for video LLMs, before the LLM (temporal and spatial) and inside it.

Paper: Shao et al., "HoliTom: Holistic Token Merging for Fast Video Large Language Models", NeurIPS 2025 (arXiv
2505.21334). Reference code: github.com/cokeshao/HoliTom at commit e9b2972f6895c9e7d7fe74eb8c3a2ecaab8056e0:
``holitom/llava_arch.py``, class ``LlavaMetaForCausalLM_holitom`` (``select_static_windows``,
``get_static_dynamic_features``, ``merge_tokens_by_attention_density``, ``merge_tokens_by_density``,
``cluster_dpc_knn``, ``merge_tokens_by_clustering``, ``holitom``, ``add_newline_token`` and the video branch of
``prepare_inputs_labels_for_multimodal``), and ``holitom/modeling_qwen2.py``, ``Qwen2Model_holitom.forward`` (the
merge inside the LLM).

Before the LLM (:class:`HoliTom`, ``Stage.VISION``: it reads the attention each patch receives in the vision tower's
last kept layer, pooled like the features, as ``importance``). With x[t, p] the feature of frame t at slot p:

1. A slot is static between frames t and t+1 when the cosine of x[t, p] and x[t+1, p] exceeds τ (strictly).
2. The video is cut into segments by dynamic programming: a segment [s, e] saves (e − s) tokens per slot static
   over all its frames, and the cut maximises the saving. A longer window replaces the best so far only when it
   saves strictly more, so ties keep the frame alone or the shorter window.
3. The retain ratio r is raised to r' = min(r · T·L / (T·L − saved), 1), so that the tokens left meet r overall.
4. In each segment, a slot static over all its frames is averaged over them; the other slots stay per frame. Each
   frame keeps its ``ceil(r' · n_dynamic)`` dynamic slots of most importance, in slot order. The segment's
   ``round(r' · n_static)`` static tokens (Python ``round``: half to even) are chosen among the averaged ones by
   DPC-kNN (density from the k = min(K, m) nearest, the point itself included; distance to the nearest denser
   point; the top m of their product become centres, in slot order); every other averaged token joins its nearest
   centre, and a centre with members becomes ``β · centre + (1 − β) · mean(members)``.
5. Order: per segment, its static tokens, then each frame's dynamic tokens (``one_token``, LLaVA-OneVision, whose
   single ``image_newline`` after the video is the model's); or every frame's tokens in slot order, the static
   ones in the segment's first frame (``grid``, LLaVA-Video, with a newline after every grid row that has a token:
   :func:`row_newlines`, :func:`insert_newlines`).

A static token sits in the slot of its centre in the segment's first frame; a dynamic token in its own slot.
``num_patches`` counts the input slots averaged into a token (a static token: frames × (1 + members)); dropped
dynamic slots are in no token. ``members`` and ``member_weights`` give each token as a weighted sum of the grid's
slots (a dynamic token: its slot; a static one over its segment's w frames: β / w on each of its centre's slots, 1 / w
without members, and (1 − β) / (m · w) on each of its m members'), so that other values of the same slots
(Qwen3-VL's DeepStack features) merge alike (``sttm.api.reduce_like``); inside the LLM, a kept token weighs itself
1 / 2^n and its j-th of n members 1 / 2^(n − j + 1) (official), or all 1 / (n + 1) (corrected).

The authors add ``rand · 1e-6`` to the densities to break ties; here ties break deterministically, the lower slot
counting as the denser, which is their result when the noise favours lower slots.
Ties are not rare: at k = m = 1 every density is 1, and at k = 2 every pair of mutual nearest neighbours ties, so
there the authors' centres depend on their RNG. Similarities and means are computed in float32 and the tokens cast back
to the grid's dtype (the authors compute in the model's dtype). Their ``D`` (share of "contextual" dynamic
tokens) crashes for D > 0 in their code, so only their default D = 0 exists here; ``NO_BETA`` is unset in their
runs, which means the β blend (the log line that prints ``NO_BETA: 1`` reads another default).

Inside the LLM (:class:`HoliTomInner`, ``Stage.LLM_LAYER``, layer k = 18 by default): during prefill, before decoder
layer k, the ``round(n · (1 − r))`` visual tokens that the last prompt token attends to most at layer k − 1 (mean
over heads) are kept; every other visual token, in position order, is merged into its most cosine-similar kept
token (similarities of layer k − 1's output, i.e. layer k's input, computed once before any merge) by
``h[kept] = (h[kept] + h[other]) / 2``, in sequence: a running pairwise average. Kept tokens keep their original
positions. The authors' image span includes the model's newline tokens; the harness hands the grid alone.

Budget. The outer budget is the authors' ``RETAIN_RATIO`` r itself, the fraction of visual tokens kept before the
LLM. The count is Σ_segments Σ_frames ``ceil(r' · n_dynamic)`` + ``round(r' · n_static)``: close to r·T·L (a few
tokens above, from the ceilings), but fewer where r' clamps at 1 (a video mostly static). τ (their ``T``) follows
the authors' scripts unless given: 0.65 at r ≤ 0.10, 0.80 above (their pairs: 0.10/0.65, 0.15, 0.20 and 0.25 with
0.80). Budget 1.0 returns every token unchanged (the authors' code at r = 1 still averages the static slots over
their segments). The inner stage's knobs ``inner_layer`` (their ``HOLITOM_k``) and ``inner_keep`` (1 − their
``HOLITOM_r``: the kept fraction of the visual tokens entering layer k) are read by the wiring of the two stages
(:meth:`HoliTom.inner_stage`); the outer reducer alone acts before the LLM only. ``inner_merge=False`` is the
authors' "HoliTom (w/o M)". Every ``Reduction.info`` records the authors' knobs by their names.

``variant="corrected"`` drops these quirks of the authors' code:

* the dynamic count rounds like the static one (``round(r' · n_dynamic)``, half to even), so the kept count no
  longer sits up to one token per frame above the budget;
* the density of DPC-kNN uses the K nearest points (k = min(K, n_static)), not k = min(K, m), which ties the
  neighbourhood to the number of clusters asked for (at m <= 2 the densities tie and the authors' noise picks);
* in ``grid`` mode a newline ends each row of W slots; the authors use rows of ``int(sqrt(H·W))``, which puts
  newlines in the wrong places on a non-square grid and loses the tokens past its last row (the official variant
  refuses such grids);
* inside the LLM, a kept token becomes the mean of itself and its members, not a running pairwise average that
  halves the weight of each earlier member, and every batch row ranks by its own attention (the authors use batch
  row 0's for all).
"""

from __future__ import annotations

from dataclasses import replace
from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F

from sttm.api import (
    RankedInLLM,
    Reducer,
    Reduction,
    Stage,
    VideoTokens,
    check_budget,
    flat_positions,
    keep_everything,
    patch_boxes,
    register,
)

VARIANTS = ("official", "corrected")
NEWLINE_POSITIONS = ("one_token", "grid")


def check_variant(variant: str) -> str:
    if variant not in VARIANTS:
        raise ValueError(f"variant must be one of {VARIANTS}, got {variant!r}")
    return variant


def tau_for_budget(budget: float) -> float:
    """The similarity threshold τ the authors' scripts pair with a retain ratio: 0.65 at 10% and below, else 0.80."""
    return 0.65 if budget <= 0.10 else 0.80


def frame_similarity(frames: torch.Tensor) -> torch.Tensor:
    """[T, L, C] -> [T − 1, L] float32: cosine of each slot with the same slot of the next frame, as the authors
    compute it: ``F.cosine_similarity`` of ``F.normalize``'s output. Both normalisations divide one float32 copy of
    the frames in place, each frame once (``F.cosine_similarity`` would normalise the inner frames twice)."""
    if frames.dim() != 3:
        raise ValueError(f"frames must have shape [T, L, C], got {tuple(frames.shape)}")
    unit = frames.to(torch.float32, copy=True)
    for eps in (1e-12, 1e-8):  # F.normalize's, then F.cosine_similarity's
        unit /= torch.linalg.vector_norm(unit, dim=-1, keepdim=True).clamp_min_(eps)
    return (unit[:-1] * unit[1:]).sum(dim=-1)


def static_runs(similarity: torch.Tensor, tau: float) -> torch.Tensor:
    """[T − 1, L] -> [T − 1, L] int64: for each frame pair t and slot p, the number of consecutive pairs from t on
    whose similarity exceeds τ (slot p is static over frames t … t + run)."""
    pairs = similarity.shape[0]
    pair = torch.arange(pairs, device=similarity.device)[:, None]
    breaks = torch.where(similarity > tau, pairs, pair)
    return breaks.flip(0).cummin(dim=0).values.flip(0) - pair


def static_slot_counts(runs: torch.Tensor) -> torch.Tensor:
    """[T − 1, L] runs -> [T − 1, T] int64: ``counts[s, d]`` slots static over every frame of the window [s, s + d]."""
    pairs = runs.shape[0]
    histogram = torch.zeros(pairs, pairs + 1, dtype=torch.long, device=runs.device)
    histogram.scatter_add_(1, runs, torch.ones_like(runs))
    return histogram.flip(1).cumsum(dim=1).flip(1)


def segment_frames(static_counts: np.ndarray, max_window_size: int) -> tuple[np.ndarray, int]:
    """[T − 1, T] static slot counts -> ([S, 2] segments (start, end), ends inclusive, in time order; tokens saved).

    The authors' dynamic programme: a window [s, e] saves ``(e − s) · counts[s, e − s]`` tokens; a longer window
    replaces the best so far only when it saves strictly more.
    """
    frames = static_counts.shape[0] + 1
    starts, ends = np.meshgrid(np.arange(frames - 1), np.arange(frames), indexing="xy")
    widths = ends - starts
    by_end = np.where(widths > 0, static_counts[starts, np.clip(widths, 0, frames - 1)] * widths, 0)  # [e, s]
    best = np.zeros(frames + 1, dtype=np.int64)  # best[i]: tokens saved over frames 0 … i − 1
    first = np.arange(frames)
    saves_any = (by_end > 0).any(axis=1)  # a window saving nothing never beats the frame alone
    for end in range(frames):
        best[end + 1] = best[end]
        low = max(0, end - max_window_size + 1)
        if saves_any[end] and low < end:
            saved = best[low:end] + by_end[end, low:end]  # windows [s, end] for s = low … end − 1
            shortest = saved.size - 1 - int(saved[::-1].argmax())
            if saved[shortest] > best[end]:
                best[end + 1], first[end] = saved[shortest], low + shortest
    segments, end = [], frames - 1
    while end >= 0:
        segments.append((first[end], end))
        end = first[end] - 1
    return np.array(segments[::-1], dtype=np.int64).reshape(-1, 2), int(best[frames])


def adjusted_retain_ratio(retain_ratio: float, total_tokens: int, saved: int) -> float:
    """r' = min(r / ((N − saved) / N), 1), evaluated in this form as the authors do (the counts depend on its last
    bits)."""
    return min(retain_ratio / ((total_tokens - float(saved)) / total_tokens), 1)


def keep_most_attended(attention: torch.Tensor, candidates: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
    """[T, L] attention, [T, L] bool candidates, [T] counts -> [T, L] bool: each frame's ``counts[t]`` candidates of
    highest attention (counts must not exceed the candidates)."""
    scores = attention.float().masked_fill(~candidates, -torch.inf)
    order = scores.argsort(dim=1, descending=True, stable=True)
    ranked = torch.arange(scores.shape[1], device=scores.device) < counts[:, None]
    return torch.zeros_like(candidates).scatter_(1, order, ranked)


def true_positions(mask: torch.Tensor, count: int) -> torch.Tensor:
    """A bool tensor holding ``count`` True values -> [count] int64 their flat indices, ascending: what
    ``mask.flatten().nonzero()`` gives, without the host waiting for the device to count them."""
    flat = mask.flatten()
    slot = torch.where(flat, flat.cumsum(0) - 1, count)  # every False goes to one spare slot past the end
    index = torch.arange(len(flat), device=mask.device)
    return torch.empty(count + 1, dtype=torch.long, device=mask.device).scatter_(0, slot, index)[:count]


def to_device(arrays: list[np.ndarray], device: torch.device) -> list[torch.Tensor]:
    """Host integer arrays -> int64 tensors on ``device``, in one transfer (the host waits for each transfer to a GPU
    until the work queued before it is done)."""
    joined = torch.from_numpy(np.concatenate([np.asarray(array, dtype=np.int64).ravel() for array in arrays]))
    return list(joined.to(device).split([np.size(array) for array in arrays]))


class SegmentPoints(NamedTuple):
    """The static slots of S segments, averaged over the segments' frames, padded to the longest.

    points:  [S, N, C] float32 means (zeros where padded).
    slots:   [S, N] int64 slot of each point, ascending, −1 where padded.
    valid:   [S, N] bool.
    """

    points: torch.Tensor
    slots: torch.Tensor
    valid: torch.Tensor


def segment_means(
    values: torch.Tensor, row: torch.Tensor, column: torch.Tensor, slot: torch.Tensor, lengths: torch.Tensor, width: int
) -> SegmentPoints:
    """Average the static slots of each segment over its frames.

    values [M, C] float32: the M (frame, static slot) pairs of the segments, frame by frame, each slot at point
    ``column`` [M] of segment ``row`` [M] and being grid slot ``slot`` [M]; lengths [S] frames of each segment;
    width: the most points a segment has.
    """
    segments = len(lengths)
    slots = torch.full((segments, width), -1, dtype=torch.long, device=values.device)
    slots[row, column] = slot  # each frame of a segment writes the same slots
    sums = values.new_zeros(segments, width, values.shape[-1]).index_put_((row, column), values, accumulate=True)
    return SegmentPoints(sums / lengths[:, None, None], slots, slots >= 0)


def dpc_knn_centres(
    points: torch.Tensor, valid: torch.Tensor, centres: torch.Tensor, neighbours: torch.Tensor, max_neighbours: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """DPC-kNN cluster centres of S padded point sets, as the authors' ``cluster_dpc_knn``.

    points [S, N, C], valid [S, N]; centres [S] and neighbours [S] int64, m and k of each set (1 <= k <= points,
    m <= points); max_neighbours: the largest k. Distances are Euclidean over √C; the density is exp(−mean of the k
    smallest squared distances, the point's own 0 included); a point's score is its density times its distance to
    the nearest denser point (or the set's largest distance for the densest). Equal densities count the lower index
    as denser. Returns ([S, N] bool, the m highest scores of each set; [S, N, N] distances).
    """
    sets, size, channels = points.shape
    distances = torch.cdist(points, points) / channels**0.5
    nearest = distances.masked_fill(~valid[:, None, :], torch.inf)
    nearest = nearest.topk(min(max_neighbours, size), dim=-1, largest=False).values
    within = torch.arange(nearest.shape[-1], device=points.device) < neighbours[:, None, None]
    density = (-(torch.where(within, nearest**2, 0).sum(dim=-1) / neighbours[:, None])).exp()  # [S, N]
    index = torch.arange(size, device=points.device)
    denser = (density[:, None, :] > density[:, :, None]) | (
        (density[:, None, :] == density[:, :, None]) & (index[None, :] < index[:, None])
    )  # [S, i, j]: j is denser than i
    denser &= valid[:, None, :]
    pairs = valid[:, :, None] & valid[:, None, :]
    farthest = distances.masked_fill(~pairs, -torch.inf).amax(dim=(1, 2))
    separation = torch.where(denser, distances, farthest[:, None, None]).amin(dim=-1)
    score = (separation * density).masked_fill(~valid, -torch.inf)
    order = score.argsort(dim=1, descending=True, stable=True)
    chosen = torch.zeros_like(valid).scatter_(1, order, index < centres[:, None])
    return chosen, distances


def merge_into_centres(
    points: torch.Tensor, valid: torch.Tensor, is_centre: torch.Tensor, distances: torch.Tensor, beta: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Every non-centre point joins its nearest centre (the lowest of equals); a centre with members becomes
    ``β · centre + (1 − β) · mean(members)``.

    points [S, N, C], valid and is_centre [S, N], distances [S, N, N] -> ([S, N, C] tokens, valid at the centres;
    [S, N] int64 members of each centre; [S, N] int64 the centre each point went into, itself for a centre).
    """
    sets, size, channels = points.shape
    nearest = distances.masked_fill(~is_centre[:, None, :], torch.inf).argmin(dim=-1)  # [S, N]
    target = torch.where(is_centre, torch.arange(size, device=points.device), nearest)
    member = valid & ~is_centre
    spare = sets * size  # the row past the end that centres and padding go into
    into = torch.where(member, torch.arange(sets, device=points.device)[:, None] * size + target, spare).flatten()
    sums = points.new_zeros(spare + 1, channels).index_add_(0, into, points.reshape(-1, channels))
    members = into.new_zeros(spare + 1).index_add_(0, into, torch.ones_like(into))[:spare].view(sets, size)
    means = sums[:spare].view(sets, size, channels) / members.clamp(min=1)[..., None]
    blended = beta * points + (1 - beta) * means
    return torch.where(members[..., None] > 0, blended, points), members, target


def centre_weights(is_centre: torch.Tensor, members: torch.Tensor, target: torch.Tensor, beta: float) -> torch.Tensor:
    """[S, N] float32 each point's weight in its centre's token (:func:`merge_into_centres`): β for a centre with
    members, 1 for one without, (1 − β) / its centre's members for a member."""
    own = torch.where(members > 0, beta, 1.0)
    return torch.where(is_centre, own, (1 - beta) / members.gather(1, target).clamp(min=1)).float()


def newline_row_width(height: int, width: int, variant: str = "official") -> int:
    """Slots per grid row in ``grid`` mode: the authors' ``int(sqrt(H·W))`` (official, square grids only: on others it
    mis-rows the newlines and loses the tokens past its last row), or W (corrected)."""
    if check_variant(variant) == "corrected":
        return width
    if height != width:
        raise ValueError(
            f"grid-mode newlines need a square grid in the official variant (the authors' rows are "
            f"int(sqrt(H*W)) slots long), got {height}x{width}; use variant='corrected'"
        )
    return width


def row_newlines(token_idx: torch.Tensor, height: int, width: int, variant: str = "official") -> torch.Tensor:
    """[N] flat (t, h, w) indices in grid order -> [N] bool: the tokens a newline follows in ``grid`` mode, the last
    token of each row of a frame that has one (rows of :func:`newline_row_width`)."""
    slots, row_width = height * width, newline_row_width(height, width, variant)
    row = token_idx // slots * height + token_idx % slots // row_width
    return torch.cat([row[1:] != row[:-1], torch.ones_like(row[:1], dtype=torch.bool)])


def insert_newlines(
    tokens: torch.Tensor, token_idx: torch.Tensor, after: torch.Tensor, newline: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """[N, C] tokens, [N] indices, [N] bool ``after`` and [C] newline -> the tokens with a newline after each marked
    one ([N + n, C]) and their indices, −1 for the newlines."""
    before = after.long().cumsum(0) - after.long()
    at = torch.arange(len(tokens), device=tokens.device) + before
    total = len(tokens) + int(after.sum())
    out = newline.to(tokens.dtype).expand(total, tokens.shape[1]).clone()
    out[at] = tokens
    out_idx = torch.full((total,), -1, dtype=token_idx.dtype, device=token_idx.device)
    out_idx[at] = token_idx
    return out, out_idx


def token_counts(n_static: np.ndarray, n_dynamic: np.ndarray, ratio: float, variant: str) -> tuple[np.ndarray, ...]:
    """Per segment: (dynamic tokens kept per frame, static tokens kept) for r' = ``ratio``. The authors: ``ceil``
    for the dynamic count, Python ``round`` (half to even) for the static one; the corrected variant rounds both."""
    dynamic = n_dynamic * ratio
    dynamic = np.ceil(dynamic) if variant == "official" else np.rint(dynamic)
    return dynamic.astype(np.int64), np.rint(n_static * ratio).astype(np.int64)


class HoliTomTokens(NamedTuple):
    """The outer reduction of one video: tokens [N, C] in the authors' order, token_idx [N] (flat (t, h, w) slot each
    occupies), num_patches [N], members [T·L] (the token each input slot went into, −1: none) and member_weights
    [T·L] (its weight there: each token is the weighted sum of its slots), segments [S, 2], tokens saved by the
    segmentation, r', static tokens kept [S]."""

    tokens: torch.Tensor
    token_idx: torch.Tensor
    num_patches: torch.Tensor
    members: torch.Tensor
    member_weights: torch.Tensor
    segments: np.ndarray
    saved: int
    ratio: float
    static_tokens: np.ndarray


def holitom_outer(
    frames: torch.Tensor,
    attention: torch.Tensor,
    retain_ratio: float,
    tau: float,
    beta: float = 0.6,
    neighbours: int = 7,
    max_window_size: int = 1024,
    newline_position: str = "one_token",
    variant: str = "official",
) -> HoliTomTokens:
    """HoliTom before the LLM on frames [T, L, C] with attention [T, L] (the attention each slot receives in the
    vision tower, pooled like the features); see the module docstring.

    The host waits for the device twice: for the static slot counts that the segmentation needs, and for the one
    transfer of what the segmentation decided (segment of each frame, token counts, output order); every count
    after that is known on the host, so nothing else waits."""
    if frames.dim() != 3 or tuple(attention.shape) != tuple(frames.shape[:2]):
        raise ValueError(f"HoliTom needs frames [T, L, C] and attention [T, L], got {tuple(frames.shape)} and "
                         f"{tuple(attention.shape)}")  # fmt: skip
    num_frames, slots, channels = frames.shape
    runs = static_runs(frame_similarity(frames), tau)
    counts = static_slot_counts(runs).cpu().numpy()
    segments, saved = segment_frames(counts, max_window_size)
    ratio = adjusted_retain_ratio(retain_ratio, num_frames * slots, saved)
    starts, lengths = segments[:, 0], segments[:, 1] - segments[:, 0] + 1
    multi = np.flatnonzero(lengths > 1)
    n_static = np.zeros(len(segments), dtype=np.int64)
    n_static[multi] = counts[starts[multi], lengths[multi] - 1]
    dynamic_count, static_count = token_counts(n_static, slots - n_static, ratio, variant)
    segment_of_frame = np.repeat(np.arange(len(segments)), lengths)
    clustered = np.flatnonzero(static_count > 0)
    row_of_segment = np.full(len(segments), -1)
    row_of_segment[clustered] = np.arange(clustered.size)
    centre_segment = np.repeat(np.arange(len(segments)), static_count)  # the segment of each static token
    dynamic_tokens, static_tokens = int((dynamic_count * lengths).sum()), int(static_count.sum())

    # a slot of frame t is static when its run from the segment's start spans the segment (never for a lone frame)
    window = np.where(lengths > 1, lengths - 1, num_frames)
    k = np.minimum(neighbours, static_count[clustered] if variant == "official" else n_static[clustered])
    plan = [starts[segment_of_frame], window[segment_of_frame], dynamic_count[segment_of_frame],
            row_of_segment[segment_of_frame], lengths[clustered], static_count[clustered], k,
            starts[centre_segment] * slots, lengths[centre_segment]]  # fmt: skip
    if newline_position == "one_token":  # per segment, static tokens first, then the frames' dynamic tokens
        dynamic_segment = np.repeat(segment_of_frame, dynamic_count[segment_of_frame])
        dynamic_before = np.cumsum(dynamic_count * lengths) - dynamic_count * lengths
        position = np.concatenate([np.arange(dynamic_tokens) + np.cumsum(static_count)[dynamic_segment],
                                   np.arange(static_tokens) + dynamic_before[centre_segment]])  # fmt: skip
        plan += [position, np.argsort(position)]
    (window_start, frame_window, frame_dynamic, frame_row, clustered_lengths, centres, neighbours_of_set, centre_first,
     centre_frames, *one_token_order) = to_device(plan, frames.device)  # fmt: skip

    static = F.pad(runs, (0, 0, 0, 1))[window_start] >= frame_window[:, None]  # [T, L]
    keep = keep_most_attended(attention, ~static, frame_dynamic)
    dynamic = true_positions(keep, dynamic_tokens)  # flat (t, slot), in order
    flat_frames = frames.reshape(-1, channels)
    tokens, token_idx, num_patches = [flat_frames.index_select(0, dynamic)], [dynamic], [torch.ones_like(dynamic)]
    members = torch.full((num_frames * slots,), -1, dtype=torch.long, device=frames.device)  # before the output order
    members[dynamic] = torch.arange(dynamic_tokens, device=frames.device)
    weights = keep.flatten().float()

    if clustered.size:
        patch = true_positions(static & (frame_row >= 0)[:, None], int((lengths * n_static)[clustered].sum()))
        row, slot = frame_row[patch // slots], patch % slots
        column = (static.cumsum(dim=1) - 1).flatten()[patch]  # the slot's point among its segment's
        width = int(n_static[clustered].max())
        points, point_slots, valid = segment_means(
            flat_frames.index_select(0, patch).float(), row, column, slot, clustered_lengths, width
        )
        is_centre, distances = dpc_knn_centres(points, valid, centres, neighbours_of_set, int(k.max()))
        merged, joined, target = merge_into_centres(points, valid, is_centre, distances, beta)
        centre = true_positions(is_centre, static_tokens)  # flat (segment, point), in order
        tokens.append(merged.flatten(0, 1)[centre].to(frames.dtype))
        token_idx.append(centre_first + point_slots.flatten()[centre])
        num_patches.append((joined.flatten()[centre] + 1) * centre_frames)
        # a static slot of a clustered segment goes, in each of its frames, into its point's centre's token
        token = dynamic_tokens + is_centre.flatten().cumsum(0).view_as(is_centre) - 1  # each centre's static token
        share = centre_weights(is_centre, joined, target, beta) / clustered_lengths[:, None]  # a point: a mean
        members[patch] = token[row, target[row, column]]
        weights[patch] = share[row, column]

    token_idx = torch.cat(token_idx)
    if newline_position == "grid":
        order = token_idx.argsort()
        position = torch.empty_like(order).scatter_(0, order, torch.arange(len(order), device=frames.device))
    else:
        position, order = one_token_order
    members = F.pad(position, (0, 1), value=-1)[members]  # −1 (in no token) reads the −1 at the end
    return HoliTomTokens(
        torch.cat(tokens).index_select(0, order), token_idx[order], torch.cat(num_patches)[order], members, weights,
        segments, saved, ratio, static_count,
    )  # fmt: skip


@register("holitom")
class HoliTom(Reducer):
    """HoliTom's merging before the LLM (Shao et al., NeurIPS 2025): DP temporal segments, static slots averaged and
    clustered, dynamic slots kept by vision attention."""

    stage = Stage.VISION
    needs = frozenset({"importance"})

    def __init__(
        self,
        budget: float = 0.1,
        tau: float | None = None,
        beta: float = 0.6,
        neighbours: int = 7,
        max_window_size: int = 1024,
        newline_position: str = "one_token",
        variant: str = "official",
        inner_merge: bool = True,
        inner_layer: int = 18,
        inner_keep: float = 0.5,
    ) -> None:
        self.budget = check_budget(budget)
        self.tau = tau_for_budget(self.budget) if tau is None else float(tau)
        if not -1.0 <= self.tau <= 1.0:
            raise ValueError(f"HoliTom's tau is a cosine similarity threshold in [-1, 1], got {self.tau}")
        if not 0.0 <= beta <= 1.0:
            raise ValueError(f"HoliTom's beta (the centre's weight in a static token) must lie in [0, 1], got {beta}")
        if neighbours < 1:
            raise ValueError(f"HoliTom's neighbours (K of DPC-kNN) must be >= 1, got {neighbours}")
        if max_window_size < 1:
            raise ValueError(f"HoliTom's max_window_size must be >= 1 frame, got {max_window_size}")
        if newline_position not in NEWLINE_POSITIONS:
            raise ValueError(f"newline_position must be one of {NEWLINE_POSITIONS}, got {newline_position!r}")
        self.beta, self.neighbours, self.max_window_size = beta, neighbours, max_window_size
        self.newline_position, self.variant = newline_position, check_variant(variant)
        self.inner_merge, self.inner_layer, self.inner_keep = inner_merge, inner_layer, check_budget(inner_keep)
        if inner_merge:
            self.inner_stage()  # refuses a bad layer now

    def inner_stage(self) -> HoliTomInner | None:
        """The merge inside the LLM that goes with this outer stage, or None for "HoliTom (w/o M)"."""
        if not self.inner_merge:
            return None
        return HoliTomInner(budget=self.inner_keep, layer=self.inner_layer, variant=self.variant)

    def knobs(self) -> dict:
        """The authors' knobs (their environment variables) this reducer runs with."""
        knobs = {"RETAIN_RATIO": self.budget, "T": self.tau, "BETA": self.beta, "D": 0.0, "K": self.neighbours,
                 "MAX_WINDOW_SIZE": self.max_window_size, "mm_newline_position": self.newline_position}  # fmt: skip
        if self.inner_merge:
            knobs.update(HOLITOM_k=self.inner_layer, HOLITOM_r=1 - self.inner_keep)
        return {**knobs, "variant": self.variant}

    def reduce(self, video: VideoTokens) -> Reduction:
        if self.budget == 1.0:
            return replace(keep_everything(video), info=self.knobs())
        t, h, w, c = video.grid.shape
        if self.newline_position == "grid":
            newline_row_width(h, w, self.variant)  # refuses the grids whose rows the authors get wrong
        result = holitom_outer(
            video.grid.reshape(t, h * w, c), video.importance.reshape(t, h * w), self.budget, self.tau, self.beta,
            self.neighbours, self.max_window_size, self.newline_position, self.variant,
        )  # fmt: skip
        if len(result.tokens) == 0:
            raise ValueError(
                f"HoliTom keeps no token of this {t}x{h}x{w} video at budget {self.budget}: every segment is static "
                f"and round(r' * static slots) = 0"
            )
        info = {
            **self.knobs(),
            "segments": result.segments.tolist(),
            "total_reduced": result.saved,
            "retain_ratio_adjusted": result.ratio,
            "static_tokens": int(result.static_tokens.sum()),
            "static_tokens_per_segment": result.static_tokens.tolist(),
        }
        boxes = patch_boxes(result.token_idx, h, w)
        return Reduction(result.tokens, boxes, result.num_patches, video.num_tokens, info=info,
                         members=result.members, member_weights=result.member_weights)  # fmt: skip


def inner_kept_count(length: int, merge_ratio: float) -> int:
    """The authors' kept count inside the LLM: ``round(length · (1 − r))`` (Python ``round``, half to even)."""
    return round(length * (1 - merge_ratio))


class InnerMerge(NamedTuple):
    """The merge of n visual tokens into k kept ones, for B batch rows (B' = 1 where every row uses row 0's ranking).

    states:   [B, k, C] the kept tokens after merging, in position order.
    kept:     [B', k] their positions among the n, ascending.
    dropped:  [B', n − k] the merged-away positions, ascending.
    targets:  [B, n − k] the position each dropped token was merged into.
    members:  [B, k] int64 dropped tokens merged into each kept one.
    own_weights:     [B, k] float32 each kept token's weight in its merged token (:func:`merge_weights`).
    dropped_weights: [B, n − k] float32 each dropped token's weight in the token it was merged into.
    """

    states: torch.Tensor
    kept: torch.Tensor
    dropped: torch.Tensor
    targets: torch.Tensor
    members: torch.Tensor
    own_weights: torch.Tensor
    dropped_weights: torch.Tensor


def merge_weights(flat: torch.Tensor, members: torch.Tensor, variant: str) -> tuple[torch.Tensor, torch.Tensor]:
    """The float32 weights of the inner merge: [m] the kept token each member goes into, in position order, and [k]
    the members of each -> ([k] each kept token's own weight, [m] each member's). Official (``h = (h + x) / 2`` for
    each member x in order): 1 / 2^n and 1 / 2^(n − j + 1) for the j-th of n; corrected: 1 / (n + 1) for all."""
    if variant == "corrected":
        share = 1 / (members + 1).float()
        return share, share[flat]
    order = flat.argsort(stable=True)
    first = members.cumsum(0) - members
    rank = torch.empty_like(flat).scatter_(0, order, torch.arange(len(flat), device=flat.device) - first[flat[order]])
    weight = torch.pow(2.0, -(members[flat] - rank).float())  # the last member counts 1/2, the first 1/2^n
    return torch.pow(2.0, -members.float()), weight


def average_into(kept: torch.Tensor, dropped: torch.Tensor, target: torch.Tensor, variant: str):
    """kept [B, k, C], dropped [B, m, C] in position order, target [B, m] (index among the k) -> ([B, k, C] merged,
    [B, k] members, [B, k] and [B, m] the weights of :func:`merge_weights`). The official weights are powers of two,
    the same in the tokens' dtype as in float32."""
    batch, size, channels = kept.shape
    flat = (torch.arange(batch, device=kept.device)[:, None] * size + target).flatten()
    members = torch.zeros(batch * size, dtype=torch.long, device=kept.device).index_add_(0, flat, torch.ones_like(flat))
    own, weight = merge_weights(flat, members, variant)
    sources = dropped.reshape(-1, channels)
    if variant == "corrected":
        merged = kept.reshape(-1, channels).index_add(0, flat, sources) / (members + 1)[:, None].to(kept.dtype)
    else:
        merged = (kept.reshape(-1, channels) * own.to(kept.dtype)[:, None]).index_add_(
            0, flat, sources * weight.to(kept.dtype)[:, None]
        )
    return merged.view_as(kept), members.view(batch, size), own.view(batch, size), weight.view(batch, -1)


def split_ranking(ranking: torch.Tensor, count: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """[B, n] positions, best first, and how many to keep -> ([B, count] the kept positions, ascending; [B, count]
    the rank of each; [B, n − count] the other positions, ascending), without sorting again."""
    index = torch.arange(ranking.shape[-1], device=ranking.device).expand_as(ranking)
    rank = torch.empty_like(ranking).scatter_(1, ranking, index)
    is_kept = rank < count
    kept_up_to = is_kept.cumsum(dim=-1)
    by_position = torch.empty_like(ranking).scatter_(
        1, torch.where(is_kept, kept_up_to - 1, count + index - kept_up_to), index
    )  # the kept positions in order, then the others
    kept = by_position[:, :count]
    return kept, rank.gather(1, kept), by_position[:, count:]


def gather_tokens(states: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """[B, n, C] and [B or 1, j] positions -> [B, j, C] the tokens at them."""
    return states.gather(1, index[..., None].expand(len(states), -1, states.shape[-1]))


def merge_into_kept(
    states: torch.Tensor, scores: torch.Tensor, kept_count: int, variant: str = "official"
) -> InnerMerge:
    """HoliTom's merge inside the LLM on the visual tokens ``states`` [B, n, C] with ``scores`` [B, n] (the attention
    the last prompt token pays them at the layer before, mean over heads): keep the ``kept_count`` most attended,
    merge each other token into its most cosine-similar kept token (the first of equals in descending attention)."""
    batch, size, _ = states.shape
    if not 0 < kept_count <= size:
        raise ValueError(f"HoliTom's inner merge must keep between 1 and {size} tokens, got {kept_count}")
    ranking = scores[:1] if check_variant(variant) == "official" else scores
    by_attention = ranking.float().argsort(dim=-1, descending=True, stable=True)
    kept, kept_rank, dropped = split_ranking(by_attention, kept_count)
    # the similarity's rows padded (with token 0) to a multiple of 8 columns: a GPU's fast matrix products need rows
    # of 16 bytes; the padding is cut off before the argmax
    candidates = gather_tokens(states, F.pad(by_attention[:, :kept_count], (0, -kept_count % 8)))
    dropped_states = gather_tokens(states, dropped)
    similarity = dropped_states @ candidates.transpose(1, 2)
    similarity /= dropped_states.norm(dim=-1, keepdim=True) * candidates.norm(dim=-1)[:, None, :]
    target = similarity[..., :kept_count].argmax(dim=-1)  # [B, n − k] among the kept, in descending attention
    merged, members, own, weight = average_into(candidates[:, :kept_count], dropped_states, target, variant)
    order = kept_rank.expand(batch, -1)  # each kept token's place in descending attention, in position order
    return InnerMerge(
        merged.gather(1, order[..., None].expand_as(merged)),
        kept,
        dropped,
        by_attention[:, :kept_count].expand(batch, -1).gather(1, target),
        members.gather(1, order),
        own.gather(1, order),
        weight,
    )


def inner_merge(
    hidden: torch.Tensor,
    attention: torch.Tensor,
    start: int,
    length: int,
    merge_ratio: float,
    variant: str = "official",
) -> tuple[torch.Tensor, torch.Tensor, InnerMerge]:
    """The authors' step before decoder layer k on a whole sequence: hidden [B, L, C] (layer k − 1's output),
    attention [B, heads, L] (layer k − 1's last query row), the image span [start, start + length) and r.
    Returns ([B, L', C] the compacted sequence, [L'] the kept positions, i.e. the new position ids, the merge with
    positions counted within the span); the kept positions are row 0's."""
    batch, total, _ = hidden.shape
    if attention.dim() != 3 or attention.shape[0] != batch or attention.shape[2] != total:
        raise ValueError(f"attention must have shape [B, heads, L] = [{batch}, heads, {total}], got "
                         f"{tuple(attention.shape)}")  # fmt: skip
    if not (0 <= start and 0 < length and start + length <= total):
        raise ValueError(f"image span [{start}, {start + length}) must lie inside the sequence of {total} tokens")
    span = slice(start, start + length)
    merge = merge_into_kept(
        hidden[:, span], attention.mean(dim=1)[:, span], inner_kept_count(length, merge_ratio), variant
    )
    features = torch.cat([hidden[:, :start], merge.states, hidden[:, start + length :]], dim=1)
    before, after = torch.arange(start, device=hidden.device), torch.arange(start + length, total, device=hidden.device)
    keep = torch.cat([before, merge.kept[0] + start, after])
    return features, keep, merge


@register("holitom_inner")
class HoliTomInner(RankedInLLM):
    """HoliTom's merge inside the LLM: the visual tokens the last prompt token attends to least at layer k − 1
    merge into their most similar kept token, at the input of layer k."""

    def __init__(self, budget: float = 0.5, layer: int = 18, variant: str = "official") -> None:
        super().__init__(budget, layer)
        self.variant = check_variant(variant)
        self.merge_ratio = 1 - self.budget

    def reduce(self, video: VideoTokens) -> Reduction:
        info = {"HOLITOM_k": self.layer, "HOLITOM_r": self.merge_ratio, "variant": self.variant}
        if self.budget == 1.0:
            return replace(keep_everything(video), info=info)
        t, h, w, c = video.grid.shape
        count = inner_kept_count(video.num_tokens, self.merge_ratio)
        if count == 0:
            raise ValueError(f"HoliTom's inner merge keeps round(n * {self.budget}) = 0 of n = {video.num_tokens} "
                             f"visual tokens: nothing to merge into")  # fmt: skip
        merge = merge_into_kept(video.grid.reshape(1, -1, c), video.importance.reshape(1, -1), count, self.variant)
        kept, dropped, joined = merge.kept[0], merge.dropped[0], merge.members[0]
        device = kept.device
        into = torch.empty(video.num_tokens, dtype=torch.long, device=device)  # the kept token each one goes into
        into[kept] = torch.arange(count, device=device)
        into[dropped] = into[merge.targets[0]]
        weights = torch.empty(video.num_tokens, device=device).index_put_((kept,), merge.own_weights[0])
        weights.index_put_((dropped,), merge.dropped_weights[0])
        return Reduction(merge.states[0], patch_boxes(kept, h, w), joined + 1, video.num_tokens, info=info,
                         members=into, member_weights=weights)  # fmt: skip


def llava_pool(frames: torch.Tensor, mode: str) -> torch.Tensor:
    """[T, C, h, w] -> the LLaVA authors' ``get_2dPool``: bilinear to ceil(h/2) x ceil(w/2), or 2x2 average."""
    if mode == "bilinear":
        return F.interpolate(frames, size=[-(-frames.shape[2] // 2), -(-frames.shape[3] // 2)], mode="bilinear")
    if mode == "average":
        return F.avg_pool2d(frames, 2)
    raise ValueError(f"no pooling {mode!r}; choose bilinear or average")


def reproduce_outer_case(case, params: dict) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """A ``holitom`` reference case (``baselines.check_golden``) -> (token_idx, features, other mismatches): the
    reducer's tokens, newlines inserted in grid mode; the DP segments compared too."""
    if params["D"] != 0 or params["NO_BETA"] is not None:
        raise ValueError("HoliTom's check covers the authors' defaults D = 0 and NO_BETA unset")
    video, attention = torch.from_numpy(case["video"]), torch.from_numpy(case["attention"])
    if params["input"] == "prepool":
        video = llava_pool(torch.from_numpy(case["video_prepool"]), params["pool_mode"])
        prepool = torch.from_numpy(case["attention_prepool"])
        side = round(prepool.shape[1] ** 0.5)
        attention = llava_pool(prepool.view(-1, 1, side, side), params["pool_mode"]).flatten(1)
    grid = video.permute(0, 2, 3, 1)
    t, h, w, _ = grid.shape
    reducer = HoliTom(
        budget=params["retain_ratio"], tau=params["tau"], beta=params["Beta"], neighbours=params["K"],
        max_window_size=params["max_window_size"], newline_position=params["mm_newline_position"],
    )  # fmt: skip
    result = reducer(VideoTokens(grid, importance=attention.view(t, h, w)))
    token_idx, features = flat_positions(result.boxes, h, w), result.tokens
    if params["mm_newline_position"] == "grid":
        newline = torch.from_numpy(case["newline"])
        features, token_idx = insert_newlines(features, token_idx, row_newlines(token_idx, h, w), newline)
    segments_match = result.info["segments"] == case["segments"].tolist()
    return token_idx, features, [] if segments_match else ["segments"]


def reproduce_inner_case(case, params: dict) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """A ``holitom_inner`` reference case -> (kept positions, features, other mismatches): the dropped positions and
    their merge targets compared too."""
    start = params["image_token_start"]
    features, keep, merge = inner_merge(
        torch.from_numpy(case["hidden_states"]), torch.from_numpy(case["attention"]), start,
        params["image_token_length"], params["HOLITOM_r"],
    )  # fmt: skip
    mismatches = []
    if not torch.equal(merge.dropped[0] + start, torch.from_numpy(case["non_topk_idx"])):
        mismatches.append("non_topk_idx")
    if not torch.equal(merge.targets + start, torch.from_numpy(case["merge_target"])):
        mismatches.append("merge_target")
    return keep, features, mismatches
