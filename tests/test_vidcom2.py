"""VidCom2: least typical tokens kept, distinctive frames get more of the budget."""

from __future__ import annotations

import pytest
import torch

from baselines.vidcom2 import VidCom2, frame_rates, keep_least_typical
from sttm.api import VideoTokens, build_reducer
from sttm.synthetic import redundant_video


def test_registered_before_the_llm_and_query_agnostic():
    reducer = build_reducer("vidcom2", budget=0.25)
    assert isinstance(reducer, VidCom2) and reducer.stage.value == "pre_llm" and not reducer.query_aware


def test_an_outlier_token_is_kept_at_a_small_budget():
    grid = torch.ones(4, 6, 6, 16) + 0.01 * torch.randn(4, 6, 6, 16, generator=torch.Generator().manual_seed(0))
    grid[2, 3, 4] = -torch.ones(16)
    result = VidCom2(budget=0.05).reduce(VideoTokens(grid))
    assert [2, 3, 4, 4, 5] in result.boxes.tolist()


def test_distinctive_frames_get_a_larger_share():
    typical = torch.tensor([[2.0, 2.0], [1.0, 1.0], [2.0, 2.0]])  # frame 1 is least like the video
    rates = frame_rates(typical, base=0.3)
    assert rates[1] > rates[0] == rates[2]
    assert rates.mean().item() == pytest.approx(0.3)


def test_each_frame_keeps_its_lowest_scores_and_at_least_one():
    scores = torch.tensor([[0.5, 0.1, 0.9, 0.3], [0.2, 0.4, 0.6, 0.8]])
    keep = keep_least_typical(scores, torch.tensor([0.5, 0.01]))
    assert keep.tolist() == [[False, True, False, True], [True, False, False, False]]


@pytest.mark.parametrize("budget", [0.1, 0.25, 0.5])
def test_achieved_ratio_follows_the_budget_and_tokens_are_the_grid_s(budget):
    clip = VideoTokens(redundant_video(8, 14, 14, 32))
    result = VidCom2(budget=budget).reduce(clip)
    assert abs(result.num_kept - budget * clip.num_tokens) <= 8  # rounding, at most one token per frame
    t, y, x = result.boxes[:, :3].T
    assert torch.equal(result.tokens, clip.grid[t, y, x])
    keys = t * 196 + y * 14 + x
    assert torch.all(keys[1:] > keys[:-1])


def test_bad_budget_is_refused():
    with pytest.raises(ValueError, match="budget must lie in"):
        VidCom2(budget=0.0)
