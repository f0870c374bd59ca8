"""Uniform average pooling and random dropping: grid sizes, block means, seeds, budgets."""

from __future__ import annotations

import pytest
import torch

from baselines.pooling import Pooling, pooled_grid_size
from baselines.random_drop import RandomDrop
from sttm.api import Stage, VideoTokens, build_reducer, reduce_like


def random_video(frames: int = 2, height: int = 5, width: int = 7, seed: int = 0) -> VideoTokens:
    return VideoTokens(torch.randn(frames, height, width, 4, generator=torch.Generator().manual_seed(seed)))


def coverage(boxes: torch.Tensor, frames: int, height: int, width: int) -> torch.Tensor:
    """[T, H, W] how many boxes cover each patch."""
    painted = torch.zeros(frames, height, width, dtype=torch.long)
    for t, y0, x0, y1, x1 in boxes.tolist():
        painted[t, y0:y1, x0:x1] += 1
    return painted


# --- pooling -----------------------------------------------------------------------------------------------


def test_pooling_a_constant_video_gives_the_constant():
    grid = torch.full((3, 14, 14, 5), 0.75)
    result = Pooling(budget=0.3).reduce(VideoTokens(grid))
    assert torch.equal(result.tokens, torch.full((result.num_kept, 5), 0.75))


def test_even_blocks_are_the_mean_of_their_patches():
    grid = torch.arange(16.0).view(1, 4, 4, 1)
    result = Pooling(budget=0.25).reduce(VideoTokens(grid))
    assert result.tokens.flatten().tolist() == [2.5, 4.5, 10.5, 12.5]
    assert result.boxes.tolist() == [[0, 0, 0, 2, 2], [0, 0, 2, 2, 4], [0, 2, 0, 4, 2], [0, 2, 2, 4, 4]]
    assert result.num_patches.tolist() == [4, 4, 4, 4]


@pytest.mark.parametrize("budget", [0.1, 0.3, 0.5, 0.8, 1.0])
def test_uneven_blocks_tile_every_frame_and_hold_the_mean_of_their_patches(budget):
    clip = random_video()
    result = Pooling(budget=budget).reduce(clip)
    assert torch.equal(coverage(result.boxes, 2, 5, 7), torch.ones(2, 5, 7, dtype=torch.long))
    assert int(result.num_patches.sum()) == clip.num_tokens
    for token, (t, y0, x0, y1, x1) in zip(result.tokens, result.boxes.tolist(), strict=True):
        assert torch.allclose(token, clip.grid[t, y0:y1, x0:x1].mean(dim=(0, 1)), atol=1e-6)
    assert torch.equal(torch.bincount(result.members, minlength=result.num_kept), result.num_patches)
    assert torch.allclose(reduce_like(result, clip.grid), result.tokens, atol=1e-6)  # its members say the blocks


@pytest.mark.parametrize(
    "height, width, budget, size",
    [
        (14, 14, 0.25, (7, 7)),
        (14, 14, 0.5, (14, 7)),  # 98 tokens exactly; the taller of two equally distorted grids
        (14, 14, 0.3, (8, 7)),  # 56 of the 58.8 allowed
        (14, 14, 1.0, (14, 14)),
        (6, 12, 0.5, (4, 9)),  # 6 x 6 and 3 x 12 hold 36 too, but stray further from the 1:2 aspect
        (3, 3, 0.01, (1, 1)),  # at least one token a frame
    ],
)
def test_the_pooled_grid_has_the_most_tokens_within_the_budget(height, width, budget, size):
    assert pooled_grid_size(height, width, budget) == size


def test_pooling_keeps_the_dtype_and_reports_the_grid():
    grid = torch.randn(2, 6, 6, 4).to(torch.bfloat16)
    result = Pooling(budget=0.25).reduce(VideoTokens(grid))
    assert result.tokens.dtype == torch.bfloat16 and result.info["pooled_grid"] == (3, 3)


# --- random dropping ---------------------------------------------------------------------------------------


def test_random_drop_keeps_the_rounded_budget_in_original_order():
    clip = random_video()
    result = RandomDrop(budget=0.3).reduce(clip)
    assert result.num_kept == round(0.3 * 70)
    t, y, x = result.boxes[:, :3].T
    slots = t * 35 + y * 7 + x
    assert bool((slots[1:] > slots[:-1]).all()) and torch.equal(result.tokens, clip.grid[t, y, x])
    assert bool((result.num_patches == 1).all())


def test_random_drop_is_reproducible_by_seed_and_differs_across_seeds():
    clip = random_video()
    first, again = RandomDrop(budget=0.5, seed=3).reduce(clip), RandomDrop(budget=0.5, seed=3).reduce(clip)
    other = RandomDrop(budget=0.5, seed=4).reduce(clip)
    assert torch.equal(first.boxes, again.boxes)
    assert not torch.equal(first.boxes, other.boxes)


def test_random_drop_keeps_at_least_one_token():
    assert RandomDrop(budget=0.001).reduce(random_video()).num_kept == 1


# --- both --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name, cls", [("pool", Pooling), ("random", RandomDrop)])
def test_registered_before_the_llm(name, cls):
    reducer = build_reducer(name, budget=0.5)
    assert isinstance(reducer, cls) and reducer.stage is Stage.PRE_LLM


@pytest.mark.parametrize("cls", [Pooling, RandomDrop])
@pytest.mark.parametrize("budget", [0.0, -0.2, 1.01])
def test_budgets_outside_zero_one_are_refused(cls, budget):
    with pytest.raises(ValueError, match="budget must lie in"):
        cls(budget=budget)
