"""ToMe over the whole video, as the STTM authors ran it: bipartite soft matching at a decoder layer.

Paper: Bolya et al., "Token Merging: Your ViT But Faster", ICLR 2023 (reference code: facebookresearch/ToMe,
``tome/merge.py``). As a video-LLM baseline: Hyun et al., STTM, ICCV 2025, reference code github.com/HYUNJS/STTM,
``token_merging_utils/tome_token_merger.py::tome_per_video`` (``--sa_tome_ver video``, decoder layer 2).

The video is flattened to one sequence in (t, h, w) order. In a round of merging, the tokens at even positions (A)
each find their most similar token at an odd position (B), by cosine of the L2-normalised hidden states; the r A
tokens with the best matches are merged into their match as a size-weighted average. A round removes at most half
of the tokens, so rounds repeat until ``ceil(N · budget)`` tokens remain. Output order is the reference's: the
unmerged A tokens by descending best similarity, then the B tokens in order (so below 50% the layout is
scrambled). Each output token sits in the grid slot of the B token (or unmerged A token) it ends up in.

A merged token is the size-weighted mean of the tokens it absorbed, themselves means of theirs: the plain mean of the
grid patches it holds, whatever the rounds. ``Reduction.members`` names, for each patch, the token it ends up in.

Budget: the kept fraction ``1 − prune_ratio``, exactly: ``ceil(N · budget)`` tokens. The reference cannot keep
everything (it fails when a round merges nothing); here budget 1.0 returns the tokens unchanged.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F

from sttm.api import Reducer, Reduction, Stage, VideoTokens, check_budget, patch_boxes, register


class Matching(NamedTuple):
    """One round of bipartite soft matching between A = even positions and B = odd positions.

    unmerged:      [Na − r] A positions that stay, by descending best similarity.
    sources:       [r] A positions merged away.
    destinations:  [r] B positions each source merges into.
    """

    unmerged: torch.Tensor
    sources: torch.Tensor
    destinations: torch.Tensor


def bipartite_soft_matching(metric: torch.Tensor, r: int) -> Matching:
    """[N, C] metric -> the matching that merges the r A tokens (even positions) most similar to a B token.

    r is capped at N // 2. Similarity is the cosine between the L2-normalised rows.
    """
    r = min(r, metric.shape[0] // 2)
    unit = F.normalize(metric, dim=-1)
    scores = unit[::2] @ unit[1::2].T  # [Na, Nb]
    best_score, best_match = scores.max(dim=-1)
    by_score = best_score.argsort(descending=True)
    return Matching(by_score[r:], by_score[:r], best_match[by_score[:r]])


def merge_sum(x: torch.Tensor, matching: Matching) -> torch.Tensor:
    """[N, ...] -> [N − r, ...]: unmerged A rows, then B rows with their sources' rows added."""
    a, b = x[::2], x[1::2]
    b = b.index_add(0, matching.destinations, a[matching.sources])
    return torch.cat([a[matching.unmerged], b])


def merge_weighted(tokens: torch.Tensor, sizes: torch.Tensor, matching: Matching) -> tuple[torch.Tensor, torch.Tensor]:
    """[N, C] tokens, [N] int64 sizes -> ([N − r, C] size-weighted means, [N − r] summed sizes)."""
    merged_sizes = merge_sum(sizes, matching)
    weighted = merge_sum(tokens * sizes[:, None].to(tokens.dtype), matching)
    return weighted / merged_sizes[:, None].to(tokens.dtype), merged_sizes


def keep_slots(slots: torch.Tensor, matching: Matching) -> torch.Tensor:
    """[N] grid slot of each token -> [N − r] slot of each token after the merge (a merged token keeps B's slot)."""
    return torch.cat([slots[::2][matching.unmerged], slots[1::2]])


def destinations(size: int, matching: Matching) -> torch.Tensor:
    """[N] the index among the N − r merged tokens that each of ``size`` = N tokens goes into."""
    a_kept, device = len(matching.unmerged), matching.unmerged.device
    to_a = torch.empty(-(-size // 2), dtype=torch.long, device=device)
    to_a[matching.unmerged] = torch.arange(a_kept, device=device)
    to_a[matching.sources] = a_kept + matching.destinations
    into = torch.empty(size, dtype=torch.long, device=device)
    into[::2], into[1::2] = to_a, a_kept + torch.arange(size // 2, device=device)
    return into


class Merged(NamedTuple):
    """ToMe's result on one sequence of N tokens."""

    tokens: torch.Tensor  # [K, C] merged tokens
    slots: torch.Tensor  # [K] flat slot index of each
    sizes: torch.Tensor  # [K] int64 tokens merged into each, summing to N
    members: torch.Tensor  # [N] int64 the merged token each input token went into
    rounds: int


def tome_per_video(tokens: torch.Tensor, target: int) -> Merged:
    """Merge [N, C] tokens down to ``target`` by repeated bipartite soft matching."""
    slots = torch.arange(tokens.shape[0], device=tokens.device)
    sizes, members = torch.ones_like(slots), slots
    rounds = 0
    while tokens.shape[0] > target:
        matching = bipartite_soft_matching(tokens, tokens.shape[0] - target)
        members = destinations(tokens.shape[0], matching)[members]
        tokens, sizes = merge_weighted(tokens, sizes, matching)
        slots = keep_slots(slots, matching)
        rounds += 1
    return Merged(tokens, slots, sizes, members, rounds)


@register("tome")
class ToMe(Reducer):
    """ToMe over the whole video (Bolya et al., ICLR 2023), at decoder layer ``layer`` as in the STTM paper."""

    stage = Stage.LLM_LAYER
    query_aware = False

    def __init__(self, budget: float = 0.5, layer: int = 2) -> None:
        self.budget = check_budget(budget)
        self.layer = layer

    def reduce(self, video: VideoTokens) -> Reduction:
        _, h, w, channels = video.grid.shape
        target = math.ceil(video.num_tokens * self.budget)
        merged = tome_per_video(video.grid.reshape(-1, channels), target)
        return Reduction(merged.tokens, patch_boxes(merged.slots, h, w), merged.sizes, video.num_tokens,
                         info={"merge_rounds": merged.rounds}, members=merged.members)  # fmt: skip
