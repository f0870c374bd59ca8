"""DyCoke stage 1, temporal token merging (TTM), as the STTM authors ran it: drop tokens that repeat over time.

Paper: Tao et al., "DyCoke: Dynamic Compression of Tokens for Fast Video Large Language Models", CVPR 2025
(reference code: github.com/KD-TAO/DyCoke). As a video-LLM baseline: Hyun et al., STTM, ICCV 2025, reference code
github.com/HYUNJS/STTM, ``token_merging_utils/dycoke_merger.py::dycoke_ttm`` (``--sa_pattern dycoke``, before the
first decoder layer).

In each frame pair (2i, 2i+1), frame 2i is kept whole and frame 2i+1 keeps the ``int((1 − p) · P)`` of its P
tokens least similar (cosine, position by position) to frame 2i. Then in each group of four frames starting at
frame i, with i < T − 4, frame i+2 is pruned the same way against frame i. Every other frame (with an odd T, the
last one too) is kept whole. Kept tokens of a pruned frame come out by ascending similarity, the others in raster
order; frames in order. Dropped tokens are discarded, not averaged.

Stage 2, DyCoke's pruning of the KV cache during decoding, runs when ``kv_prune_ratio`` is given (the authors'
defaults: ratio 0.7 at layer 3): ``sttm.adapters.kv_pruning.KVPruning`` describes it. It changes no prefill token.

Budget: the native knob is the prune ratio p; for T divisible by 4 about (1 + 3(1 − p)) / 4 of the tokens stay,
so no budget below 1/4 can be met. Given a budget, the kept count is F·P + M·k for F whole frames, M pruned
frames and k = int((1 − p) · P) tokens per pruned frame; k is the largest whole number that keeps F·P + M·k at
or below budget · T·P, and p the largest prune ratio giving that k. When even k = 0 keeps more (short videos
keep more whole frames: F/T of the tokens), p = 1. ``Reduction.info`` records p, k and that floor F/T. Giving
``prune_ratio`` uses it as the authors did, and the budget is ignored.

Unlike the reference, videos of fewer than five frames work (the reference needs a group of four to prune).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from sttm.adapters.kv_pruning import KVPruning
from sttm.api import Reducer, Reduction, Stage, VideoTokens, check_budget, keep_subset, register

#: the kept fraction DyCoke's TTM approaches on long videos at prune ratio 1: one whole frame in four
BUDGET_FLOOR = 0.25


def reference_frames(num_frames: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """[T] int64: the frame each frame is pruned against (its pair's first frame, or two frames back), −1 if kept."""
    frame = torch.arange(num_frames, device=device)
    in_group_of_four = (frame % 4 == 2) & (frame < num_frames - 2)
    return torch.where(frame % 2 == 1, frame - 1, torch.where(in_group_of_four, frame - 2, -1))


def tokens_kept_per_pruned_frame(prune_ratio: float, tokens_per_frame: int) -> int:
    """The reference's count for a pruned frame: ``int((1 − p) · P)``."""
    return int((1 - prune_ratio) * tokens_per_frame)


def prune_ratio_for_budget(budget: float, num_frames: int, tokens_per_frame: int) -> float:
    """The largest prune ratio p whose kept count F·P + M·int((1 − p)·P) does not exceed budget·T·P (1 if none)."""
    pruned = int((reference_frames(num_frames) >= 0).sum())
    if pruned == 0:
        return 0.0
    whole_tokens = (num_frames - pruned) * tokens_per_frame
    spare = budget * num_frames * tokens_per_frame - whole_tokens
    kept_per_frame = min(tokens_per_frame, max(0, math.floor(spare / pruned + 1e-9)))
    prune_ratio = 1 - kept_per_frame / tokens_per_frame
    while tokens_kept_per_pruned_frame(prune_ratio, tokens_per_frame) < kept_per_frame:  # undo rounding in 1 − k/P
        prune_ratio = math.nextafter(prune_ratio, -math.inf)
    return prune_ratio


def dycoke_ttm(frames: torch.Tensor, kept_per_pruned_frame: int) -> torch.Tensor:
    """[T, P, C] tokens -> [N] flat (t, p) indices of the kept tokens, in the reference's output order."""
    num_frames, tokens_per_frame, _ = frames.shape
    reference = reference_frames(num_frames, frames.device)
    pruned = reference >= 0
    similarity = F.cosine_similarity(frames[reference[pruned]], frames[pruned], dim=-1)  # [M, P]
    order = torch.arange(tokens_per_frame, device=frames.device).repeat(num_frames, 1)
    order[pruned, :kept_per_pruned_frame] = similarity.topk(kept_per_pruned_frame, dim=1, largest=False).indices
    keep = torch.ones_like(order, dtype=torch.bool)
    keep[pruned, kept_per_pruned_frame:] = False
    first_slot = torch.arange(num_frames, device=frames.device)[:, None] * tokens_per_frame
    return (first_slot + order)[keep]


@register("dycoke")
class DyCoke(Reducer):
    """DyCoke's temporal token merging (Tao et al., CVPR 2025), stage 1 only, before the LLM."""

    stage = Stage.PRE_LLM
    query_aware = False

    def __init__(
        self,
        budget: float = 0.5,
        prune_ratio: float | None = None,
        kv_prune_ratio: float | None = None,
        kv_layer: int = 3,
    ) -> None:
        self.budget = check_budget(budget)
        if kv_prune_ratio is not None and not 0.0 <= kv_prune_ratio < 1.0:
            raise ValueError(f"DyCoke's kv_prune_ratio must lie in [0, 1), got {kv_prune_ratio}")
        self.kv_pruning = None if kv_prune_ratio is None else KVPruning(layer=kv_layer, prune_ratio=kv_prune_ratio)
        if prune_ratio is None and self.budget < BUDGET_FLOOR:
            raise ValueError(
                f"DyCoke cannot keep less than its floor of {BUDGET_FLOOR:.0%} of the tokens (one whole frame in "
                f"four), got budget {self.budget}"
            )
        if prune_ratio is not None and not 0.0 <= prune_ratio <= 1.0:
            raise ValueError(f"DyCoke's prune_ratio must lie in [0, 1], got {prune_ratio}")
        self.prune_ratio = prune_ratio

    def reduce(self, video: VideoTokens) -> Reduction:
        t, h, w, c = video.grid.shape
        prune_ratio = self.prune_ratio
        if prune_ratio is None:
            prune_ratio = prune_ratio_for_budget(self.budget, t, h * w)
        kept_per_frame = tokens_kept_per_pruned_frame(prune_ratio, h * w)
        kept = dycoke_ttm(video.grid.reshape(t, h * w, c), kept_per_frame)
        whole_frames = int((reference_frames(t) < 0).sum())
        info = {"prune_ratio": prune_ratio, "kept_per_pruned_frame": kept_per_frame, "floor": whole_frames / t}
        return keep_subset(video, kept, info=info)
