"""FrameFusion: merge tokens that repeat the previous frame, then prune the least attended, inside the LLM.

Paper: Fu et al., "FrameFusion: Combining Similarity and Importance for Video Token Reduction on Large Visual
Language Models", arXiv 2501.01986 (ICCV 2025). Reference code: github.com/thu-nics/FrameFusion,
``framefusion/main.py`` (``FrameFusion.forward``, ``compute_similarity_and_token_index_by_patch``,
``merge_tokens_and_get_mask``, ``find_contigious_latter_index``, ``_compute_pruning_ratio``),
``framefusion/models/qwen2/modeling_qwen2.py`` and ``framefusion/utils.py`` (the last query's attention weights),
``framefusion/interface.py`` (``apply_framefusion``; defaults cost = 0.3, similarity_lower_bound = 0.6,
ratio_lower_bound = 0.1). A copy is vendored in github.com/HYUNJS/STTM under ``llava/model/framefusion/``.

What the authors do. Visual tokens are grouped by patch position; within a position, in frame order, each token is
compared (cosine of the hidden states) with the token of the previous frame. Every token whose similarity is
``>= similarity_lower_bound`` is merged away; a run of consecutive such tokens collapses, together with the token
just before the run (the earliest, which survives in its place and keeps its position), into the plain mean of
the run and that token (the members are summed into the survivor with ``index_add_`` and divided by run length
+ 1). A chain therefore collapses into its first token even where its ends are dissimilar. This merging runs at
layer 0 before attention, then after the attention of each following layer, while the merged fraction stays
``>= ratio_lower_bound``; if a pass would merge more than the compute budget ``cost`` allows, only the most
similar tokens are merged, down to the budget, and nothing is pruned. Otherwise, at the layer after merging stops,
the remaining visual tokens are ranked by the attention the last query pays them (mean over heads) and the top
``round(n · (1 − pruning_ratio))`` are kept, with their original positions, where ``pruning_ratio`` makes the
compute summed over all layers equal ``cost`` times the full model's.

Here, at one reduction point (the input of decoder layer ``layer``, 2 by default as the STTM paper ran its
baselines), with ``round(budget · n)`` visual tokens kept:

1. One merge pass on the hidden states entering the layer, with the authors' rule: same-position similarity with
   the previous frame, runs collapse into the token before them, plain mean. The authors' later passes (on the
   hidden states of later layers) have no counterpart, so ``ratio_lower_bound`` has none either. If more than
   ``n − round(budget · n)`` tokens are similar enough, only that many merge, the most similar first (ties to the
   lower index), and nothing is pruned, as the authors do when merging alone meets the budget (they merge
   ``int(ratio · n)`` tokens there; here the count is set by the kept ``round(budget · n)``).
2. Pruning of the remaining tokens to exactly ``round(budget · n)`` by the attention the last prompt token pays
   them, read at layer ``layer − 1`` as FastV reads it (``importance_lag = 1``; recomputed from that layer's
   queries and keys, so the model keeps sdpa or flash attention). That attention is paid to the unmerged tokens,
   so a merged token's importance is the mean over its members, matching the mean of its hidden states (the
   authors measure it after merging, on the merged token). Kept tokens stay in their original order; a merged
   token sits at its earliest member's patch and counts its members in ``num_patches``; ``members`` names the kept
   token each patch went into (−1: pruned), a plain mean.

Similarities and means are computed in float32 (or wider) and cast back, so unmerged tokens come back bit for bit
(the authors' in-place bf16 ``index_add_`` is noted there as numerically unstable).

Budget and ``cost``. Our budget is the kept fraction of visual tokens at layer k; the authors' ``cost`` is the
fraction of visual-token compute summed over the L decoder layers (L = 28 for Qwen2-7B). Keeping everything for
layers 0 … k − 1 and a fraction r from layer k on costs ``(k + (L − k) · r) / L``: see :func:`cost_for_budget` and
:func:`budget_for_cost`. At k = 2, L = 28 budget 0.5 is cost ≈ 0.536 and budget 0.3 is cost 0.35; the authors'
default cost 0.3 is budget ≈ 0.246. (The STTM repository's presets run the authors' code from layer 0 with cost
0.5 / 0.3 / 0.2 / 0.15 for its 50 / 30 / 20 / 15 % settings.) Each reduction's ``info`` records ``merged`` and
``pruned`` (tokens removed by each stage), ``similar`` (tokens at or above the bound, before the cap) and ``cost``
(of the achieved ratio).
"""

from __future__ import annotations

from dataclasses import replace

import torch
import torch.nn.functional as F

from baselines.fastv import most_attended
from sttm.api import (
    RankedInLLM,
    Reduction,
    VideoTokens,
    check_budget,
    keep_everything,
    patch_boxes,
    register,
)

#: similarity given to first-frame tokens, which have no predecessor: below any cosine (the authors' IGNORE_TOKEN).
NO_PREDECESSOR = -2.0


def _check_layers(layer: int, num_layers: int) -> None:
    if not 0 <= layer < num_layers:
        raise ValueError(f"layer must lie in [0, num_layers) = [0, {num_layers}), got {layer}")


def cost_for_budget(budget: float, layer: int, num_layers: int) -> float:
    """The authors' ``cost`` (visual-token compute summed over ``num_layers`` layers, as a fraction of the full
    model's) of keeping every token up to layer ``layer`` and the fraction ``budget`` from it on."""
    budget = check_budget(budget)
    _check_layers(layer, num_layers)
    return (layer + (num_layers - layer) * budget) / num_layers


def budget_for_cost(cost: float, layer: int, num_layers: int) -> float:
    """The inverse of :func:`cost_for_budget`: the kept fraction at layer ``layer`` that spends ``cost``."""
    _check_layers(layer, num_layers)
    budget = (cost * num_layers - layer) / (num_layers - layer)
    if not 0.0 < budget <= 1.0:
        raise ValueError(
            f"cost must lie in ({layer}/{num_layers}, 1] when tokens are reduced at layer {layer} of {num_layers} "
            f"(the layers before it run on every token), got {cost}"
        )
    return budget


def frame_similarity(grid: torch.Tensor) -> torch.Tensor:
    """[T, H, W, C] -> [T, H, W] cosine (float32 or wider) of each token with the token at the same (y, x) one frame
    earlier; frame 0 gets ``NO_PREDECESSOR``."""
    if grid.dim() != 4:
        raise ValueError(f"grid must have shape [T, H, W, C], got {tuple(grid.shape)}")
    unit = F.normalize(grid.to(torch.promote_types(grid.dtype, torch.float32)), dim=-1)
    similarity = (unit[1:] * unit[:-1]).sum(dim=-1)
    first = torch.full_like(unit[:1, ..., 0], NO_PREDECESSOR)
    return torch.cat([first, similarity])


def select_merges(similarity: torch.Tensor, lower_bound: float, limit: int) -> torch.Tensor:
    """[T, H, W] similarity to the previous frame -> [T, H, W] bool: the tokens merged into their predecessor.

    Those with similarity ``>= lower_bound``; if there are more than ``limit``, the ``limit`` most similar (ties to
    the lower flat index).
    """
    if not -1.0 <= lower_bound <= 1.0:
        raise ValueError(f"similarity_lower_bound must lie in [-1, 1] (a cosine), got {lower_bound}")
    if limit < 0:
        raise ValueError(f"limit must be >= 0 (the most tokens merging may remove), got {limit}")
    flat = similarity.flatten()
    candidates = (flat >= lower_bound).nonzero().squeeze(1)
    if len(candidates) > limit:
        order = torch.sort(flat[candidates], descending=True, stable=True).indices
        candidates = candidates[order[:limit]]
    merged = torch.zeros_like(flat, dtype=torch.bool)
    merged[candidates] = True
    return merged.reshape(similarity.shape)


def chain_heads(merged: torch.Tensor) -> torch.Tensor:
    """[T, H, W] bool merged-into-predecessor -> [T, H, W] int64 flat index ``t·H·W + y·W + x`` of the token each
    one ends up in: itself if it is not merged, else the latest unmerged token before it at its (y, x)."""
    if merged.dim() != 3:
        raise ValueError(f"merged must have shape [T, H, W], got {tuple(merged.shape)}")
    if bool(merged[0].any()):
        raise ValueError("tokens of the first frame have no predecessor to merge into")
    t, h, w = merged.shape
    frames = torch.arange(t, device=merged.device)[:, None, None].expand(t, h, w)
    head_frame = torch.where(merged, 0, frames).cummax(dim=0).values
    return head_frame * (h * w) + torch.arange(h * w, device=merged.device).reshape(1, h, w)


def group_by_head(heads: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """[N] head index of each token -> ([M] heads ascending, [N] group of each token in 0 … M − 1, [M] int64 sizes)."""
    slots = heads.unique()
    group = torch.searchsorted(slots, heads)
    return slots, group, torch.bincount(group, minlength=len(slots))


def group_means(values: torch.Tensor, group: torch.Tensor, sizes: torch.Tensor) -> torch.Tensor:
    """[N, ...] values -> [M, ...] plain mean of each group (summed in float32 or wider, cast back to their dtype)."""
    wide = torch.promote_types(values.dtype, torch.float32)
    sums = torch.zeros((len(sizes), *values.shape[1:]), dtype=wide, device=values.device)
    sums.index_add_(0, group, values.to(wide))
    return (sums / sizes.reshape(-1, *[1] * (values.dim() - 1))).to(values.dtype)


@register("framefusion")
class FrameFusion(RankedInLLM):
    """Merge tokens similar to the previous frame's, then keep the ``round(budget · n)`` most attended, at
    decoder layer ``layer`` (attention of layer ``layer − 1``)."""

    def __init__(
        self, budget: float = 0.5, layer: int = 2, similarity_lower_bound: float = 0.6, num_layers: int = 28
    ) -> None:
        super().__init__(budget, layer)
        _check_layers(layer, num_layers)
        if not -1.0 <= similarity_lower_bound <= 1.0:
            raise ValueError(f"similarity_lower_bound must lie in [-1, 1] (a cosine), got {similarity_lower_bound}")
        self.num_layers, self.similarity_lower_bound = num_layers, float(similarity_lower_bound)

    def reduce(self, video: VideoTokens) -> Reduction:
        t, h, w, c = video.grid.shape
        n = video.num_tokens
        count = max(1, round(self.budget * n))
        info = {"cost": cost_for_budget(count / n, self.layer, self.num_layers)}
        if count == n:
            return replace(keep_everything(video), info={**info, "merged": 0, "pruned": 0})
        similarity = frame_similarity(video.grid)
        merged = select_merges(similarity, self.similarity_lower_bound, n - count)
        slots, group, sizes = group_by_head(chain_heads(merged).flatten())
        tokens = group_means(video.grid.reshape(n, c), group, sizes)
        attention = group_means(video.importance.to(video.grid.device).flatten().float(), group, sizes)
        kept = most_attended(attention, count)
        info.update(merged=n - len(slots), pruned=len(slots) - count,
                    similar=int((similarity >= self.similarity_lower_bound).sum()))  # fmt: skip
        rank = torch.full_like(slots, -1).index_copy_(0, kept, torch.arange(count, device=kept.device))
        return Reduction(tokens[kept], patch_boxes(slots[kept], h, w), sizes[kept], n, info=info,
                         members=rank[group])  # fmt: skip
