"""STTM: reference vectors, bad input, properties, the corrected variant's differences, budget mode."""

from __future__ import annotations

import importlib.util
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from sttm import check_golden, merge
from sttm.api import VideoTokens, reduce_like
from sttm.merge import VARIANTS, merge_video
from sttm.quadtree import build_quadtree
from sttm.reducer import STTM
from sttm.synthetic import redundant_video

GOLDEN = Path(__file__).resolve().parents[2] / "shared" / "golden" / "sttm"
needs_golden = pytest.mark.skipif(not GOLDEN.is_dir(), reason=f"reference vectors not found at {GOLDEN}")


def video(frames: int = 6, height: int = 14, width: int = 14, seed: int = 0) -> VideoTokens:
    return VideoTokens(redundant_video(frames, height, width, channels=32, scene_length=3, seed=seed))


def coverage(boxes: torch.Tensor, frames: int, height: int, width: int) -> torch.Tensor:
    """[T, H, W] how many boxes cover each patch."""
    painted = torch.zeros(frames, height, width, dtype=torch.long)
    for t, y0, x0, y1, x1 in boxes.tolist():
        painted[t, y0:y1, x0:x1] += 1
    return painted


# --- the authors' reference vectors ------------------------------------------------------------------------


@needs_golden
def test_every_reference_case_passes(capsys):
    assert check_golden.main([str(GOLDEN)]) == 0
    assert capsys.readouterr().out.strip().splitlines()[-1] == "35 passed, 0 failed"


@needs_golden
def test_reference_check_fails_on_a_wrong_expectation(tmp_path, capsys):
    case = np.load(GOLDEN / "case000.npz")
    tampered = dict(case)
    tampered["boxes"] = case["boxes"].copy()
    tampered["boxes"][3, 1] += 1
    np.savez(tmp_path / "case000.npz", **tampered)
    shutil.copy(GOLDEN / "case001.npz", tmp_path / "case001.npz")
    assert check_golden.main([str(tmp_path)]) == 1
    out = capsys.readouterr().out.strip().splitlines()
    assert "FAIL" in out[0] and out[-1] == "1 passed, 1 failed"


def test_reference_check_fails_on_an_empty_folder(tmp_path):
    assert check_golden.main([str(tmp_path)]) == 1


# --- bad input ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "grid, problem",
    [
        (torch.zeros(4, 14, 14), "rank 4"),
        (torch.zeros(1, 4, 14, 14, 8), "rank 4"),
        (torch.zeros(2, 14, 14, 8, dtype=torch.long), "floating-point"),
        (torch.zeros(0, 14, 14, 8), "empty"),
        (torch.full((2, 14, 14, 8), math.nan), "non-finite"),
        (torch.full((2, 14, 14, 8), math.inf), "non-finite"),
    ],
)
def test_malformed_grids_are_refused(grid, problem):
    with pytest.raises(ValueError, match=problem):
        VideoTokens(grid)


@pytest.mark.parametrize("height, width", [(1, 14), (14, 1)])
def test_grids_smaller_than_2x2_are_refused(height, width):
    with pytest.raises(ValueError, match="at least 2x2"):
        STTM(threshold=0.8).reduce(VideoTokens(torch.randn(2, height, width, 8)))


@pytest.mark.parametrize(
    "params, problem",
    [
        ({"threshold": 1.5}, r"threshold must lie in \[-1, 1\]"),
        ({"threshold": -1.01}, r"threshold must lie in \[-1, 1\]"),
        ({"threshold": 0.8, "temporal_threshold": 2.0}, r"temporal_threshold must lie in \[-1, 1\]"),
        ({"budget": 0.0}, r"budget must lie in \(0, 1\]"),
        ({"budget": 1.2}, r"budget must lie in \(0, 1\]"),
        ({"budget": -0.5}, r"budget must lie in \(0, 1\]"),
        ({"budget": 0.5, "threshold": 0.8}, "either thresholds or a budget"),
        ({"budget": 0.5, "temporal_threshold": 0.6}, "either thresholds or a budget"),
        ({}, "spatial threshold"),
        ({"threshold": 0.8, "variant": "fast"}, "unknown STTM variant 'fast'"),
        ({"threshold": 0.8, "head_dim": 0}, "head_dim"),
        ({"budget": 0.5, "budget_gap": -0.1}, "budget_gap must be a number ≥ 0"),
        ({"budget": 0.5, "budget_gap": math.nan}, "budget_gap must be a number ≥ 0"),
    ],
)
def test_bad_parameters_are_refused(params, problem):
    with pytest.raises(ValueError, match=problem):
        STTM(**params)


def test_root_level_out_of_range_is_refused():
    with pytest.raises(ValueError, match="root_level 4 is out of range for a 14x14 grid"):
        STTM(threshold=0.8, root_level=4).reduce(video())


def test_head_dim_must_divide_the_channels():
    with pytest.raises(ValueError, match="head_dim 5 does not divide the 32 channels"):
        STTM(threshold=0.8, head_dim=5).reduce(video())


# --- properties --------------------------------------------------------------------------------------------

SHAPES = [(5, 14, 14), (4, 13, 13), (3, 10, 18), (3, 7, 9)]


@pytest.mark.parametrize("variant", ["official", "corrected"])
@pytest.mark.parametrize("shape", SHAPES)
def test_without_temporal_merging_each_frame_is_tiled_exactly(shape, variant):
    clip = video(*shape)
    for threshold in (0.95, 0.8, 0.5):
        result = STTM(threshold=threshold, variant=variant).reduce(clip)
        assert torch.equal(coverage(result.boxes, *shape), torch.ones(shape, dtype=torch.long))


@pytest.mark.parametrize("variant", ["official", "corrected"])
@pytest.mark.parametrize("shape", SHAPES)
def test_patch_counts_sum_to_the_grid(shape, variant):
    clip = video(*shape, seed=1)
    for spatial, temporal in [(0.9, 0.7), (0.8, 0.5), (0.6, 0.3)]:
        result = STTM(threshold=spatial, temporal_threshold=temporal, variant=variant).reduce(clip)
        assert int(result.num_patches.sum()) == clip.num_tokens
        assert result.tokens.shape == (result.num_kept, 32)


@pytest.mark.parametrize("variant", ["official", "corrected"])
def test_a_single_frame_has_nothing_to_merge_over_time(variant):
    clip = video(1, seed=4)
    spatial = STTM(threshold=0.8, variant=variant).reduce(clip)
    with_temporal = STTM(threshold=0.8, temporal_threshold=1e-3, variant=variant).reduce(clip)
    assert torch.equal(with_temporal.boxes, spatial.boxes) and torch.equal(with_temporal.tokens, spatial.tokens)


@pytest.mark.parametrize("variant", ["official", "corrected"])
def test_kept_fraction_never_rises_when_a_threshold_falls(variant):
    clip = video(8, seed=2)
    falling = [0.99, 0.95, 0.9, 0.85, 0.8, 0.7, 0.6, 0.4, 0.0, -1.0]
    spatial_only = [STTM(threshold=s, variant=variant).reduce(clip).num_kept for s in falling]
    assert spatial_only == sorted(spatial_only, reverse=True) and spatial_only[0] > spatial_only[-1]
    temporal = [STTM(threshold=0.85, temporal_threshold=s, variant=variant).reduce(clip).num_kept for s in falling[:-2]]
    assert temporal == sorted(temporal, reverse=True) and temporal[0] > temporal[-1]


@pytest.mark.parametrize("variant", ["official", "corrected"])
def test_same_input_same_output(variant):
    clip = video(6, seed=3)
    first, second = (STTM(threshold=0.85, temporal_threshold=0.6, variant=variant).reduce(clip) for _ in range(2))
    assert torch.equal(first.tokens, second.tokens) and torch.equal(first.boxes, second.boxes)


@pytest.mark.parametrize("variant", ["official", "corrected"])
def test_a_threshold_above_one_keeps_every_token_unchanged(variant):
    clip = video(3, 13, 13)
    tree = build_quadtree(clip.grid, root_level=1, variant=variant, weighted_avg=False, head_dim=None)
    tokens, boxes, patches, _, _ = merge_video(tree, 1.0 + 1e-6, -1.0, variant)
    assert torch.allclose(tokens, clip.grid.reshape(-1, 32), atol=1e-6, rtol=0)
    assert torch.equal(boxes[:, 1:3] + 1, boxes[:, 3:5]) and torch.equal(patches, torch.ones_like(patches))


def test_tokens_are_in_raster_order_of_their_top_left_patch():
    result = STTM(threshold=0.8, temporal_threshold=0.6).reduce(video(4))
    keys = result.boxes[:, 0] * 196 + result.boxes[:, 1] * 14 + result.boxes[:, 2]
    assert torch.all(keys[1:] > keys[:-1])


# --- official vs corrected, each difference on a hand-made input -------------------------------------------


def test_official_compares_missing_children_with_the_top_left_one():
    """STTM_SPEC §1.4: a uniform 14x14 frame whose top-left 2x2 block differs gives 22 tokens, not 16."""
    frame = torch.zeros(1, 14, 14, 8)
    frame[..., 0] = 1.0
    frame[0, :2, :2] = torch.eye(8)[1]
    kept = {v: STTM(threshold=0.99, variant=v).reduce(VideoTokens(frame)).num_kept for v in ("official", "corrected")}
    assert kept == {"official": 22, "corrected": 16}


def two_frames_one_coarse_node_over_two_fine_ones() -> torch.Tensor:
    """Frame 0: top-left 2x2 region split into leaves u1..u4; frame 1: that region is one node b = 0.6 u1 + 0.8 u2."""
    basis = torch.eye(8)
    grid = torch.zeros(2, 4, 4, 8)
    grid[:, :2, 2:], grid[:, 2:, :2], grid[:, 2:, 2:] = basis[4], basis[5], basis[6]
    grid[0, 0, 0], grid[0, 0, 1], grid[0, 1, 0], grid[0, 1, 1] = basis[0], basis[1], basis[2], basis[3]
    grid[1, :2, :2] = 0.6 * basis[0] + 0.8 * basis[1]
    return grid


def test_official_merges_a_later_node_into_its_lowest_index_parent_corrected_into_its_most_similar():
    grid = two_frames_one_coarse_node_over_two_fine_ones()
    b = 0.6 * torch.eye(8)[0] + 0.8 * torch.eye(8)[1]
    official = STTM(threshold=0.99, temporal_threshold=0.5, root_level=0).reduce(VideoTokens(grid))
    corrected = STTM(threshold=0.99, temporal_threshold=0.5, root_level=0, variant="corrected").reduce(
        VideoTokens(grid)
    )
    assert official.num_kept == corrected.num_kept == 7
    # token 0 sits at u1's box, token 1 at u2's box
    assert torch.allclose(official.tokens[0], (torch.eye(8)[0] + b) / 2)
    assert torch.allclose(official.tokens[1], torch.eye(8)[1])
    assert torch.allclose(corrected.tokens[0], torch.eye(8)[0])
    assert torch.allclose(corrected.tokens[1], (torch.eye(8)[1] + 4 * b) / 5)  # patch-weighted: 1 + 4 patches


def test_official_stops_label_propagation_early_corrected_finds_whole_groups():
    """A later node linked to two earlier ones: the authors' loop leaves them apart; components join them."""
    grid = two_frames_one_coarse_node_over_two_fine_ones()
    grid[1, :2, :2] = (torch.eye(8)[0] + torch.eye(8)[1]) / 2**0.5  # equally similar to u1 and u2
    official = STTM(threshold=0.99, temporal_threshold=0.5, root_level=0).reduce(VideoTokens(grid))
    assert official.num_kept == 7  # u1 + b merged, u2 left alone
    assert official.info == {"threshold": 0.99, "temporal_threshold": 0.5, "variant": "official"}


def round_by_round_labels(num_slots, earlier, later, linked, until_consistent):
    """The authors' min-label propagation as a plain loop that looks at the labels after every round; also
    returns how many rounds it ran."""
    earlier, later = torch.where(linked, earlier, num_slots), torch.where(linked, later, num_slots)
    labels, rounds = torch.arange(num_slots + 1), 0
    while True:
        rounds += 1
        smaller = torch.minimum(labels[earlier], labels[later])
        labels.scatter_reduce_(0, earlier, smaller, reduce="amin")
        labels.scatter_reduce_(0, later, smaller, reduce="amin")
        labels = labels[labels]
        if torch.equal(labels, labels[labels]) and (
            not until_consistent or torch.equal(labels[earlier], labels[later])
        ):
            return labels[:num_slots], rounds


@pytest.mark.parametrize("seed", range(4))
def test_label_propagation_checked_every_few_rounds_equals_checking_every_round(seed):
    """Long chains linked from their far end need more rounds than one block between the host's checks."""
    generator = torch.Generator().manual_seed(seed)
    num_slots = 3000
    order = torch.randperm(num_slots, generator=generator)
    earlier = torch.cat([order[:-1], torch.randint(num_slots, (500,), generator=generator)])
    later = torch.cat([order[1:], torch.randint(num_slots, (500,), generator=generator)])
    linked = torch.rand(len(earlier), generator=generator) < 0.97
    expected, rounds = round_by_round_labels(num_slots, earlier, later, linked, until_consistent=False)
    assert rounds > merge.ROUNDS_PER_CHECK

    def groups(labels: torch.Tensor) -> torch.Tensor:
        return (labels == torch.arange(num_slots)).sum(dim=1)

    labels, tallied = merge.propagate_labels(num_slots, earlier[None], later[None], linked[None], groups)
    assert torch.equal(labels[0], expected)
    assert tallied == [len(expected.unique())]  # the tally of the settled labels


def test_the_rounds_between_the_hosts_looks_double_so_a_long_chain_is_looked_at_a_few_times():
    """Rounds after a row settles change nothing, so each further look may come after as many rounds again as have
    run: the labels of every-round checking, in about log2(rounds) looks."""
    generator = torch.Generator().manual_seed(7)
    num_slots = 3000
    order = torch.randperm(num_slots, generator=generator)
    earlier, later = order[:-1], order[1:]
    linked = torch.ones(len(earlier), dtype=torch.bool)
    expected, needed = round_by_round_labels(num_slots, earlier, later, linked, until_consistent=False)
    tally = lambda labels: labels.new_zeros(0)  # noqa: E731
    asked: list[int] = []

    def more(state, rounds):
        asked.append(rounds)
        return merge.propagation_continued(state, rounds, tally)

    queued = merge.queue_propagation(num_slots, earlier[None], later[None], linked[None], tally)
    labels, _ = merge.finish_propagation(*queued, tally, more)
    assert torch.equal(labels[0], expected)
    assert asked == [merge.ROUNDS_PER_CHECK * 2**k for k in range(len(asked))]
    ran = merge.ROUNDS_PER_CHECK + sum(asked)
    assert ran - asked[-1] < needed <= ran  # it stopped at the first look after the labels settled


@pytest.mark.parametrize("frames", [1, 2, 3, 9, 33])
def test_a_forest_of_links_one_frame_back_is_labelled_by_its_roots_as_propagation_to_consistency_labels_it(frames):
    """The corrected variant's groups: each later slot keeps at most one link (repeated, as a pair of equal boxes is
    found both ways), so pointer jumping a fixed number of times finds the connected components."""
    generator = torch.Generator().manual_seed(frames)
    per_frame, num_slots = 40, 40 * frames
    slot = torch.arange(per_frame, num_slots)
    parent = (slot // per_frame - 1) * per_frame + torch.randint(per_frame, slot.shape, generator=generator)
    noise = torch.randint(num_slots, (2, 300), generator=generator).sort(dim=0).values
    earlier, later = torch.cat([parent, parent, noise[0]]), torch.cat([slot, slot, noise[1]])
    chosen = torch.rand(len(slot), generator=generator) < 0.8
    linked = torch.cat([chosen, chosen, torch.zeros(300, dtype=torch.bool)])
    expected, _ = round_by_round_labels(num_slots, earlier, later, linked, until_consistent=True)
    labels = merge.root_labels(num_slots, earlier[None], later[None], linked[None], frames)
    assert torch.equal(labels[0], expected)
    assert len(expected.unique()) == num_slots - int(chosen.sum())  # a forest: one group fewer per link


GROUP_MEANS_UNDER_THE_TRITON_INTERPRETER = """
import torch
from sttm.group_means import torch_group_means, triton_group_means
generator = torch.Generator().manual_seed(0)
sizes = torch.tensor([1, 3, 1, 7, 2, 1, 4])
for channels in (3, 1024, 1500):
    table = 1000 * torch.randn(50, channels, generator=generator)
    members = torch.randperm(50, generator=generator)[: int(sizes.sum())]
    bounds = torch.nn.functional.pad(sizes.cumsum(0), (1, 0))
    divisors = torch.tensor([1, 3, 2, 9, 2, 5, 4])
    expected = torch_group_means(table, members, bounds, divisors)
    assert torch.equal(triton_group_means(table, members, bounds, divisors), expected), channels
"""


@pytest.mark.skipif(importlib.util.find_spec("triton") is None, reason="Triton is not installed")
def test_the_triton_kernel_adds_up_each_group_as_the_torch_path_does():
    """The GPU kernel, run by Triton's interpreter on the CPU: float32 sums in member order, then one division (the
    interpreter rounds to bfloat16 by truncation, so half precision is left to the GPU)."""
    environment = {**os.environ, "TRITON_INTERPRET": "1"}
    command = [sys.executable, "-c", GROUP_MEANS_UNDER_THE_TRITON_INTERPRETER]
    finished = subprocess.run(command, env=environment, capture_output=True, text=True, timeout=300)
    assert finished.returncode == 0, finished.stderr


def test_official_averages_members_unweighted_corrected_by_patch_count():
    v = torch.eye(8)[0]
    grid = v.expand(2, 4, 4, 8).clone()
    grid[1, :2, :2] = v + 0.2 * torch.eye(8)[1:5].view(2, 2, 8)  # four leaves, each close to v, distinct
    official = STTM(threshold=0.999, temporal_threshold=0.9, root_level=0).reduce(VideoTokens(grid))
    corrected = STTM(threshold=0.999, temporal_threshold=0.9, root_level=0, variant="corrected").reduce(
        VideoTokens(grid)
    )
    leaves = grid[1, :2, :2].reshape(4, 8)
    assert torch.allclose(official.tokens[0], (v + leaves.sum(0)) / 5)
    assert torch.allclose(corrected.tokens[0], (4 * v + leaves.sum(0)) / 8)
    assert official.num_patches[0] == corrected.num_patches[0] == 8


# --- budget mode -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("budget", [0.6, 0.3, 0.15])
def test_budget_keeps_as_many_tokens_as_allowed_without_exceeding_it(budget):
    clip = video(8, seed=4)
    target = math.floor(budget * clip.num_tokens)
    result = STTM(budget=budget).reduce(clip)
    assert result.num_kept <= target and result.info["budget_met"]
    spatial = result.info["threshold"]
    looser = STTM(budget=budget)._thresholds_at(min(spatial + 1e-3, 1.0))
    looser_kept = STTM(threshold=looser[0], temporal_threshold=looser[1]).reduce(clip).num_kept
    assert result.num_kept == target or looser_kept > target  # exactly the budget, or nothing closer below it
    again = STTM(threshold=spatial, temporal_threshold=result.info["temporal_threshold"]).reduce(clip)
    assert torch.equal(again.boxes, result.boxes)


def test_budget_search_resolves_similarities_that_differ_only_near_one():
    """Frames that repeat the first one up to perturbations of 1e-7..1e-5 in cosine similarity (flat regions in a
    trained model's hidden states look like this): every count in between stays reachable."""
    generator = torch.Generator().manual_seed(0)
    first = torch.randn(1, 8, 8, 32, generator=generator)
    scale = torch.logspace(-3.5, -2.5, 7)[:, None, None, None]
    clip = VideoTokens(torch.cat([first, first + scale * torch.randn(7, 8, 8, 32, generator=generator)]))
    result = STTM(budget=0.6).reduce(clip)
    target = math.floor(0.6 * clip.num_tokens)
    looser = STTM(budget=0.6)._thresholds_at(float(np.nextafter(np.float32(result.info["threshold"]), np.float32(1))))
    looser_kept = STTM(threshold=looser[0], temporal_threshold=looser[1]).reduce(clip).num_kept
    assert result.num_kept <= target and (result.num_kept == target or looser_kept > target)


def test_budget_one_keeps_every_token():
    clip = video(3)
    result = STTM(budget=1.0).reduce(clip)
    assert result.kept_ratio == 1.0 and torch.equal(result.tokens, clip.grid.reshape(-1, 32))


def test_budget_below_the_quadtree_floor_keeps_the_floor_and_says_so():
    clip = video(4)
    result = STTM(budget=0.001).reduce(clip)
    floor = STTM(threshold=-1.0, temporal_threshold=1e-3).reduce(clip)
    assert not result.info["budget_met"] and result.num_kept == floor.num_kept


def test_spatial_only_budget():
    clip = video(4)
    result = STTM(budget=0.4, budget_gap=None).reduce(clip)
    assert result.info["temporal_threshold"] == -1.0
    assert torch.equal(coverage(result.boxes, 4, 14, 14), torch.ones(4, 14, 14, dtype=torch.long))


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("weighted_avg", [False, True])
@pytest.mark.parametrize("shape", [(4, 8, 8), (5, 7, 5)])  # odd sides: the official pyramid weighs patches unequally
def test_each_token_is_the_weighted_mean_of_its_members(variant, weighted_avg, shape):
    torch.manual_seed(0)
    grid = torch.randn(shape[0], 1, 1, 16) + 0.3 * torch.randn(*shape, 16)
    reduction = STTM(budget=0.3, root_level=0, variant=variant, weighted_avg=weighted_avg)(VideoTokens(grid))
    assert (reduction.num_patches > 1).any() and reduction.members.shape == (grid[..., 0].numel(),)
    counts = torch.bincount(reduction.members[reduction.members >= 0], minlength=reduction.num_kept)
    assert torch.equal(counts, reduction.num_patches)
    assert torch.allclose(reduce_like(reduction, grid), reduction.tokens, atol=1e-6)
