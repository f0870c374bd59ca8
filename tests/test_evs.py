"""EVS keeps the first frame and the tokens that change most since the previous frame, maps budgets to vLLM's
pruning rate, and keeps what vLLM's ``compute_retention_mask`` keeps."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import pytest
import torch

from baselines.evs import EVS, retained_count, retention_mask, temporal_dissimilarity
from sttm.api import Stage, VideoTokens, build_reducer, flat_positions, keep_everything


def kept_slots(grid: torch.Tensor, budget: float) -> list[int]:
    reduction = EVS(budget=budget)(VideoTokens(grid))
    return flat_positions(reduction.boxes, grid.shape[1], grid.shape[2]).tolist()


def test_a_static_video_keeps_its_first_frame():
    grid = torch.randn(1, 3, 4, 8).expand(5, -1, -1, -1).contiguous()
    assert kept_slots(grid, 0.2) == list(range(12))
    assert kept_slots(grid, 0.01) == list(range(12))  # never fewer than one frame's tokens


def test_the_tokens_that_change_are_kept_by_how_much_they_change():
    grid = torch.eye(4)[None].expand(3, 4, 4).clone()[:, None]  # [3, 1, 4, 4]: token x is e_x in every frame
    grid[1, 0, 2] = torch.tensor([0.0, 0.0, 1.0, 1.0])  # cosine 1/√2 with its predecessor
    grid[2, 0, 0] = torch.tensor([0.0, 1.0, 0.0, 0.0])  # cosine 0: changes most
    assert kept_slots(grid, 5 / 12) == [0, 1, 2, 3, 8]
    assert kept_slots(grid, 6 / 12) == [0, 1, 2, 3, 6, 8]
    # frame 2's token 2 returns to e_2: cosine 1/√2 with frame 1's, a tie with frame 1's change, to the lower index
    assert kept_slots(grid, 7 / 12) == [0, 1, 2, 3, 6, 8, 10]


def test_equal_dissimilarities_go_to_the_lower_index():
    grid = torch.eye(2)[[0, 1, 0]][:, None, None, :].expand(3, 2, 2, 2).contiguous()  # every token changes fully
    assert temporal_dissimilarity(grid)[1:].unique().tolist() == [1.0]
    assert kept_slots(grid, 6 / 12) == [0, 1, 2, 3, 4, 5]


@pytest.mark.parametrize("budget", [0.05, 0.25, 0.5, 0.77, 0.99])
def test_the_budget_keeps_max_of_one_frame_and_int_of_budget_times_n(budget):
    grid = torch.randn(6, 3, 5, 4)
    reduction = EVS(budget=budget)(VideoTokens(grid))
    assert reduction.num_kept == max(15, int(90 * budget)) == retained_count(15, 6, 1 - budget)
    assert reduction.info == {"video_pruning_rate": 1 - budget}
    assert torch.equal(reduction.num_patches, torch.ones(reduction.num_kept, dtype=torch.long))
    slots = flat_positions(reduction.boxes, 3, 5)
    assert torch.equal(reduction.tokens, grid.reshape(90, 4)[slots]) and bool((slots[1:] > slots[:-1]).all())


def test_budget_one_keeps_every_token_unchanged():
    video = VideoTokens(torch.randn(4, 2, 3, 5))
    reduction, everything = EVS(budget=1.0)(video), keep_everything(video)
    assert torch.equal(reduction.tokens, everything.tokens) and torch.equal(reduction.boxes, everything.boxes)


def test_the_registry_builds_it_before_the_llm_on_a_realistic_grid():
    reducer = build_reducer("evs", budget=0.3)
    assert reducer.stage is Stage.PRE_LLM and reducer.needs == frozenset()
    reduction = reducer(VideoTokens(torch.randn(8, 14, 14, 64)))
    assert reduction.num_kept == int(8 * 196 * 0.3) and reduction.kept_ratio == pytest.approx(0.3, abs=1 / 1568)


def test_bad_input_names_the_problem():
    for budget in (0.0, 1.5):
        with pytest.raises(ValueError, match=r"budget must lie in \(0, 1\]"):
            EVS(budget=budget)
    with pytest.raises(ValueError, match=r"pruning_rate must lie in \[0, 1\)"):
        retention_mask(torch.randn(2, 2, 2, 3), 1.0)
    with pytest.raises(ValueError, match=r"grid must have shape \[T, H, W, C\]"):
        retention_mask(torch.randn(4, 3), 0.5)


def vllm_evs(checkout: str):
    """vLLM's ``vllm/multimodal/evs.py``, loaded by path (it imports only ``typing`` and ``torch``)."""
    path = Path(checkout) / "vllm" / "multimodal" / "evs.py"
    if not path.is_file():
        pytest.fail(f"EVS_AUTHORS={checkout} holds no vllm/multimodal/evs.py")
    spec = importlib.util.spec_from_file_location("vllm_multimodal_evs", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def video_of_kind(kind: str, shape: tuple[int, int, int], generator: torch.Generator) -> torch.Tensor:
    """[T, H, W, 12] float32: "random", "static" (one frame repeated), "still" (repeated with a little noise),
    "moving" (a static background with a square that moves), "scenes" (static shots with cuts), "ties" (tokens
    from a few basis vectors, so that many dissimilarities are equal)."""
    t, h, w = shape
    if kind == "random":
        return torch.randn(t, h, w, 12, generator=generator)
    if kind == "ties":
        return torch.eye(12)[torch.randint(0, 3, (t, h, w), generator=generator)]
    background = torch.randn(1, h, w, 12, generator=generator).expand(t, -1, -1, -1).clone()
    if kind == "still":
        background += 0.01 * torch.randn(t, h, w, 12, generator=generator)
    if kind == "moving":
        thing = torch.randn(12, generator=generator)
        for frame in range(t):
            y, x = frame % h, (2 * frame) % w
            background[frame, y : y + 2, x : x + 2] = thing
    if kind == "scenes":
        cuts = sorted(torch.randint(1, max(t, 2), (2,), generator=generator).tolist())
        for start in cuts:
            background[start:] = torch.randn(1, h, w, 12, generator=generator)
    return background


@pytest.mark.skipif("EVS_AUTHORS" not in os.environ, reason="EVS_AUTHORS: a vllm-project/vllm checkout")
def test_the_kept_tokens_are_vllms_compute_retention_mask():
    authors = vllm_evs(os.environ["EVS_AUTHORS"])
    generator = torch.Generator().manual_seed(0)
    shapes = [(1, 3, 3), (2, 1, 1), (3, 2, 2), (4, 3, 5), (5, 7, 9), (8, 14, 14), (16, 4, 4), (6, 13, 13)]
    kinds = ["random", "static", "still", "moving", "scenes", "ties"]
    rates = [0.0, 0.1, 0.25, 0.5, 0.75, 0.9, 0.99]
    checked = 0
    for index, shape in enumerate(shapes):
        for kind in kinds:
            grid = video_of_kind(kind, shape, generator)
            rate = rates[(index + checked) % len(rates)]
            dtype = (torch.float32, torch.bfloat16, torch.float64)[checked % 3]
            grid = grid.to(dtype)
            t, h, w, c = grid.shape
            ours = retention_mask(grid, rate).flatten()
            # the harness's grid is vLLM's merged grid: any spatial_merge_size m with (T, H·m, W·m) patches
            for merge in (1, 2):
                theirs = authors.compute_retention_mask(grid.reshape(-1, c), (t, h * merge, w * merge), merge, rate)
                assert torch.equal(ours, theirs), (shape, kind, rate, dtype, merge)
            reduction = EVS(budget=1 - rate)(VideoTokens(grid))
            assert torch.equal(flat_positions(reduction.boxes, h, w), theirs.nonzero().squeeze(1)), (shape, kind)
            checked += 1
    assert checked >= 40
