"""FastVID: the authors' reference vectors, DySeg cuts, the budget's counts, anchors, density peaks, merging, and
what the corrected variant changes."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from baselines import check_golden
from baselines.fastvid import (
    FastVID,
    anchor_counts,
    density_scores,
    dynamic_segments,
    fastvid,
    frame_mean_features,
    token_counts,
)
from sttm.api import Stage, VideoTokens, build_reducer, flat_positions, keep_everything, reduce_like

GOLDEN = (Path(__file__).resolve().parents[1] / ".." / "shared" / "golden" / "fastvid").resolve()
needs_golden = pytest.mark.skipif(not GOLDEN.is_dir(), reason=f"FastVID reference vectors not found at {GOLDEN}")


def golden_case(name: str):
    case = np.load(GOLDEN / f"{name}.npz")
    params = json.loads(str(case["params"]))
    grid = torch.from_numpy(case["video"]).permute(0, 2, 3, 1)
    importance = torch.from_numpy(case["attention"]).reshape(grid.shape[:3])
    return case, params, grid, importance


def features_at_angles(steps: list[float]) -> torch.Tensor:
    """[len(steps) + 1, 2] unit vectors whose consecutive cosines are ``cos(step)``."""
    angles = torch.tensor([0.0, *steps], dtype=torch.float64).cumsum(0)
    return torch.stack([angles.cos(), angles.sin()], dim=1)


def alternating_scenes(frames: int) -> torch.Tensor:
    """[T, 2] global features with every consecutive cosine −1: each frame its own segment for any tau > −1."""
    return torch.tensor([[(-1.0) ** i, 0.0] for i in range(frames)])


def one_scene(frames: int) -> torch.Tensor:
    """[T, 2] global features with every consecutive cosine 1: one segment when DySeg_c is 1."""
    return torch.ones(frames, 2)


def random_video(frames: int, side: int, channels: int = 16, seed: int = 0) -> VideoTokens:
    generator = torch.Generator().manual_seed(seed)
    grid = torch.randn(frames, side, side, channels, generator=generator)
    return VideoTokens(grid, importance=torch.rand(frames, side, side, generator=generator))


@needs_golden
def test_every_reference_case_passes(capsys):
    assert check_golden.main([str(GOLDEN)]) == 0
    assert capsys.readouterr().out.strip().splitlines()[-1] == "14 passed, 0 failed"


@needs_golden
def test_the_segments_and_anchor_counts_are_the_authors_in_every_reference_case():
    for path in sorted(GOLDEN.glob("case*.npz")):
        case, params, grid, importance = golden_case(path.stem)
        reduction = check_golden.fastvid_reduction(case, params)
        assert reduction.info["segment_sizes"] == case["segment_sizes"].tolist(), path.stem
        assert reduction.info["frame_context_counts"] == case["frm_context_num_list"].tolist(), path.stem
        assert reduction.info["frame_salient_num"] == params["frame_salient_num"]


@needs_golden
def test_the_reference_cases_do_not_depend_on_the_density_noise():
    case, params, grid, importance = golden_case("case003")
    knobs = {key: params[key] for key in ("retention_ratio", "DySeg_c", "DySeg_tau", "STPrune_d", "DTM_p", "DTM_beta")}
    slots = fastvid(grid, importance, torch.from_numpy(case["global_features"]), *knobs.values()).slots
    assert torch.equal(slots, torch.from_numpy(case["token_idx"]))


@needs_golden
def test_reference_check_fails_on_wrong_features(tmp_path, capsys):
    case = dict(np.load(GOLDEN / "case000.npz"))
    case["features"] = case["features"] + np.float32(1e-4)
    np.savez(tmp_path / "case000.npz", **case)
    assert check_golden.main([str(tmp_path)]) == 1
    assert "FAIL max feature diff 1.00e-04" in capsys.readouterr().out


def test_dyseg_cuts_at_the_c_minus_1_least_similar_steps_and_below_tau():
    cosines = [0.95, 0.5, 0.99, 0.92]
    features = features_at_angles([math.acos(value) for value in cosines])
    assert dynamic_segments(features, 1, 0.9).tolist() == [0, 0, 1, 1, 1]  # tau alone: the 0.5 step
    assert dynamic_segments(features, 3, 0.9).tolist() == [0, 0, 1, 1, 2]  # and the second least similar, 0.92
    assert dynamic_segments(features, 1, 0.96).tolist() == [0, 1, 2, 2, 3]  # 0.95 and 0.92 are below 0.96
    assert dynamic_segments(features, 5, 0.0).tolist() == [0, 1, 2, 3, 4]  # T = c: every frame alone


def test_the_budget_maps_to_truncated_counts_officially_and_rounded_ones_when_corrected():
    assert token_counts(196, 0.1, 0.4, "official") == (12, 7)  # keep int(19.6) = 19, context int(7.6) = 7
    assert token_counts(196, 0.15, 0.4, "official") == (18, 11)
    assert token_counts(196, 0.15, 0.4, "corrected") == (17, 12)  # context round(11.6) = 12
    assert token_counts(100, 0.29, 0.5, "official") == (14, 14)  # 100 · 0.29 = 28.999…: 28 kept
    assert token_counts(100, 0.29, 0.5, "corrected") == (14, 15)  # 29 kept


def test_anchors_are_the_last_frame_and_every_p_th_before_it_each_with_a_floor_share():
    five, seven = torch.zeros(5, dtype=torch.long), torch.zeros(7, dtype=torch.long)
    assert anchor_counts(five, 7, 4, "official").tolist() == [17, 0, 0, 0, 17]  # 2 · (35 // 2) = 34 of 35
    assert anchor_counts(seven, 7, 4, "official").tolist() == [0, 0, 24, 0, 0, 0, 24]  # 48 of 49
    assert anchor_counts(torch.tensor([0, 1, 1, 1]), 5, 2, "official").tolist() == [5, 7, 0, 7]


def test_corrected_anchors_share_the_whole_segment_count_the_latest_taking_the_remainder():
    five, seven = torch.zeros(5, dtype=torch.long), torch.zeros(7, dtype=torch.long)
    assert anchor_counts(five, 7, 4, "corrected").tolist() == [17, 0, 0, 0, 18]
    assert anchor_counts(seven, 7, 4, "corrected").tolist() == [0, 0, 24, 0, 0, 0, 25]
    assert anchor_counts(torch.zeros(9, dtype=torch.long), 7, 4, "corrected").sum() == 63  # 21, 21, 21


def test_density_peaks_score_distance_to_a_denser_token_and_ties_go_by_noise_or_by_index():
    tokens = torch.randn(1, 12, 8, generator=torch.Generator().manual_seed(1)) * 3
    tokens[0, 1] = tokens[0, 0]  # a duplicate: equally dense, at distance 0
    tied = density_scores(tokens)
    assert tied[0, 0] == tied[0, 1] > 0  # neither is strictly denser than the other
    by_index = density_scores(tokens, ties_by_index=True)
    assert by_index[0, 1] == 0 and by_index[0, 0] == tied[0, 0]  # the later one's denser token is the earlier
    noisy = density_scores(tokens, noise=torch.rand(1, 12) * 1e-6)
    assert (noisy[0, :2] == 0).sum() == 1  # noise makes exactly one of them the peak


@pytest.mark.parametrize("variant", ["official", "corrected"])
def test_two_identical_frames_form_one_segment_whose_last_frame_absorbs_both(variant):
    video = random_video(1, 4)
    grid = video.grid.expand(2, -1, -1, -1).clone()
    importance = video.importance.expand(2, -1, -1).clone()
    reducer = FastVID(budget=0.5, stprune_d=0.5, dyseg_c=1, variant=variant)  # 8 kept of 16: 4 salient, 4 context
    reduction = reducer(VideoTokens(grid, importance=importance))
    assert reduction.info["segment_sizes"] == [2] and reduction.info["frame_context_counts"] == [0, 8]
    slots = flat_positions(reduction.boxes, 4, 4)
    assert reduction.num_kept == 16 and torch.equal(slots, slots.sort().values)
    context = slots >= 16  # frame 1's slots beyond its 4 salient ones
    salient = importance[0].flatten().topk(4).indices
    assert torch.equal(slots[~context], salient.sort().values) and int(context.sum()) == 12
    assert int(reduction.num_patches.sum()) == 32  # one target per pool token: all 2 · 16 slots
    targets = context & ~torch.isin(slots - 16, salient)
    assert bool((reduction.num_patches[targets] >= 2).all())  # itself and its twin in frame 0
    # the 4 other positions' 8 tokens reach at most 4 targets, so at least 4 have only themselves and their twins:
    # w = max(1/3, 0.6), and 0.6 t + 0.4 · mean(t, t) = t
    twins_only = reduction.num_patches == 2
    assert int(twins_only.sum()) >= 4
    assert torch.allclose(reduction.tokens[twins_only], grid.reshape(32, -1)[slots[twins_only]], atol=1e-6)


def test_official_pools_are_whole_segments_so_a_token_feeds_one_target_per_anchor():
    grid = random_video(1, 5).grid.expand(5, -1, -1, -1) + 0.01 * torch.randn(5, 5, 5, 16)
    video = VideoTokens(grid, importance=torch.rand(5, 5, 5))
    official = FastVID(budget=0.4, dyseg_c=1, dyseg_tau=0.0, variant="official")(video)
    corrected = FastVID(budget=0.4, dyseg_c=1, dyseg_tau=0.0, variant="corrected")(video)
    assert official.info["frame_context_counts"] == [10, 0, 0, 0, 10]  # 10 of 25: 6 salient, 4 context a frame
    salient = 5 * 6
    assert int(official.num_patches.sum()) == salient + 2 * (125 - salient)  # two anchors, each takes every token
    assert int(corrected.num_patches.sum()) == 125  # a partition of the video
    assert corrected.info["frame_context_counts"] == [10, 0, 0, 0, 10]
    # so no official token can name the one token its slot went into; each corrected one can
    assert official.members is None and official.info["shared_patches"] == 125 - salient
    assert corrected.info["shared_patches"] == 0
    assert torch.allclose(reduce_like(corrected, grid), corrected.tokens, atol=1e-6)


@pytest.mark.parametrize("variant", ["official", "corrected"])
def test_a_merged_token_is_the_dtm_weighted_sum_of_its_members(variant):
    video = random_video(4, 6, seed=5)
    reducer = FastVID(budget=0.4, dyseg_c=1, dyseg_tau=0.0, variant=variant)  # 14 of 36: 9 salient, 5 context
    reduction = reducer.reduce(video, one_scene(4))  # one segment, its last frame the one anchor (p = 4)
    members, weights = reduction.members, reduction.member_weights
    assert reduction.info["shared_patches"] == 0 and bool((members >= 0).all())  # every slot in one token
    totals = torch.zeros(reduction.num_kept).index_add_(0, members, weights)
    assert torch.allclose(totals, torch.ones(reduction.num_kept))
    merged = reduction.num_patches > 1
    n = reduction.num_patches[merged].float()  # members, the target among them
    own = (1 / (n + 1)).clamp(min=0.6)
    on_itself = weights[flat_positions(reduction.boxes, 6, 6)][merged]  # w · target + (1 − w) · its share of the mean
    assert bool(merged.any()) and torch.allclose(on_itself, own + (1 - own) / n)
    assert torch.allclose(reduce_like(reduction, video.grid), reduction.tokens, atol=1e-6)


@pytest.mark.parametrize("variant", ["official", "corrected"])
def test_segments_of_several_lengths_reduce_as_each_one_alone(variant):
    # segments are batched by length, with one or two anchors (p = 4): the video's tokens are each segment's alone
    sizes = [3, 1, 5, 2, 1, 5]
    video = random_video(sum(sizes), 6, seed=7)
    scenes = torch.cat([alternating_scenes(len(sizes))[i : i + 1].expand(size, -1) for i, size in enumerate(sizes)])
    knobs = {"retention_ratio": 0.3, "dyseg_c": 1, "dyseg_tau": 0.5, "variant": variant}  # 6 salient, 4 context
    whole = fastvid(video.grid, video.importance, scenes, **knobs)
    assert whole.facts["segment_sizes"] == sizes
    start, shared, made = 0, 0, 0
    for size in sizes:
        frames = slice(start, start + size)
        part = fastvid(video.grid[frames], video.importance[frames], one_scene(size), **knobs)
        mine = (whole.slots >= start * 36) & (whole.slots < (start + size) * 36)
        assert torch.equal(whole.slots[mine] - start * 36, part.slots)
        assert torch.equal(whole.num_patches[mine], part.num_patches)
        assert torch.allclose(whole.tokens[mine], part.tokens, atol=1e-6)
        if variant == "corrected":
            assert torch.equal(whole.members[frames.start * 36 : frames.stop * 36] - made, part.members)
            assert torch.equal(whole.member_weights[frames.start * 36 : frames.stop * 36], part.member_weights)
        start, shared, made = start + size, shared + part.facts["shared_patches"], made + len(part.slots)
    assert whole.facts["shared_patches"] == shared
    assert (shared > 0) == (variant == "official")  # the 5-frame segments have two anchors


def test_official_anchors_with_the_single_frame_count_merge_only_their_own_frame():
    # DTM_p = 1: every frame of a segment is an anchor taking ctx targets, which the authors merge within its frame
    video = random_video(4, 5, seed=3)
    grid = video.grid + video.grid[:1]  # frames alike, so that tokens have near twins in other frames
    video = VideoTokens(grid, importance=video.importance)
    same = {}
    for variant in ("official", "corrected"):
        reducer = FastVID(budget=0.4, dtm_p=1, dyseg_c=1, dyseg_tau=0.0, variant=variant)
        one_segment = reducer.reduce(video, one_scene(4))
        separate = reducer.reduce(video, alternating_scenes(4))
        assert one_segment.info["segment_sizes"] == [4] and separate.info["segment_sizes"] == [1, 1, 1, 1]
        assert torch.equal(one_segment.boxes, separate.boxes)  # the same targets, picked frame by frame
        same[variant] = torch.equal(one_segment.num_patches, separate.num_patches) and torch.allclose(
            one_segment.tokens, separate.tokens, atol=1e-6
        )
    assert same == {"official": True, "corrected": False}  # corrected: tokens feed the segment's nearest target


def test_corrected_keeps_the_context_tokens_the_official_floors_lose():
    video = random_video(5, 6, seed=2)
    knobs = {"budget": 0.5, "stprune_d": 0.5, "dyseg_c": 1, "dyseg_tau": 0.0}  # keep 18 of 36: 9 + 9
    official = FastVID(**knobs).reduce(video, one_scene(5))
    corrected = FastVID(**knobs, variant="corrected").reduce(video, one_scene(5))
    assert official.info["frame_context_counts"] == [22, 0, 0, 0, 22] and official.num_kept == 5 * 9 + 44
    assert corrected.info["frame_context_counts"] == [22, 0, 0, 0, 23] and corrected.num_kept == 5 * 18


def test_without_global_features_dyseg_uses_each_frames_mean_token_and_says_so():
    video = random_video(8, 4, seed=4)
    reducer = FastVID(budget=0.5)
    by_default = reducer(video)
    assert by_default.info["segment_features"] == "frame_mean"
    given = reducer.reduce(video, frame_mean_features(video.grid))
    assert given.info["segment_features"] == "given" and torch.equal(given.tokens, by_default.tokens)
    with pytest.raises(ValueError, match="unknown segment_features 'map_head'; choose one of: frame_mean"):
        FastVID(segment_features="map_head")


@pytest.mark.parametrize("variant", ["official", "corrected"])
def test_budget_one_keeps_every_token_unchanged(variant):
    video = random_video(8, 4)
    reduction, everything = FastVID(budget=1.0, variant=variant)(video), keep_everything(video)
    assert torch.equal(reduction.tokens, everything.tokens) and torch.equal(reduction.boxes, everything.boxes)
    assert torch.equal(reduction.num_patches, everything.num_patches)
    assert reduction.info["retention_ratio"] == 1.0 and reduction.info["variant"] == variant


def test_the_registry_builds_it_and_each_reduction_records_the_knobs_and_the_achieved_ratio():
    reducer = build_reducer("fastvid", budget=0.25)
    assert reducer.stage is Stage.VISION and reducer.needs == {"importance"}
    generator = torch.Generator().manual_seed(5)
    grid = torch.randn(8, 14, 14, 64, generator=generator)
    reduction = reducer(VideoTokens(grid, importance=torch.rand(8, 14, 14, generator=generator)))
    assert reduction.info == {**reduction.info, "retention_ratio": 0.25, "DySeg_c": 8, "DySeg_tau": 0.9,
                              "STPrune_d": 0.4, "DTM_p": 4, "DTM_beta": 0.6, "variant": "official",
                              "frame_salient_num": 30, "frame_context_num": 19}  # fmt: skip
    assert reduction.info["segment_sizes"] == [1] * 8  # i.i.d. frames: T = c single-frame segments
    assert reduction.num_kept == 8 * 49 and reduction.kept_ratio == 0.25
    slots = flat_positions(reduction.boxes, 14, 14)
    assert bool((slots[1:] > slots[:-1]).all()) and bool((reduction.boxes[:, 3:] - reduction.boxes[:, 1:3] == 1).all())
    assert int(reduction.num_patches.sum()) == 8 * 196  # single frames: each non-salient token feeds one target
    assert reduction.reducer_ms > 0


def test_bad_input_names_the_problem():
    video = random_video(8, 14, channels=4)
    for budget in (0.0, 1.5):
        with pytest.raises(ValueError, match=r"budget must lie in \(0, 1\]"):
            FastVID(budget=budget)
    with pytest.raises(ValueError, match="unknown FastVID variant 'paper'"):
        FastVID(variant="paper")
    with pytest.raises(ValueError, match="dtm_p must be >= 1"):
        FastVID(dtm_p=0)
    with pytest.raises(ValueError, match="needs importance"):
        FastVID()(VideoTokens(video.grid))
    with pytest.raises(ValueError, match="none is a context token"):
        FastVID(budget=0.01)(video)  # keep int(1.96) = 1, context int(0.4) = 0
    with pytest.raises(ValueError, match="needs 156 context targets but its frame has only 137"):
        FastVID(budget=0.5, dyseg_c=1, dyseg_tau=0.0).reduce(video, one_scene(8))  # 8 frames, 2 anchors: 8 · 39 / 2
    with pytest.raises(ValueError, match="at least 4 non-salient tokens per frame, got 3"):
        FastVID(budget=0.5, stprune_d=0.5, dyseg_c=1)(random_video(2, 2))  # 2 of 4 kept: 1 salient, 1 context
    with pytest.raises(ValueError, match=r"global_features must have shape \[T, Cg\] with T = 8"):
        FastVID().reduce(video, torch.ones(7, 2))
    with pytest.raises(ValueError, match=r"importance must have shape \[T, H, W\]"):
        fastvid(video.grid, video.importance[:, :3], torch.ones(8, 2))


def test_a_video_shorter_than_dyseg_c_has_a_segment_per_frame():
    video = random_video(8, 14, channels=4)
    short = FastVID()(VideoTokens(video.grid[:5], importance=video.importance[:5]))
    assert short.info["segment_sizes"] == [1] * 5
    assert dynamic_segments(torch.randn(8, 3), 8, 0.9).tolist() == list(range(8))  # the same at T = DySeg_c
