"""STTM's budget search: the batched bisection visits and returns what a one-at-a-time bisection does whatever it
guesses, counting K thresholds in one pass gives each one's own count and tokens, and the step functions that bound
the count (and are it for the corrected variant) hold at every threshold."""

from __future__ import annotations

import math
import random

import numpy as np
import pytest
import torch

from sttm.api import VideoTokens
from sttm.bisect import UNKNOWN, bisect, frontier, midpoint
from sttm.merge import (
    as_thresholds,
    count_steps,
    group_nodes,
    merge_grouped,
    merge_video,
    padded_merge,
    temporal_table,
    trimmed,
)
from sttm.quadtree import build_quadtree
from sttm.reducer import (
    LOOKAHEAD_WIDTH_CUDA,
    PASS_WIDTH_CUDA,
    STTM,
    linking_limit,
    packed_steps,
    pass_width,
    sent_steps,
    temporal_thresholds,
    unpack_steps,
)
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


def recording(count, calls: list):
    """``count`` that also keeps the thresholds of each call in ``calls``."""

    def counting(thresholds: list[float]) -> list[int]:
        calls.append(thresholds)
        return count(thresholds)

    return counting


@pytest.mark.parametrize("width", [1, 3, 7, 63])
def test_batched_bisection_returns_what_one_at_a_time_bisection_returns(width):
    """Without guesses a pass counts the next log2(width + 1) levels below the walk, every branch of them."""
    rng = random.Random(width)
    depth = int(math.log2(width + 1))
    for _ in range(300):
        count, heights = step_function(rng)
        target = rng.choice([*heights, rng.randint(0, 61)])
        calls = []
        result = bisect(recording(count, calls), target, width)
        expected, met, visited = one_at_a_time(count, target)
        assert result == (expected, met)
        asked = {t for ts in calls for t in ts}
        assert set(visited) <= asked  # the batched search counted every threshold the plain one visits
        assert len(calls) <= 2 + math.ceil(len(visited) / depth) and max(map(len, calls)) <= width + 2


def test_a_bisection_counting_nothing_a_call_is_refused():
    with pytest.raises(ValueError, match="width must be at least 1"):
        bisect(lambda thresholds: [0] * len(thresholds), 5, 0)


def told(rng: random.Random, count, heights, target):
    """Regions (the steps, named by their heights) and signs known for some of them, as bounds would give them."""
    settled = {height: rng.random() < 0.7 for height in heights}

    def region(thresholds: np.ndarray, count=count) -> np.ndarray:
        return np.array(count(thresholds.tolist()))  # the steps' heights differ, so a height names its step

    def known(regions: np.ndarray, settled=settled, target=target) -> np.ndarray:
        return np.array([(h > target) - (h < target) if settled[h] else UNKNOWN for h in regions.tolist()])

    return region, known, settled


@pytest.mark.parametrize("width", [1, 7, 63])
def test_bisection_told_some_signs_and_regions_returns_what_one_at_a_time_bisection_returns(width):
    """Signs known without counting (as bounds give them) and thresholds grouped in regions of one count (the steps
    between edges): the search counts none of the known and each region once, and still chooses the same."""
    rng = random.Random(width)
    for _ in range(300):
        count, heights = step_function(rng)
        target = rng.choice([*heights, rng.randint(0, 61)])
        region, known, settled = told(rng, count, heights, target)
        calls = []
        result = bisect(recording(count, calls), target, width, region, known)
        expected, met, _ = one_at_a_time(count, target)
        assert result == (expected, met)
        counted = [h for ts in calls for h in count(ts)]
        assert len(counted) == len(set(counted)) and not any(settled[height] for height in counted)


@pytest.mark.parametrize("width", [1, 7, 63])
def test_what_the_bisection_guesses_changes_what_it_counts_never_what_it_chooses(width):
    """Guesses right, wrong and random: the same choice; a right guess counts the whole walk in one pass."""
    rng = random.Random(width)
    for trial in range(300):
        count, heights = step_function(rng)
        target = rng.choice([*heights, rng.randint(0, 61)])
        region, known, _ = told(rng, count, heights, target)
        guesses = {
            "right": lambda regions, target=target: (regions < target).astype(float),
            "wrong": lambda regions, target=target: (regions >= target).astype(float),
            "random": lambda regions, seed=trial: np.random.default_rng(seed).random(len(regions)),
        }
        expected, met, _ = one_at_a_time(count, target)
        for name, below in guesses.items():
            calls = []
            assert bisect(recording(count, calls), target, width, region, known, below) == (expected, met), name
            if name == "right" and width == 63:
                assert len(calls) <= 1


def branch_by_branch_frontier(low, high, look, below, width) -> list[float]:
    """``sttm.bisect.frontier`` before it pruned branches within one region known or found."""
    level, least = [(1.0, low, high)], 2 / (width + 1)
    found = {}
    while len(found) < width:
        level = [(chance, a, b, middle) for chance, a, b in level if (middle := midpoint(a, b)) is not None]
        if not level:
            break
        regions, sides = (part.tolist() for part in look(np.array([middle for *_, middle in level])))
        unknown = [index for index, side in enumerate(sides) if side == UNKNOWN]
        guesses = below(np.array([regions[index] for index in unknown])).tolist() if unknown else []
        up = [float(side < 0) for side in sides]
        for index, guess in zip(unknown, guesses, strict=True):
            up[index] = guess
        for index in sorted(unknown, key=lambda index: -level[index][0]):
            found.setdefault(regions[index], level[index][3])
            if len(found) == width:
                break
        following = []
        for (chance, a, b, middle), side, rise in zip(level, sides, up, strict=True):
            fall = 1 - rise if side == UNKNOWN else float(side == 1)
            if chance * rise >= least:
                following.append((chance * rise, middle, b))
            if chance * fall >= least:
                following.append((chance * fall, a, middle))
        level = following
    return list(found.values())


@pytest.mark.parametrize("width", [1, 3, 7, 127])
def test_the_frontier_is_what_a_branch_by_branch_walk_finds(width):
    """The same midpoints, in the same order, as the walk that also follows the branches it prunes (those within one
    region known or found), for guesses right, random and tied, from ends anywhere in [-1, 1]."""
    rng = random.Random(width)
    for _ in range(300):
        count, heights = step_function(rng)
        target = rng.choice([*heights, rng.randint(0, 61)])
        region, known, _ = told(rng, count, heights, target)

        def look(thresholds, region=region, known=known):
            regions = region(thresholds)
            return regions, known(regions)

        guessed = {height: rng.choice([rng.random(), 0.25, 0.5, 0.75]) for height in heights}  # ties too
        below = rng.choice([
            lambda regions, target=target: (regions < target).astype(float),
            lambda regions, guessed=guessed: np.array([guessed[region] for region in regions.tolist()]),
        ])  # fmt: skip
        ends = sorted(float(np.float32(rng.uniform(-1, 1))) for _ in range(2))
        low, high = rng.choice([(-1.0, 1.0), tuple(ends)])
        assert frontier(low, high, look, below, width) == branch_by_branch_frontier(low, high, look, below, width)


def videos():
    for seed, (frames, height, width) in enumerate([(6, 14, 14), (5, 13, 13), (4, 7, 9), (1, 8, 8)]):
        yield redundant_video(frames, height, width, channels=24, scene_length=2, seed=seed)
    yield torch.randn(4, 6, 6, 16, generator=torch.Generator().manual_seed(7))


def near_one_video() -> torch.Tensor:
    """Frames that repeat the first one up to perturbations of 1e-7..1e-5 in cosine similarity."""
    generator = torch.Generator().manual_seed(0)
    first = torch.randn(1, 8, 8, 32, generator=generator)
    scale = torch.logspace(-3.5, -2.5, 7)[:, None, None, None]
    return torch.cat([first, first + scale * torch.randn(7, 8, 8, 32, generator=generator)])


def python_temporal_threshold(spatial: float, gap: float) -> float:
    """The temporal threshold of budget mode as STTM computed it in Python floats before it had a tensor function."""
    return max(spatial - gap * min(1.0, (1.0 - spatial) / 0.15), 1e-3)


def temporal_as_compared(spatials: np.ndarray, gap: float) -> np.ndarray:
    """``python_temporal_threshold`` at each spatial threshold (float64 arithmetic, as Python's), rounded to float32 as
    ``as_thresholds`` rounds it."""
    return np.maximum(spatials - gap * np.minimum(1.0, (1.0 - spatials) / 0.15), 1e-3).astype(np.float32)


@pytest.mark.parametrize("gap", [0.0, 0.2, 0.5, 0.9])
def test_the_temporal_threshold_is_the_python_arithmetic_bit_for_bit(gap):
    spatials = np.concatenate([np.linspace(-1, 1, 20001), 0.85 + np.arange(-50, 50) * 1e-9, [1.0, -1.0, 0.85]])
    spatials = spatials.astype(np.float32).astype(np.float64)
    ours = temporal_thresholds(torch.from_numpy(spatials), gap).numpy()
    assert np.array_equal(ours, [python_temporal_threshold(float(s), gap) for s in spatials])


@pytest.mark.parametrize("gap", [0.0, 0.2, 0.5, 0.9])
def test_linking_limit_is_the_highest_spatial_threshold_whose_temporal_one_a_similarity_reaches(gap):
    """Checked against the temporal threshold of the float32 values on either side of the limit found."""
    rng = np.random.default_rng(int(gap * 10))
    near = [np.float32(1e-3), np.float32(0.85 - gap), np.float32(1.0), np.float32(0.5), np.float32(0.65)]
    sims = np.concatenate([
        rng.uniform(-0.2, 1.05, 20000),
        *(value + np.arange(-300, 300) * np.spacing(value) for value in near),
        [np.nan, -1.0, 0.0, 1.0, 2.0],
    ]).astype(np.float32)  # fmt: skip
    limit = linking_limit(torch.from_numpy(sims), gap).numpy()
    assert limit.dtype == np.float32 and not np.isnan(limit).any()
    finite = np.isfinite(limit)
    assert (limit[finite] >= -1).all() and (limit[finite] <= 1).all()
    with np.errstate(invalid="ignore"):
        assert (temporal_as_compared(limit[finite].astype(np.float64), gap) <= sims[finite]).all()
        above = np.nextafter(limit, np.float32(np.inf)).astype(np.float64)
        beyond = temporal_as_compared(above, gap) > sims
        assert (beyond | (limit == 1) | ~finite).all()  # the next float32 up is out of reach, unless 1 is the top
        lowest = temporal_as_compared(np.array([-1.0]), gap)[0]
        assert np.array_equal(~finite, ~(lowest <= sims))  # none where even τ_s = -1 is out of reach
    assert finite.sum() > len(sims) // 2


@pytest.mark.parametrize("variant", ["official", "corrected"])
@pytest.mark.parametrize("budget_gap", [0.2, 0.5, None])
def test_the_count_lies_within_its_steps_bounds_and_is_the_upper_one_when_corrected(variant, budget_gap):
    """At thresholds spread over [-1, 1] and at breakpoints: the official count lies within the bounds, the
    corrected one and the spatial-only one are the upper bound, and a threshold counts as its region's top does.
    What the search reads of them (``unpack_steps``) is the count's sign where the bounds tell it."""
    rng = np.random.default_rng(0)
    for grid in [*videos(), near_one_video()]:
        tree = build_quadtree(grid, 1, variant, weighted_avg=False, head_dim=None)
        table = None if budget_gap is None else temporal_table(tree)
        bounds = count_steps(tree, table, lambda sims, gap=budget_gap: linking_limit(sims, gap))
        values, counts = (bound.numpy() for bound in bounds)
        target = int(counts[0, len(values) // 2])
        packed, kept = packed_steps(*bounds, target, exact=variant == "corrected")
        steps = unpack_steps(packed, kept, sent_steps(packed, kept))
        for size in (0, 1, int(kept.sum()) - 1, int(kept.sum())):  # more breakpoints than one transfer holds, or not
            fewer = unpack_steps(packed, kept, sent_steps(packed, kept, max(size, 0)))
            parts = ("values", "signs", "below")
            assert all(np.array_equal(getattr(fewer, part), getattr(steps, part)) for part in parts)
            assert fewer.values.dtype == steps.values.dtype == np.float32
        reducer = STTM(budget=0.5, variant=variant, budget_gap=budget_gap)
        finite = values[(values >= -1) & (values <= 1)]
        spread = np.concatenate([rng.uniform(-1, 1, 30), rng.choice(finite, 30), [-1.0, 1.0]]).astype(np.float32)
        regions_of = {}  # Steps' region -> count_steps' regions it holds among the thresholds tried
        for spatial, steps_region in zip(
            spread.tolist(), steps.regions(spread.astype(np.float64)).tolist(), strict=True
        ):
            region = int(np.searchsorted(values, np.float32(spatial)))
            regions_of.setdefault(steps_region, set()).add(region)
            kept = len(merge_video(tree, *reducer._thresholds_at(spatial), variant, table)[0])
            upper, lower = counts[:, region]
            assert lower <= kept <= upper
            if variant == "corrected" or budget_gap is None:
                assert kept == upper
            top = values[region] if region < len(values) else 1.0
            if top <= 1:  # the top of the region is a threshold of it
                assert len(merge_video(tree, *reducer._thresholds_at(float(top)), variant, table)[0]) == kept
            sign = steps.signs[steps_region]
            assert sign == (kept > target) - (kept < target) if sign != UNKNOWN else lower <= target <= upper
            assert sign != UNKNOWN or (variant == "official" and 0 <= steps.below[steps_region] <= 1)
        for steps_region, held in regions_of.items():  # a region the search may count is one of count_steps'
            assert len(held) == 1 or steps.signs[steps_region] != UNKNOWN
        assert len(steps.values) < len(values) or len(values) < 3  # neighbours of one known sign are merged


@pytest.mark.parametrize("variant", ["official", "corrected"])
def test_counting_thresholds_together_equals_counting_and_merging_each_alone(variant):
    for grid in [*videos(), near_one_video()]:
        tree = build_quadtree(grid, 1, variant, weighted_avg=False, head_dim=None)
        table = temporal_table(tree)
        spatial = [-1.0, 0.2, 0.6, 0.8, 0.9, 0.97, 1.0]
        temporal = [0.05, 0.9, 0.4, 0.6, 0.7, 0.8, 0.95]
        grouping = group_nodes(tree, as_thresholds(spatial, grid.device), as_thresholds(temporal, grid.device),
                               variant, table)  # fmt: skip
        for row, (s, t) in enumerate(zip(spatial, temporal, strict=True)):
            alone = merge_video(tree, s, t, variant)
            assert grouping.num_tokens[row] == len(alone.tokens)
            assert grouping.num_nodes[row] == len(merge_video(tree, s, -1.0, variant).tokens)
            for ours, theirs in zip(merge_grouped(tree, grouping, row), alone, strict=True):
                assert ours is theirs is None or torch.equal(ours, theirs)  # member weights: None for sums


def test_a_pass_is_padded_to_one_of_a_few_widths_that_hold_its_rows_at_most_about_twice():
    widths = {rows: pass_width(rows) for rows in range(1, PASS_WIDTH_CUDA + 1)}
    assert all(rows <= width < 2 * rows for rows, width in widths.items())
    assert set(widths.values()) == {1, 2, 3, 5, 9, 17, 33, 65, PASS_WIDTH_CUDA}
    assert widths[PASS_WIDTH_CUDA] == PASS_WIDTH_CUDA == LOOKAHEAD_WIDTH_CUDA + 2


@pytest.mark.parametrize("variant", ["official", "corrected"])
def test_a_pass_padded_with_its_last_threshold_counts_its_rows_as_unpadded(variant):
    for grid in videos():
        tree = build_quadtree(grid, 1, variant, weighted_avg=False, head_dim=None)
        table = temporal_table(tree)
        spatial, temporal = [0.6, 0.8, 0.9], [0.4, 0.6, 0.7]
        alone = group_nodes(tree, as_thresholds(spatial, grid.device), as_thresholds(temporal, grid.device),
                            variant, table)  # fmt: skip
        padded = group_nodes(tree, as_thresholds(spatial + spatial[-1:] * 2, grid.device),
                             as_thresholds(temporal + temporal[-1:] * 2, grid.device), variant, table)  # fmt: skip
        assert padded.num_tokens[: len(spatial)] == alone.num_tokens
        assert padded.num_nodes[: len(spatial)] == alone.num_nodes
        assert torch.equal(padded.labels[: len(spatial)], alone.labels)


@pytest.mark.parametrize("weighted_avg", [False, True])
@pytest.mark.parametrize("variant", ["official", "corrected"])
def test_a_padded_merge_cut_to_the_token_count_is_the_merge(variant, weighted_avg):
    for grid in [*videos(), near_one_video()]:
        tree = build_quadtree(grid, 1, variant, weighted_avg=weighted_avg, head_dim=None)
        spatial = as_thresholds([-1.0, 0.6, 0.9, 1.0], grid.device)
        for temporal in (None, as_thresholds([0.05, 0.6, 0.8, 0.95], grid.device)):
            grouping = group_nodes(tree, spatial, temporal, variant)
            for row in range(len(spatial)):
                nodes = grouping.nodes
                rows = [nodes.is_node[row], nodes.cell[row], nodes.level[row], nodes.cover[row]]
                rows += [] if grouping.labels is None else [grouping.labels[row]]
                padded = padded_merge(tree, *rows)
                assert len(padded.tokens) == grid.shape[:3].numel()
                cut = trimmed(padded, grouping.num_tokens[row])
                for ours, theirs in zip(cut, merge_grouped(tree, grouping, row), strict=True):
                    assert ours is theirs is None or torch.equal(ours, theirs)


def other_videos():
    """Inputs beside ``videos``: repeats within float32 rounding of one, and other dtypes (similarities in float64
    for a float64 grid, float32 for half precision)."""
    yield near_one_video()
    yield redundant_video(5, 14, 14, channels=24, scene_length=3, seed=11).double()
    yield redundant_video(5, 10, 18, channels=32, scene_length=2, seed=12).bfloat16()


@pytest.mark.parametrize("variant", ["official", "corrected"])
@pytest.mark.parametrize(
    ("budget_gap", "root_level", "inputs"),
    [(0.2, 1, videos), (None, 1, videos), (0.5, 0, videos), (0.2, 1, other_videos)],
)
def test_budget_mode_chooses_the_thresholds_a_one_at_a_time_bisection_chooses(variant, budget_gap, root_level, inputs):
    for grid in inputs():
        for budget in (0.6, 0.35, 0.15):
            reducer = STTM(budget=budget, variant=variant, budget_gap=budget_gap, root_level=root_level)
            tree = build_quadtree(grid, root_level, variant, weighted_avg=False, head_dim=None)

            def kept(thresholds: list[float], reducer=reducer, tree=tree) -> list[int]:
                return [len(merge_video(tree, *reducer._thresholds_at(t), variant)[0]) for t in thresholds]

            target = math.floor(budget * grid.shape[:3].numel() + 1e-9)
            spatial, met, _ = one_at_a_time(kept, target)
            result = reducer.reduce(VideoTokens(grid))
            assert (result.info["threshold"], result.info["temporal_threshold"]) == reducer._thresholds_at(spatial)
            assert result.info["budget_met"] == met
            assert result.num_kept == kept([spatial])[0]


@pytest.mark.parametrize("budget_gap", [0.2, None])
def test_the_corrected_budget_search_counts_nothing_on_the_device(monkeypatch, budget_gap):
    """Its count is the upper bound of ``count_steps``: the bisection runs on the host, and only the merge groups."""
    reducer = STTM(budget=0.35, variant="corrected", budget_gap=budget_gap)

    def refuse(*args):
        raise AssertionError("counted on the device")

    monkeypatch.setattr(reducer, "_group", refuse)
    result = reducer.reduce(VideoTokens(next(videos())))
    assert result.info["budget_met"] and 0 < result.kept_ratio <= 0.35
