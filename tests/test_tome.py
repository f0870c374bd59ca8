"""ToMe over the whole video: reference vectors, the matching and merging rules, exact budgets."""

from __future__ import annotations

import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from baselines import check_golden
from baselines.tome import Matching, ToMe, bipartite_soft_matching, merge_weighted
from sttm.api import Stage, VideoTokens, build_reducer, reduce_like

GOLDEN = (Path(__file__).resolve().parents[1] / ".." / "shared" / "golden" / "tome").resolve()
needs_golden = pytest.mark.skipif(not GOLDEN.is_dir(), reason=f"reference vectors not found at {GOLDEN}")


def random_video(frames: int = 3, height: int = 5, width: int = 6, seed: int = 0) -> VideoTokens:
    return VideoTokens(torch.randn(frames, height, width, 8, generator=torch.Generator().manual_seed(seed)))


@needs_golden
def test_every_reference_case_passes(capsys):
    assert check_golden.main([str(GOLDEN)]) == 0
    assert capsys.readouterr().out.strip().splitlines()[-1] == "9 passed, 0 failed"


@needs_golden
def test_reference_check_fails_on_a_wrong_token_index(tmp_path, capsys):
    case = dict(np.load(GOLDEN / "case000.npz"))
    case["token_idx"] = case["token_idx"].copy()
    case["token_idx"][[0, 1]] = case["token_idx"][[1, 0]]
    np.savez(tmp_path / "case000.npz", **case)
    shutil.copy(GOLDEN / "case001.npz", tmp_path / "case001.npz")
    assert check_golden.main([str(tmp_path)]) == 1
    out = capsys.readouterr().out.strip().splitlines()
    assert "FAIL token_idx" in out[0] and out[-1] == "1 passed, 1 failed"


def test_reference_check_fails_on_an_empty_folder(tmp_path):
    assert check_golden.main([str(tmp_path)]) == 1


def test_half_budget_merges_each_even_token_into_its_most_similar_odd_token():
    a0, b0, a1, b1 = torch.tensor([[0.1, 0.0, 1.0], [1.0, 0.0, 0.0], [0.9, 0.2, 0.0], [0.0, 0.1, 1.0]])
    grid = torch.stack([a0, b0, a1, b1]).view(1, 1, 4, 3)
    result = ToMe(budget=0.5).reduce(VideoTokens(grid))
    assert torch.allclose(result.tokens, torch.stack([(b0 + a1) / 2, (b1 + a0) / 2]))
    assert result.boxes.tolist() == [[0, 0, 1, 1, 2], [0, 0, 3, 1, 4]]  # the odd (B) slots
    assert result.num_patches.tolist() == [2, 2]


def test_unmerged_tokens_come_first_by_descending_best_similarity_then_the_odd_tokens():
    metric = torch.tensor([[1.0, 0.0], [1.0, 0.1], [0.0, 1.0], [0.6, 0.8], [1.0, 1.0], [-1.0, 0.0]])
    matching = bipartite_soft_matching(metric, r=1)
    assert matching.sources.tolist() == [0] and matching.destinations.tolist() == [0]
    assert matching.unmerged.tolist() == [2, 1]  # cos 0.99 (a2 with b1) before 0.8 (a1 with b1)
    assert bipartite_soft_matching(metric, r=10).sources.numel() == 3  # at most half the tokens per round


def test_merging_averages_by_size():
    tokens = torch.tensor([[4.0, 0.0], [0.0, 4.0]])
    matching = Matching(torch.tensor([], dtype=torch.long), torch.tensor([0]), torch.tensor([0]))
    merged, sizes = merge_weighted(tokens, torch.tensor([3, 1]), matching)
    assert merged.tolist() == [[3.0, 1.0]] and sizes.tolist() == [4]


@pytest.mark.parametrize("budget", [0.05, 0.15, 0.3, 0.5, 0.7, 0.99])
def test_keeps_exactly_the_target_and_every_patch_in_one_token(budget):
    clip = random_video()
    result = ToMe(budget=budget).reduce(clip)
    assert result.num_kept == math.ceil(clip.num_tokens * budget)
    assert int(result.num_patches.sum()) == clip.num_tokens and bool((result.num_patches >= 1).all())
    t, y, x = result.boxes[:, :3].T
    assert len(set((t * 30 + y * 6 + x).tolist())) == result.num_kept  # every token in a slot of its own


def test_budget_one_keeps_the_video_unchanged():
    clip = random_video()
    result = ToMe(budget=1.0).reduce(clip)
    assert torch.equal(result.tokens, clip.grid.reshape(-1, 8)) and result.info["merge_rounds"] == 0


def test_merged_tokens_are_the_mean_of_their_patches():
    clip = random_video(frames=2, height=4, width=4)
    ones = VideoTokens(torch.cat([clip.grid, torch.ones(2, 4, 4, 1)], dim=-1))
    result = ToMe(budget=0.2).reduce(ones)
    assert torch.allclose(result.tokens[:, -1], torch.ones(result.num_kept))
    total = result.tokens[:, :-1].T @ result.num_patches.float()
    assert torch.allclose(total, clip.grid.reshape(-1, 8).sum(0), atol=1e-4)
    # through every round of merges of merges: its members name them
    assert result.info["merge_rounds"] > 1
    assert torch.equal(torch.bincount(result.members, minlength=result.num_kept), result.num_patches)
    assert torch.allclose(reduce_like(result, ones.grid), result.tokens, atol=1e-6)


def test_registered_at_decoder_layer_two():
    reducer = build_reducer("tome", budget=0.3)
    assert isinstance(reducer, ToMe) and reducer.stage is Stage.LLM_LAYER and reducer.layer == 2
    assert build_reducer("tome", budget=0.3, layer=0).layer == 0


@pytest.mark.parametrize("budget", [0.0, -0.5, 1.5])
def test_budgets_outside_zero_one_are_refused(budget):
    with pytest.raises(ValueError, match="budget must lie in"):
        ToMe(budget=budget)
