"""VisionZip: per frame, the most attended tokens and contextual tokens that absorb the rest by key similarity."""

from __future__ import annotations

import pytest
import torch

from baselines.visionzip import VisionZip, contextual_split, contextual_tokens, split_budget
from sttm.adapters.points import reduction_point
from sttm.adapters.tiny import tiny_model
from sttm.api import VideoTokens, flat_positions, reduce_like


def video(frames=2, side=4, channels=3, seed=0):
    generator = torch.Generator().manual_seed(seed)
    grid = torch.randn(frames, side, side, channels, generator=generator)
    importance = torch.rand(frames, side, side, generator=generator)
    keys = torch.randn(frames, side, side, 5, generator=generator)
    return VideoTokens(grid, importance=importance, keys=keys)


def test_the_budget_splits_as_the_published_settings():
    assert split_budget(576, 64 / 576) == (54, 10)
    assert split_budget(196, 0.5) == (83, 15)


def test_dominant_tokens_are_each_frames_most_attended():
    tokens = video()
    reduction = VisionZip(budget=0.5)(tokens)
    dominant, contextual = split_budget(16, 0.5)
    singles = flat_positions(reduction.boxes, 4, 4)[reduction.num_patches == 1]
    for frame in range(2):
        expected = tokens.importance[frame].flatten().topk(dominant).indices + 16 * frame
        assert set(expected.tolist()) <= set(singles.tolist())
    assert reduction.num_kept == 2 * (dominant + contextual) and reduction.num_patches.sum() == 32


def test_a_contextual_token_is_its_target_plus_the_mean_of_what_it_absorbed():
    tokens = torch.tensor([[[1.0], [2.0], [10.0], [20.0]]])  # one frame, targets at 0 and 2 (step 2)
    keys = torch.tensor([[[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [0.1, 0.9]]])
    merged, targets, others, members, assigned = contextual_tokens(tokens, keys, 2)
    assert targets.tolist() == [0, 2] and others.tolist() == [1, 3]
    assert members.tolist() == [[2, 2]] and assigned.tolist() == [[0, 1]]
    assert merged.flatten().tolist() == [1.0 + 2.0, 10.0 + 20.0]


@pytest.mark.parametrize("budget", [0.2, 0.5, 0.9])
def test_the_members_and_their_weights_give_the_tokens_back(budget):
    tokens = video(side=8)
    reduction = VisionZip(budget=budget)(tokens)
    assert split_budget(64, budget)[1] > 0  # contextual tokens: a merge
    assert torch.equal(torch.bincount(reduction.members, minlength=reduction.num_kept), reduction.num_patches)
    assert torch.allclose(reduce_like(reduction, tokens.grid), reduction.tokens, atol=1e-6)


def test_budget_one_keeps_every_token_unchanged():
    tokens = video()
    reduction = VisionZip(budget=1.0)(tokens)
    assert torch.equal(reduction.tokens, tokens.grid.reshape(-1, 3))


def test_needs_the_vision_towers_evidence():
    with pytest.raises(ValueError, match="needs importance and keys"):
        VisionZip()(VideoTokens(torch.randn(1, 2, 2, 3)))


def test_runs_in_llava_onevision_at_the_vision_point():
    model = tiny_model("llava_onevision")
    ids = torch.tensor([[10, 11, *[model.config.video_token_id] * (2 * 64 + 1), 12, 13]])
    pixels = torch.randn(1, 2, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    with torch.no_grad(), reduction_point(model, VisionZip(budget=0.25)) as log:
        output = model.generate(input_ids=ids, pixel_values_videos=pixels, max_new_tokens=2, do_sample=False)
    assert output.shape[1] == ids.shape[1] + 2 and log.last.kept_ratio == 0.25


def test_the_contextual_split_is_every_step_th_token_and_the_others_in_order():
    for remaining in range(1, 40):
        for count in range(1, remaining + 1):
            targets, others = contextual_split(remaining, count, torch.device("cpu"))
            step = max(1, remaining // count)
            expected = list(range(0, remaining, step))[:count]
            assert targets.tolist() == expected
            assert others.tolist() == [index for index in range(remaining) if index not in expected]
