"""STTM's budget search: the batched bisection visits and returns what a one-at-a-time bisection does, and counting
K thresholds in one pass gives each one's own count."""

from __future__ import annotations

import math
import random

import numpy as np
import pytest
import torch

from sttm.api import VideoTokens
from sttm.bisect import bisect
from sttm.merge import as_thresholds, count_tokens, group_nodes, merge_video, temporal_table
from sttm.quadtree import build_quadtree
from sttm.reducer import STTM
from sttm.synthetic import redundant_video


def one_at_a_time(count, target: int) -> tuple[float, bool, list[float]]:
    """The bisection as STTM ran it before its levels were batched: one threshold counted per step."""
    visited = []

    def kept(threshold: float) -> int:
        visited.append(threshold)
        return count([threshold])[0]

    if kept(1.0) <= target:
        return 1.0, True, visited
    if kept(-1.0) > target:
        return -1.0, False, visited
    low, high = -1.0, 1.0
    while (middle := float(np.float32((low + high) / 2))) not in (low, high):
        now = kept(middle)
        if now == target:
            return middle, True, visited
        low, high = (middle, high) if now < target else (low, middle)
    return low, True, visited


def step_function(rng: random.Random):
    """A monotone count of thresholds in [-1, 1]: steps at random points, some of them within float32 ulps."""
    edges = sorted(rng.uniform(-1, 1) for _ in range(rng.randint(1, 12)))
    if rng.random() < 0.5:  # two steps one float32 apart, near 1 where similarities of flat regions tie
        edge = float(np.float32(1 - rng.random() * 1e-4))
        edges = sorted([*edges, edge, float(np.nextafter(np.float32(edge), np.float32(1)))])
    heights = sorted(rng.sample(range(1, 60), len(edges) + 1))

    def count(thresholds: list[float]) -> list[int]:
        return [heights[sum(t >= edge for edge in edges)] for t in thresholds]

    return count, heights


@pytest.mark.parametrize("depth", [1, 2, 3, 6])
def test_batched_bisection_returns_what_one_at_a_time_bisection_returns(depth):
    rng = random.Random(depth)
    for _ in range(300):
        count, heights = step_function(rng)
        target = rng.choice([*heights, rng.randint(0, 61)])
        calls = []
        result = bisect(lambda ts, calls=calls, count=count: calls.append(ts) or count(ts), target, depth)
        expected, met, visited = one_at_a_time(count, target)
        assert result == (expected, met)
        asked = {t for ts in calls for t in ts}
        assert set(visited) <= asked  # the batched search counted every threshold the plain one visits
        assert len(calls) <= 2 + math.ceil(len(visited) / depth)


def videos():
    for seed, (frames, height, width) in enumerate([(6, 14, 14), (5, 13, 13), (4, 7, 9), (1, 8, 8)]):
        yield redundant_video(frames, height, width, channels=24, scene_length=2, seed=seed)
    yield torch.randn(4, 6, 6, 16, generator=torch.Generator().manual_seed(7))


@pytest.mark.parametrize("variant", ["official", "corrected"])
def test_counting_thresholds_together_equals_counting_each_alone(variant):
    for grid in videos():
        tree = build_quadtree(grid, 1, variant, weighted_avg=False, head_dim=None)
        table = temporal_table(tree)
        spatial = [-1.0, 0.2, 0.6, 0.8, 0.9, 0.97, 1.0]
        temporal = [0.05, 0.9, 0.4, 0.6, 0.7, 0.8, 0.95]
        nodes, labels = group_nodes(tree, as_thresholds(spatial, grid.device), as_thresholds(temporal, grid.device),
                                    variant, table)  # fmt: skip
        together = count_tokens(nodes, labels).tolist()
        alone = [len(merge_video(tree, s, t, variant)[0]) for s, t in zip(spatial, temporal, strict=True)]
        assert together == alone


@pytest.mark.parametrize("variant", ["official", "corrected"])
@pytest.mark.parametrize("budget_gap", [0.2, None])
def test_budget_mode_chooses_the_thresholds_a_one_at_a_time_bisection_chooses(variant, budget_gap):
    for grid in videos():
        for budget in (0.6, 0.35, 0.15):
            reducer = STTM(budget=budget, variant=variant, budget_gap=budget_gap)
            tree = build_quadtree(grid, 1, variant, weighted_avg=False, head_dim=None)

            def kept(thresholds: list[float], reducer=reducer, tree=tree) -> list[int]:
                return [len(merge_video(tree, *reducer._thresholds_at(t), variant)[0]) for t in thresholds]

            target = math.floor(budget * grid.shape[:3].numel() + 1e-9)
            spatial, met, _ = one_at_a_time(kept, target)
            result = reducer.reduce(VideoTokens(grid))
            assert (result.info["threshold"], result.info["temporal_threshold"]) == reducer._thresholds_at(spatial)
            assert result.info["budget_met"] == met
            assert result.num_kept == kept([spatial])[0]
