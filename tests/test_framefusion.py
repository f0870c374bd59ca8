"""FrameFusion merges tokens that repeat the previous frame (chains into their first token, plain mean), prunes the
rest by attention to exactly round(budget · n), maps budgets to the authors' cost, and is exact in the models."""

from __future__ import annotations

import os
from dataclasses import replace

import pytest
import torch
from test_points import generate, inputs

from baselines.fastv import FastV
from baselines.framefusion import (
    FrameFusion,
    budget_for_cost,
    chain_heads,
    cost_for_budget,
    frame_similarity,
    group_by_head,
    group_means,
    select_merges,
)
from sttm.adapters.points import llm_layer, reduction_point
from sttm.adapters.reuse import check_kv_reuse
from sttm.adapters.tiny import FAMILIES, tiny_model
from sttm.api import VideoTokens, build_reducer, flat_positions, keep_everything


def one_hot_frames(t: int, h: int, w: int) -> torch.Tensor:
    """[t, h, w, t] grid whose token at frame i is the basis vector e_i: no token resembles the previous frame's."""
    return torch.eye(t)[:, None, None, :].expand(t, h, w, t).clone()


def test_identical_consecutive_frames_merge_into_the_earlier_one():
    grid = torch.randn(3, 2, 2, 8)
    grid[1] = grid[0]
    importance = torch.rand(3, 2, 2)
    reduction = FrameFusion(budget=8 / 12)(VideoTokens(grid, importance=importance))
    assert reduction.info["merged"] == 4 and reduction.info["pruned"] == 0
    assert flat_positions(reduction.boxes, 2, 2).tolist() == [0, 1, 2, 3, 8, 9, 10, 11]
    assert torch.equal(reduction.tokens, torch.cat([grid[0], grid[2]]).reshape(8, 8))
    assert reduction.num_patches.tolist() == [2, 2, 2, 2, 1, 1, 1, 1]


def test_a_video_without_similar_consecutive_tokens_merges_nothing_and_prunes_as_fastv():
    grid, importance = one_hot_frames(4, 2, 3), torch.rand(4, 2, 3)
    assert not select_merges(frame_similarity(grid), 0.6, 24).any()
    video = VideoTokens(grid, importance=importance)
    reduction = FrameFusion(budget=0.25)(video)
    assert reduction.info["merged"] == 0 and reduction.info["pruned"] == 18
    assert torch.equal(reduction.boxes, FastV(budget=0.25)(video).boxes)


def test_a_chain_of_similar_tokens_collapses_into_its_first_as_the_plain_mean():
    # cos(x0, x1) = cos(x1, x2) = 0.707 >= 0.6 but cos(x0, x2) = 0: the chain still collapses into x0; x3 stays
    frames = torch.tensor([[1.0, 0.0], [1.0, 1.0], [0.0, 1.0], [-1.0, 0.0]])
    grid = frames[:, None, None, :]
    reduction = FrameFusion(budget=0.5)(VideoTokens(grid, importance=torch.rand(4, 1, 1)))
    assert torch.allclose(reduction.tokens, torch.tensor([[2 / 3, 2 / 3], [-1.0, 0.0]]))  # (x0 + x1 + x2) / 3
    assert reduction.boxes.tolist() == [[0, 0, 0, 1, 1], [3, 0, 0, 1, 1]]
    assert reduction.num_patches.tolist() == [3, 1] and reduction.members.tolist() == [0, 0, 0, 1]
    assert chain_heads(torch.tensor([False, True, True, False, True])[:, None, None]).flatten().tolist() == [
        0, 0, 0, 3, 3,
    ]  # fmt: skip


def test_merging_never_goes_below_the_budget_it_merges_the_most_similar_first():
    base = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]])
    later = base + torch.tensor([[0.0, 0.1, 0.0], [0.0, 0.0, 0.5], [0.8, 0.0, 0.0]])  # cos 0.995, 0.894, 0.781
    grid = torch.stack([base, later])[:, None]  # [2, 1, 3, 3]
    reduction = FrameFusion(budget=4 / 6)(VideoTokens(grid, importance=torch.rand(2, 1, 3)))
    assert reduction.info == {**reduction.info, "similar": 3, "merged": 2, "pruned": 0}
    assert flat_positions(reduction.boxes, 1, 3).tolist() == [0, 1, 2, 5]


def test_pruning_keeps_the_top_k_by_attention_a_merged_token_scoring_its_members_mean():
    a, b, c = torch.eye(3)
    grid = torch.stack([torch.stack([a, b]), torch.stack([a, c])])[:, None]  # [2, 1, 2, 3]: position 0 repeats
    importance = torch.tensor([[[0.7, 0.42]], [[0.1, 0.45]]])  # the merged token scores (0.7 + 0.1) / 2 = 0.4
    reduction = FrameFusion(budget=0.5)(VideoTokens(grid, importance=importance))
    assert reduction.info["merged"] == 1 and reduction.info["pruned"] == 1
    assert flat_positions(reduction.boxes, 1, 2).tolist() == [1, 3]
    assert torch.equal(reduction.tokens, torch.stack([b, c]))
    assert reduction.members.tolist() == [-1, 0, -1, 1]  # the pruned merge takes its members along


@pytest.mark.parametrize("budget", [0.01, 0.1, 0.3, 0.5, 0.77, 0.99])
def test_keeps_exactly_round_budget_times_n_tokens(budget):
    grid = torch.randn(5, 3, 3, 16)
    grid[1:] = grid[:-1] + 0.5 * torch.randn(4, 3, 3, 16)  # some positions repeat their predecessor, some not
    reduction = FrameFusion(budget=budget)(VideoTokens(grid, importance=torch.rand(5, 3, 3)))
    assert reduction.num_kept == max(1, round(budget * 45))
    assert reduction.info["merged"] + reduction.info["pruned"] == 45 - reduction.num_kept
    assert int((reduction.num_patches - 1).sum()) <= reduction.info["merged"]  # pruned tokens take members along
    assert reduction.info["cost"] == pytest.approx(cost_for_budget(reduction.kept_ratio, 2, 28))


def test_budget_one_keeps_everything_unchanged():
    grid = torch.randn(3, 2, 2, 4)
    grid[1] = grid[0]  # would merge at any lower budget
    video = VideoTokens(grid, importance=torch.rand(3, 2, 2))
    reduction, everything = FrameFusion(budget=1.0)(video), keep_everything(video)
    assert torch.equal(reduction.tokens, everything.tokens) and torch.equal(reduction.boxes, everything.boxes)
    assert torch.equal(reduction.num_patches, everything.num_patches)
    assert reduction.info == {"cost": 1.0, "merged": 0, "pruned": 0}


def test_the_budget_maps_to_the_authors_cost_and_back():
    assert cost_for_budget(0.5, 2, 28) == pytest.approx(15 / 28)
    assert budget_for_cost(0.3, 2, 28) == pytest.approx((0.3 * 28 - 2) / 26)
    assert cost_for_budget(0.3, 0, 28) == pytest.approx(0.3)  # at layer 0 the cost is the budget
    for budget in (0.05, 0.3, 0.5, 1.0):
        assert budget_for_cost(cost_for_budget(budget, 2, 28), 2, 28) == pytest.approx(budget)
    with pytest.raises(ValueError, match=r"cost must lie in \(2/28, 1\]"):
        budget_for_cost(0.05, 2, 28)
    with pytest.raises(ValueError, match=r"layer must lie in \[0, num_layers\)"):
        cost_for_budget(0.5, 28, 28)


def test_bad_input_names_the_problem():
    video = VideoTokens(torch.randn(2, 2, 2, 3), importance=torch.rand(2, 2, 2))
    for budget in (0.0, 1.5):
        with pytest.raises(ValueError, match=r"budget must lie in \(0, 1\]"):
            FrameFusion(budget=budget)
    with pytest.raises(ValueError, match=r"similarity_lower_bound must lie in \[-1, 1\]"):
        FrameFusion(similarity_lower_bound=1.5)
    with pytest.raises(ValueError, match="layer must be >= 1"):
        FrameFusion(layer=0)
    with pytest.raises(ValueError, match=r"layer must lie in \[0, num_layers\)"):
        FrameFusion(layer=4, num_layers=4)
    with pytest.raises(ValueError, match="needs importance"):
        FrameFusion()(VideoTokens(video.grid, question="what?"))
    with pytest.raises(ValueError, match=r"grid must have shape \[T, H, W, C\]"):
        frame_similarity(torch.randn(4, 3))
    with pytest.raises(ValueError, match=r"merged must have shape \[T, H, W\]"):
        chain_heads(torch.zeros(4, dtype=torch.bool))
    with pytest.raises(ValueError, match="first frame have no predecessor"):
        chain_heads(torch.ones(2, 1, 1, dtype=torch.bool))
    with pytest.raises(ValueError, match="limit must be >= 0"):
        select_merges(torch.zeros(2, 1, 1), 0.6, -1)
    with pytest.raises(ValueError, match="query-agnostic reducer; 'framefusion' looks at the question"):
        check_kv_reuse(True, build_reducer("framefusion", budget=0.5))


def test_in_the_model_without_merging_it_keeps_fastvs_tokens():
    model, model_inputs = tiny_model("llava_onevision"), inputs("llava_onevision", 1)
    kept = {}
    for reducer in (FastV(budget=0.25), FrameFusion(budget=0.25, similarity_lower_bound=1.0)):
        with torch.no_grad(), reduction_point(model, reducer) as log:
            model(**model_inputs)
        kept[reducer.name] = log.last.reductions[0]
    assert kept["framefusion"].info["merged"] == 0
    assert torch.equal(kept["framefusion"].boxes, kept["fastv"].boxes)


class FirstQuestion(FrameFusion):
    """FrameFusion that prunes by the attention of each row's first forward (the prefill's last prompt token) in every
    later forward too: recomputing without a cache would otherwise rank by the newest generated token (FastV too)."""

    def __init__(self, rows: int, **params) -> None:
        super().__init__(**params)
        self.rows, self.calls, self.importance = rows, 0, []

    def reduce(self, video: VideoTokens):
        row, self.calls = self.calls % self.rows, self.calls + 1
        if len(self.importance) <= row:
            self.importance.append(video.importance)
        return super().reduce(replace(video, importance=self.importance[row]))


#: similarity bounds at which both stages act on the tiny models' random videos (LLaVA's layer-2 states are alike)
BOTH_STAGES_ACT = {"llava_onevision": 0.95, "qwen2_vl": 0.0, "qwen2_5_vl": 0.0, "qwen3_vl": 0.0, "qwen3_vl_moe": 0.0}


@pytest.mark.parametrize("family", FAMILIES)
def test_cached_decoding_equals_recomputing_the_reduced_forward(family):
    model = tiny_model(family)
    model_inputs = inputs(family, 2)
    reducer = FirstQuestion(rows=2, budget=0.3, similarity_lower_bound=BOTH_STAGES_ACT[family], layer=2)
    with llm_layer(model, reducer, 2) as log:
        _, cached = generate(model, model_inputs, use_cache=True)
        _, recomputed = generate(model, model_inputs, use_cache=False)
    assert reducer.calls == 2 * (1 + len(recomputed))  # the prefill, then every recomputed step, row by row
    for reduction in log.last.reductions:
        assert reduction.info["merged"] > 0 and reduction.info["pruned"] > 0
        assert reduction.num_kept == round(0.3 * reduction.num_input)
    assert (cached - recomputed).abs().max() <= 1e-4


@pytest.mark.skipif(
    "FRAMEFUSION_AUTHORS" not in os.environ, reason="FRAMEFUSION_AUTHORS: a thu-nics/FrameFusion checkout"
)
def test_the_merge_keeps_and_averages_what_the_authors_code_does(monkeypatch):
    monkeypatch.syspath_prepend(os.environ["FRAMEFUSION_AUTHORS"])
    from framefusion.main import FrameFusion as Authors

    torch.manual_seed(0)
    for trial in range(40):
        t, h, w = (int(v) for v in torch.randint(1, 6, (3,)))
        grid = torch.randn(t, h, w, 16, dtype=torch.float64)
        for i in range(1, t):  # positions that repeat their predecessor to different degrees
            noise = 0.7 * torch.rand(1) * torch.randn_like(grid[i])
            grid[i] = grid[i - 1] * torch.rand(h, w, 1, dtype=torch.float64) + noise
        sequence, patch_type = grid.reshape(1, -1, 16), torch.arange(h * w).repeat(t)[None]
        similarity, by_patch = Authors.compute_similarity_and_token_index_by_patch(sequence, patch_type, h * w)
        merging, limit = torch.where(similarity >= 0.6)[1], t * h * w
        if trial % 2 and len(merging) > 1:  # their capped branch: only the most similar
            limit = len(merging) - 1
            merging = torch.topk(similarity, limit).indices.sort().values[0]
        theirs, keep = Authors.merge_tokens_and_get_mask(sequence.clone(), similarity, by_patch, merging)
        slots, group, sizes = group_by_head(chain_heads(select_merges(frame_similarity(grid), 0.6, limit)).flatten())
        assert torch.equal(keep[0].nonzero().squeeze(1), slots)
        assert torch.allclose(theirs[keep], group_means(grid.reshape(-1, 16), group, sizes), atol=1e-12)
