"""STTM as a reducer: hand-set thresholds (the paper's way) or a budget that picks them per video."""

from __future__ import annotations

import math

import torch

from sttm.api import Reducer, Reduction, Stage, VideoTokens, check_budget, keep_everything, register
from sttm.bisect import bisect
from sttm.merge import VARIANTS, as_thresholds, count_tokens, group_nodes, merge_video, temporal_table
from sttm.quadtree import QuadTree, build_quadtree

#: in budget mode the temporal threshold's gap below the spatial one closes over the top of this range, so that
#: the least merging searched is τ_s = τ_t = 1.
_GAP_CLOSES_OVER = 0.15

#: levels of the bisection counted in one batched pass (2^depth − 1 thresholds): on a GPU a pass costs its
#: launches whatever its width, on a CPU its width.
LOOKAHEAD_DEPTH_CUDA, LOOKAHEAD_DEPTH_CPU = 6, 3


def _check_threshold(name: str, value: float) -> float:
    value = float(value)
    if not -1.0 <= value <= 1.0:
        raise ValueError(f"{name} must lie in [-1, 1] (a cosine similarity), got {value}")
    return value


@register("sttm")
class STTM(Reducer):
    """Multi-granular spatio-temporal token merging (Hyun et al., ICCV 2025) at decoder layer ``layer``.

    Give either thresholds or a budget:

    * ``threshold`` (τ_s) and ``temporal_threshold`` (τ_t, ≤ 0 or None: no temporal merging), as in the
      authors' scripts; ``configs/paper/sttm_thresholds.yaml`` holds their per-dataset values.
    * ``budget``: per video, the thresholds whose kept fraction is as close to the budget as the quadtree allows
      without exceeding it. τ_t follows τ_s at ``budget_gap`` below it (0.2, the gap of most of the paper's
      LLaVA-Video settings; None: spatial merging only), a gap that closes for τ_s above 0.85 so that the least
      merging searched is τ_s = τ_t = 1; τ_s is found by bisection in [-1, 1] down to adjacent float32 values
      (similarities of flat regions tie near 1, so coarser steps can skip most of the reachable counts); the
      temporal similarities are computed once per video and the midpoints of several bisection levels are
      counted in one pass, which visits the thresholds a one-at-a-time bisection visits and returns its choice.
      Budget 1.0 keeps every token.
      The chosen thresholds go to ``Reduction.info``. Below the quadtree's floor (root nodes, all merged over
      time) the floor is kept and ``info["budget_met"]`` is False.

    ``variant`` is ``official`` (the authors' code, quirks included) or ``corrected`` (see ``sttm.merge``).
    ``root_level`` indexes the quadtree levels (``sttm.quadtree.pyramid_sizes``); ``head_dim`` averages the
    similarity over channel chunks of that width; ``weighted_avg`` makes the official variant average by
    patch count (the corrected one always does).
    """

    stage = Stage.LLM_LAYER
    query_aware = False

    def __init__(
        self,
        threshold: float | None = None,
        temporal_threshold: float | None = None,
        budget: float | None = None,
        root_level: int = 1,
        weighted_avg: bool = False,
        head_dim: int | None = None,
        variant: str = "official",
        budget_gap: float | None = 0.2,
        layer: int = 2,
    ) -> None:
        given_thresholds = threshold is not None or temporal_threshold is not None
        if budget is not None and given_thresholds:
            raise ValueError("give STTM either thresholds or a budget, not both")
        if budget is None and threshold is None:
            raise ValueError("give STTM a spatial threshold (and optionally a temporal one) or a budget")
        if variant not in VARIANTS:
            raise ValueError(f"unknown STTM variant {variant!r}; choose one of: {', '.join(VARIANTS)}")
        if head_dim is not None and head_dim <= 0:
            raise ValueError(f"head_dim must be a positive channel count, got {head_dim}")
        self.threshold = None if threshold is None else _check_threshold("threshold", threshold)
        self.temporal_threshold = (
            -1.0 if temporal_threshold is None else _check_threshold("temporal_threshold", temporal_threshold)
        )
        self.budget = None if budget is None else check_budget(budget)
        self.budget_gap = budget_gap
        self.root_level = int(root_level)
        self.weighted_avg = bool(weighted_avg)
        self.head_dim = head_dim
        self.variant = variant
        self.layer = layer

    def reduce(self, video: VideoTokens) -> Reduction:
        if self.budget == 1.0:
            return keep_everything(video)
        grid = video.grid
        if self.head_dim is not None and grid.shape[-1] % self.head_dim:
            raise ValueError(f"head_dim {self.head_dim} does not divide the {grid.shape[-1]} channels")
        tree = build_quadtree(grid, self.root_level, self.variant, self.weighted_avg, self.head_dim)
        if self.budget is None:
            thresholds, budget_met, table = (self.threshold, self.temporal_threshold), True, None
        else:
            table = None if self.budget_gap is None else temporal_table(tree)
            thresholds, budget_met = self._search_thresholds(tree, video.num_tokens, table)
        merged = merge_video(tree, *thresholds, self.variant, table)
        info = {"threshold": thresholds[0], "temporal_threshold": thresholds[1], "variant": self.variant}
        if self.budget is not None:
            info["budget_met"] = budget_met
        return Reduction(
            merged.tokens, merged.boxes, merged.num_patches, video.num_tokens, info=info, members=merged.members,
            member_weights=merged.member_weights,
        )  # fmt: skip

    def _thresholds_at(self, spatial: float) -> tuple[float, float]:
        if self.budget_gap is None:
            return spatial, -1.0
        gap = self.budget_gap * min(1.0, (1.0 - spatial) / _GAP_CLOSES_OVER)
        return spatial, max(spatial - gap, 1e-3)

    def _counts(self, tree: QuadTree, table: torch.Tensor | None, spatials: list[float]) -> list[int]:
        """Tokens kept at each spatial threshold, its temporal one following it, in one batched pass."""
        device = tree.cells.device
        temporals = [self._thresholds_at(spatial)[1] for spatial in spatials]
        temporal = None if table is None else as_thresholds(temporals, device)
        nodes, labels = group_nodes(tree, as_thresholds(spatials, device), temporal, self.variant, table)
        return count_tokens(nodes, labels).tolist()

    def _search_thresholds(
        self, tree: QuadTree, num_tokens: int, table: torch.Tensor | None
    ) -> tuple[tuple[float, float], bool]:
        """The least merging whose kept count stays within ``budget·num_tokens``: bisection on τ_s, down to adjacent
        float32 values, whose next ``lookahead_depth`` levels of midpoints are counted together (``bisect``)."""
        target = math.floor(self.budget * num_tokens + 1e-9)
        depth = LOOKAHEAD_DEPTH_CUDA if tree.cells.is_cuda else LOOKAHEAD_DEPTH_CPU
        spatial, met = bisect(lambda spatials: self._counts(tree, table, spatials), target, depth)
        return self._thresholds_at(spatial), met
