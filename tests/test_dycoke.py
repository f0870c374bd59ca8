"""DyCoke's temporal token merging: reference vectors, which frames are pruned and how, the budget mapping."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from baselines import check_golden
from baselines.dycoke import DyCoke, dycoke_ttm, prune_ratio_for_budget, reference_frames
from sttm.api import Stage, VideoTokens, build_reducer

GOLDEN = (Path(__file__).resolve().parents[1] / ".." / "shared" / "golden" / "dycoke").resolve()
needs_golden = pytest.mark.skipif(not GOLDEN.is_dir(), reason=f"reference vectors not found at {GOLDEN}")


def random_video(frames: int, height: int = 3, width: int = 4, seed: int = 0) -> VideoTokens:
    return VideoTokens(torch.randn(frames, height, width, 6, generator=torch.Generator().manual_seed(seed)))


@needs_golden
def test_every_reference_case_passes(capsys):
    assert check_golden.main([str(GOLDEN)]) == 0
    assert capsys.readouterr().out.strip().splitlines()[-1] == "9 passed, 0 failed"


@needs_golden
def test_reference_check_fails_on_wrong_features(tmp_path, capsys):
    case = dict(np.load(GOLDEN / "case000.npz"))
    case["features"] = case["features"] + np.float32(1e-4)
    np.savez(tmp_path / "case000.npz", **case)
    assert check_golden.main([str(tmp_path)]) == 1
    out = capsys.readouterr().out.strip().splitlines()
    assert "FAIL max feature diff 1.00e-04" in out[0] and out[-1] == "0 passed, 1 failed"


@needs_golden
def test_reference_check_refuses_an_unknown_method(tmp_path):
    shutil.copy(GOLDEN / "case000.npz", tmp_path / "case000.npz")
    case = dict(np.load(tmp_path / "case000.npz"))
    case["params"] = np.array(str(case["params"]).replace('"dycoke"', '"fastv"'))
    np.savez(tmp_path / "case000.npz", **case)
    with pytest.raises(ValueError, match="no baseline check for method 'fastv'"):
        check_golden.main([str(tmp_path)])


def test_pairs_keep_the_first_frame_and_the_least_similar_tokens_of_the_second_in_ascending_similarity():
    first = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0], [1.0, 0.0]])
    second = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.0, 1.0], [-1.0, 0.0]])  # cosines 1, 1, 0, -1
    kept = dycoke_ttm(torch.stack([first, second]), kept_per_pruned_frame=2)
    assert kept.tolist() == [0, 1, 2, 3, 4 + 3, 4 + 2]


@pytest.mark.parametrize(
    "frames, reference",
    [
        (8, [-1, 0, 0, 2, -1, 4, -1, 6]),  # the last group of four keeps its third frame
        (9, [-1, 0, 0, 2, -1, 4, 4, 6, -1]),  # an odd last frame is kept whole
        (6, [-1, 0, 0, 2, -1, 4]),
        (2, [-1, 0]),
        (1, [-1]),
    ],
)
def test_frames_are_pruned_against_their_pair_or_two_frames_back(frames, reference):
    assert reference_frames(frames).tolist() == reference


def test_third_frames_of_a_group_are_pruned_against_the_groups_first_frame():
    still = torch.randn(1, 4, 3, generator=torch.Generator().manual_seed(0))
    frames = still.repeat(8, 1, 1)
    frames[2, :2] = -frames[0, :2]  # unlike frame 0 at tokens 0 and 1, so those survive
    kept = dycoke_ttm(frames, kept_per_pruned_frame=2)
    assert sorted(kept[(kept >= 8) & (kept < 12)].tolist()) == [8, 9]


@pytest.mark.parametrize("prune_ratio, kept", [(0.7, 11978), (0.925, 7798)])
def test_retained_fraction_matches_the_authors_measurements_at_128_frames(prune_ratio, kept):
    clip = VideoTokens(torch.randn(128, 14, 14, 2, generator=torch.Generator().manual_seed(0)))
    result = DyCoke(prune_ratio=prune_ratio).reduce(clip)
    assert result.num_kept == kept  # 47.7% and 31.1%, STTM_SPEC.md section 5
    assert bool((result.num_patches == 1).all())
    t, y, x = result.boxes[:, :3].T
    assert torch.equal(result.tokens, clip.grid[t, y, x])


@pytest.mark.parametrize("frames", [4, 6, 8, 9, 16])
@pytest.mark.parametrize("budget", [0.3, 0.45, 0.5, 0.7, 0.9, 1.0])
def test_a_budget_keeps_the_most_tokens_it_allows(frames, budget):
    clip = random_video(frames)
    result = DyCoke(budget=budget).reduce(clip)
    pruned = int((reference_frames(frames) >= 0).sum())
    floor_tokens = (frames - pruned) * 12
    if budget * clip.num_tokens < floor_tokens:
        assert result.num_kept == floor_tokens and result.info["prune_ratio"] == 1.0
    else:
        assert result.num_kept <= budget * clip.num_tokens < result.num_kept + pruned
    assert DyCoke(prune_ratio=result.info["prune_ratio"]).reduce(clip).num_kept == result.num_kept


def test_budget_one_keeps_every_token():
    clip = random_video(8)
    assert DyCoke(budget=1.0).reduce(clip).num_kept == clip.num_tokens
    assert prune_ratio_for_budget(1.0, 8, 12) == 0.0


@pytest.mark.parametrize("frames, kept", [(1, 12), (2, 12), (3, 24)])  # 12 tokens a frame; whole frames stay
def test_videos_shorter_than_a_group_of_four_work(frames, kept):
    assert DyCoke(budget=0.5).reduce(random_video(frames)).num_kept == kept


@pytest.mark.parametrize("budget", [0.2, 0.1])
def test_budgets_below_the_floor_are_refused(budget):
    with pytest.raises(ValueError, match="floor of 25%"):
        DyCoke(budget=budget)


@pytest.mark.parametrize("prune_ratio", [-0.1, 1.2])
def test_prune_ratios_outside_zero_one_are_refused(prune_ratio):
    with pytest.raises(ValueError, match="prune_ratio must lie in"):
        DyCoke(prune_ratio=prune_ratio)


def test_registered_before_the_llm():
    reducer = build_reducer("dycoke", budget=0.5)
    assert isinstance(reducer, DyCoke) and reducer.stage is Stage.PRE_LLM and reducer.layer is None


def test_stage_two_prunes_the_kv_cache_while_decoding_with_the_authors_defaults():
    from sttm.adapters.kv_pruning import KVPruning

    assert DyCoke(budget=0.5, kv_prune_ratio=0.7).kv_pruning == KVPruning(layer=3, prune_ratio=0.7)
    assert DyCoke(budget=0.5).kv_pruning is None
    with pytest.raises(ValueError, match=r"kv_prune_ratio must lie in \[0, 1\)"):
        DyCoke(budget=0.5, kv_prune_ratio=1.0)
