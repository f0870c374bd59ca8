"""DivPrune: greedy max-min diversity."""

from __future__ import annotations

import pytest
import torch

from baselines.divprune import DivPrune, cosine_distances, most_diverse
from sttm.api import VideoTokens


def test_picks_the_isolated_token_first_then_the_farthest_from_the_kept():
    tokens = torch.tensor([[1.0, 0.0], [0.99, 0.14], [0.0, 1.0], [-1.0, 0.05]])[None]
    order = most_diverse(cosine_distances(tokens), 3)[0].tolist()
    assert order[0] == 3  # farthest from its nearest neighbour
    assert order[1] == 0 and order[2] == 2  # then the farthest from the kept set


def test_duplicates_are_not_kept_twice_while_distinct_tokens_remain():
    grid = torch.eye(4).repeat_interleave(3, dim=0).view(1, 3, 4, 4)  # 4 distinct vectors, 3 copies each
    result = DivPrune(budget=4 / 12).reduce(VideoTokens(grid))
    assert torch.equal(result.tokens.sort(dim=0).values, torch.eye(4).sort(dim=0).values)


@pytest.mark.parametrize("scope", ["video", "frame"])
def test_keeps_exactly_the_budget_in_original_order(scope):
    clip = VideoTokens(torch.randn(3, 5, 4, 8, generator=torch.Generator().manual_seed(1)))
    result = DivPrune(budget=0.25, scope=scope).reduce(clip)
    assert result.num_kept == 15
    t, y, x = result.boxes[:, :3].T
    keys = t * 20 + y * 4 + x
    assert torch.all(keys[1:] > keys[:-1]) and torch.equal(result.tokens, clip.grid[t, y, x])
    if scope == "frame":
        assert torch.bincount(t).tolist() == [5, 5, 5]


def test_unknown_scope_is_refused():
    with pytest.raises(ValueError, match="unknown DivPrune scope 'clip'"):
        DivPrune(scope="clip")
