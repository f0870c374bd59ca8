"""HoliTom: reference vectors, DP segments and their ties, static merging, budgets, both variants, the inner merge."""

from __future__ import annotations

import importlib.util
import os
import shutil
import sys
import types
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from baselines import check_golden
from baselines.holitom import (
    HoliTom,
    HoliTomInner,
    adjusted_retain_ratio,
    dpc_knn_centres,
    frame_similarity,
    holitom_outer,
    inner_merge,
    insert_newlines,
    merge_into_kept,
    row_newlines,
    segment_frames,
    split_ranking,
    static_runs,
    static_slot_counts,
    token_counts,
    true_positions,
)
from sttm.adapters.points import reduction_point
from sttm.adapters.tiny import tiny_model
from sttm.api import Stage, VideoTokens, build_reducer, flat_positions, keep_everything, reduce_like

GOLDEN = (Path(__file__).resolve().parents[1] / ".." / "shared" / "golden" / "holitom").resolve()
needs_golden = pytest.mark.skipif(not GOLDEN.is_dir(), reason=f"reference vectors not found at {GOLDEN}")


def randn(*shape: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def scenes(frames: int, height: int, width: int, channels: int, cuts=(), noise=0.05, seed=0) -> torch.Tensor:
    """[T, H, W, C] frames that repeat one background (plus noise) until each scene cut, then draw a new one."""
    generator = torch.Generator().manual_seed(seed)
    grid = torch.empty(frames, height, width, channels)
    background = torch.randn(height, width, channels, generator=generator)
    for t in range(frames):
        if t in cuts:
            background = torch.randn(height, width, channels, generator=generator)
        grid[t] = background + noise * torch.randn(height, width, channels, generator=generator)
    return grid


@needs_golden
def test_every_reference_case_passes(capsys):
    assert check_golden.main([str(GOLDEN)]) == 0
    assert capsys.readouterr().out.strip().splitlines()[-1] == "23 passed, 0 failed"


@needs_golden
@pytest.mark.parametrize("case, key", [("case003", "segments"), ("case018", "merge_target")])
def test_reference_check_fails_on_wrong_segments_or_merge_targets(tmp_path, capsys, case, key):
    data = dict(np.load(GOLDEN / f"{case}.npz"))
    data[key] = data[key][::-1].copy() if key == "segments" else data[key] + 1
    np.savez(tmp_path / f"{case}.npz", **data)
    assert check_golden.main([str(tmp_path)]) == 1
    assert f"FAIL {key} differ" in capsys.readouterr().out


@needs_golden
def test_the_corrected_variant_departs_from_the_authors_outputs():
    data = dict(np.load(GOLDEN / "case018.npz"))  # 157 image tokens: clusters absorb up to 9 members in sequence
    params = {"image_token_start": 14, "image_token_length": 157, "HOLITOM_r": 0.5}
    hidden, attention = torch.from_numpy(data["hidden_states"]), torch.from_numpy(data["attention"])
    official, _, _ = inner_merge(hidden, attention, *params.values())
    corrected, _, _ = inner_merge(hidden, attention, *params.values(), variant="corrected")
    assert (official - torch.from_numpy(data["features"])).abs().max() <= 1e-5
    assert (corrected - torch.from_numpy(data["features"])).abs().max() > 1e-3


def test_identical_frames_form_one_segment_whose_slots_are_averaged_into_its_first_frame():
    frame = torch.randn(3, 3, 8)
    grid = frame.expand(4, 3, 3, 8).clone()
    reduction = HoliTom(budget=0.25)(VideoTokens(grid, importance=torch.rand(4, 3, 3)))
    # 4 frames x 9 slots, all static: the DP saves 27, r' = min(0.25 · 36 / 9, 1) = 1 keeps the 9 averaged slots
    assert reduction.info["segments"] == [[0, 3]] and reduction.info["total_reduced"] == 27
    assert reduction.info["retain_ratio_adjusted"] == 1 and reduction.info["static_tokens"] == 9
    assert flat_positions(reduction.boxes, 3, 3).tolist() == list(range(9))
    assert torch.equal(reduction.tokens, frame.reshape(9, 8)) and reduction.num_patches.tolist() == [4] * 9


def test_a_static_token_weighs_its_centre_by_beta_and_its_members_by_the_rest_each_averaged_over_time():
    grid = scenes(4, 4, 4, 16, noise=0.01)
    reduction = HoliTom(budget=0.1, tau=0.8)(VideoTokens(grid, importance=torch.rand(4, 4, 4)))
    # every slot static over the 4 frames: the DP saves 48 of 64, r' = 0.1 · 64 / 16 = 0.4 keeps 6 of 16 points
    assert reduction.info["segments"] == [[0, 3]] and reduction.info["static_tokens"] == reduction.num_kept == 6
    members, weights = reduction.members, reduction.member_weights
    assert bool((members >= 0).all())  # each slot's point joined a centre
    totals = torch.zeros(reduction.num_kept).index_add_(0, members, weights)
    assert torch.allclose(totals, torch.ones(6))
    joined = reduction.num_patches // 4 - 1  # points joining each centre
    on_centre = weights[flat_positions(reduction.boxes, 4, 4)]  # a centre's weight on its slot in the first frame
    assert bool((joined > 0).any()) and torch.allclose(on_centre, torch.where(joined > 0, 0.6, 1.0) / 4)
    assert torch.allclose(reduce_like(reduction, grid), reduction.tokens, atol=1e-6)


def test_frames_without_static_slots_keep_their_most_attended_slots_in_slot_order():
    grid, importance = randn(3, 4, 5, 64), torch.rand(3, 4, 5)  # cosines of random 64-d vectors stay far below τ
    reduction = HoliTom(budget=0.1)(VideoTokens(grid, importance=importance))
    assert reduction.info["segments"] == [[0, 0], [1, 1], [2, 2]] and reduction.info["retain_ratio_adjusted"] == 0.1
    kept = flat_positions(reduction.boxes, 4, 5)
    expected = [sorted((importance[t].flatten().topk(2).indices + 20 * t).tolist()) for t in range(3)]  # ceil(2.0)
    assert kept.tolist() == sum(expected, [])
    assert torch.equal(reduction.tokens, grid.reshape(-1, 64)[kept]) and reduction.num_patches.tolist() == [1] * 6


def test_one_token_order_puts_each_segments_static_tokens_before_its_frames_dynamic_ones():
    grid = scenes(4, 3, 3, 64, cuts=(2,), noise=0.01)
    grid[:, 0, 0] = randn(4, 64)  # one slot changes every frame: dynamic everywhere
    importance = torch.rand(4, 3, 3)
    video = VideoTokens(grid, importance=importance)
    one_token = HoliTom(budget=0.6, tau=0.8)(video)  # r' = min(0.6 · 36 / 20, 1) = 1: every slot stays
    assert one_token.info["segments"] == [[0, 1], [2, 3]]
    assert flat_positions(one_token.boxes, 3, 3).tolist() == [1, 2, 3, 4, 5, 6, 7, 8, 0, 9, *range(19, 27), 18, 27]
    grid_mode = HoliTom(budget=0.6, tau=0.8, newline_position="grid")(video)
    assert torch.equal(flat_positions(grid_mode.boxes, 3, 3), flat_positions(one_token.boxes, 3, 3).sort().values)


def test_the_dp_segmentation_keeps_the_shorter_window_on_a_tie():
    # three frames of 4 slots: slots 0-1 static over frames 0-1, slots 2-3 over frames 1-2, none over all three
    counts = np.array([[4, 2, 0], [4, 2, 0]])
    segments, saved = segment_frames(counts, max_window_size=1024)
    assert segments.tolist() == [[0, 1], [2, 2]] and saved == 2  # [0], [1, 2] saves 2 as well
    assert segment_frames(np.array([[4, 2, 0], [4, 3, 0]]), 1024)[0].tolist() == [[0, 0], [1, 2]]
    assert segment_frames(counts, max_window_size=1)[0].tolist() == [[0, 0], [1, 1], [2, 2]]


def test_static_counts_come_from_runs_of_similar_consecutive_frames():
    similarity = torch.tensor([[0.9, 0.9, 0.1], [0.9, 0.1, 0.9]])  # 3 frames, 3 slots
    runs = static_runs(similarity, 0.8)
    assert runs.tolist() == [[2, 1, 0], [1, 0, 1]]
    assert static_slot_counts(runs).tolist() == [[3, 2, 1], [3, 2, 0]]
    assert static_runs(torch.tensor([[0.8]]), 0.8).tolist() == [[0]]  # strictly above τ
    grid = torch.randn(2, 5, 4)
    assert torch.allclose(frame_similarity(grid), F.cosine_similarity(grid[0], grid[1], dim=-1)[None])


def test_the_budget_maps_to_the_retain_ratio_and_the_scripts_threshold():
    assert adjusted_retain_ratio(0.1, 1000, 500) == 0.2 and adjusted_retain_ratio(0.5, 1000, 600) == 1
    dynamic, static = token_counts(np.array([0, 5]), np.array([5, 5]), 0.5, "official")
    assert dynamic.tolist() == [3, 3] and static.tolist() == [0, 2]  # ceil(2.5) and round(2.5), half to even
    assert HoliTom(budget=0.1).tau == 0.65 and HoliTom(budget=0.25).tau == 0.8 and HoliTom(0.1, tau=0.7).tau == 0.7
    reduction = HoliTom(budget=0.15)(VideoTokens(torch.randn(2, 2, 2, 4), importance=torch.rand(2, 2, 2)))
    assert reduction.info | {"RETAIN_RATIO": 0.15, "T": 0.8, "BETA": 0.6, "D": 0.0, "K": 7} == reduction.info
    assert reduction.info["HOLITOM_k"] == 18 and reduction.info["HOLITOM_r"] == 0.5


def test_the_registry_builds_it_and_a_realistic_grid_keeps_about_the_budget():
    reducer = build_reducer("holitom", budget=0.25)
    assert reducer.stage is Stage.VISION and reducer.needs == {"importance"} and not reducer.query_aware
    video = VideoTokens(randn(8, 14, 14, 64), importance=torch.rand(8, 14, 14))
    reduction = reducer(video)
    assert reduction.kept_ratio == 0.25  # no static slot: each frame keeps ceil(196 · 0.25) = 49
    grid = scenes(8, 14, 14, 64, cuts=(3, 6), noise=0.3)
    reduction = reducer(VideoTokens(grid, importance=torch.rand(8, 14, 14)))
    assert reduction.info["segments"] == [[0, 2], [3, 5], [6, 7]] and reduction.info["static_tokens"] > 0
    assert abs(reduction.kept_ratio - 0.25) < 0.01 and reduction.reducer_ms > 0
    assert flat_positions(reduction.boxes, 14, 14).unique().numel() == reduction.num_kept
    assert int(reduction.num_patches.sum()) <= 8 * 196


def test_budget_one_keeps_everything_unchanged():
    grid = torch.randn(1, 2, 2, 4).expand(3, 2, 2, 4).clone()  # static slots, which the authors' code still averages
    video = VideoTokens(grid, importance=torch.rand(3, 2, 2))
    for reducer in (HoliTom(budget=1.0), HoliTomInner(budget=1.0)):
        reduction, everything = reducer(video), keep_everything(video)
        assert torch.equal(reduction.tokens, everything.tokens) and torch.equal(reduction.boxes, everything.boxes)
        assert "HOLITOM_k" in reduction.info


def test_corrected_rounds_the_dynamic_count_like_the_static_one():
    video = VideoTokens(randn(2, 1, 5, 64), importance=torch.rand(2, 1, 5))  # no static slot: 5 dynamic a frame
    assert HoliTom(budget=0.5)(video).num_kept == 6  # ceil(2.5) per frame
    assert HoliTom(budget=0.5, variant="corrected")(video).num_kept == 4  # round(2.5), half to even


def test_corrected_takes_the_density_over_k_neighbours_not_over_as_many_as_centres():
    # two identical frames of 5 static slots, outliers at slots 0 and 4 around a tight cluster; r' = 0.2 asks for
    # round(5 · 0.2) = 1 centre, so the authors' k = min(K, 1) = 1 makes every density 1
    points = torch.tensor([[5.0, 1.0], [-0.1, 1.0], [0.0, 1.0], [0.1, 1.0], [-5.0, 1.0]])
    video = VideoTokens(points.expand(2, 1, 5, 2).clone(), importance=torch.rand(2, 1, 5))
    official, corrected = HoliTom(budget=0.1)(video), HoliTom(budget=0.1, variant="corrected")(video)
    assert official.boxes[:, 2].tolist() == [0]  # equal densities: the lower slot counts as denser
    assert torch.allclose(official.tokens, torch.tensor([[0.6 * 5 + 0.4 * -5 / 4, 1.0]]))  # β · centre + (1 − β) · mean
    assert corrected.boxes[:, 2].tolist() == [2] and torch.allclose(corrected.tokens, torch.tensor([[0.0, 1.0]]))
    assert official.num_patches.tolist() == corrected.num_patches.tolist() == [10]
    valid, one = torch.ones(1, 5, dtype=torch.bool), torch.tensor([1])
    chosen, _ = dpc_knn_centres(points[None, :, :1], valid, one, neighbours=torch.tensor([5]), max_neighbours=5)
    assert chosen.flatten().tolist() == [False, False, True, False, False]


def test_grid_mode_newlines_follow_rows_with_tokens_and_need_a_square_grid_in_the_official_variant():
    assert row_newlines(torch.tensor([0, 1, 3, 9, 11]), 3, 3).tolist() == [False, True, True, False, True]
    assert row_newlines(torch.tensor([0, 2, 3, 5]), 2, 3, "corrected").tolist() == [False, True, False, True]
    with pytest.raises(ValueError, match="need a square grid in the official variant"):
        row_newlines(torch.tensor([0, 2, 3, 5]), 2, 3)
    video = VideoTokens(torch.randn(1, 2, 3, 4), importance=torch.rand(1, 2, 3))
    with pytest.raises(ValueError, match="need a square grid"):
        HoliTom(budget=0.5, newline_position="grid")(video)
    assert HoliTom(budget=0.5, newline_position="grid", variant="corrected")(video).num_kept == 3
    tokens, token_idx = insert_newlines(torch.ones(3, 2), torch.tensor([0, 1, 4]), torch.tensor([False, True, True]),
                                        torch.zeros(2))  # fmt: skip
    assert token_idx.tolist() == [0, 1, -1, 4, -1] and tokens[:, 0].tolist() == [1, 1, 0, 1, 0]


def test_the_inner_merge_is_a_running_pairwise_average_officially_and_a_mean_when_corrected():
    states = torch.tensor([[[4.0, 0.0], [0.0, 4.0], [4.0, 4.0]]])
    scores = torch.tensor([[0.9, 0.05, 0.05]])
    official = merge_into_kept(states, scores, kept_count=1)
    assert official.states.tolist() == [[[3.0, 3.0]]]  # ((h + x1) / 2 + x2) / 2 = h/4 + x1/4 + x2/2
    assert merge_into_kept(states[:, [0, 2, 1]], scores, 1).states.tolist() == [[[2.0, 3.0]]]  # order matters
    corrected = merge_into_kept(states, scores, kept_count=1, variant="corrected")
    assert torch.allclose(corrected.states, torch.tensor([[[8 / 3, 8 / 3]]]))
    assert official.dropped.tolist() == [[1, 2]] and official.targets.tolist() == [[0, 0]]
    video = VideoTokens(states.view(1, 1, 3, 2), importance=scores.view(1, 1, 3))
    for variant, weights in (("official", [1 / 4, 1 / 4, 1 / 2]), ("corrected", [1 / 3] * 3)):  # as the reducer says
        reduction = HoliTomInner(budget=1 / 3, layer=2, variant=variant)(video)
        assert reduction.members.tolist() == [0, 0, 0]
        assert torch.allclose(reduction.member_weights, torch.tensor(weights))
        assert torch.allclose(reduce_like(reduction, video.grid), reduction.tokens)


def test_the_inner_merge_ranks_every_row_by_row_0_officially_and_by_its_own_when_corrected():
    states = torch.randn(2, 3, 4)
    scores = torch.tensor([[0.8, 0.1, 0.1], [0.1, 0.1, 0.8]])
    assert merge_into_kept(states, scores, 1).kept.tolist() == [[0]]
    assert merge_into_kept(states, scores, 1, "corrected").kept.tolist() == [[0], [2]]


def test_the_inner_merge_joins_the_most_similar_kept_token_and_keeps_positions():
    states = torch.tensor([[[1.0, 0.0], [0.0, 1.0], [0.9, 0.1], [0.1, 0.9], [1.0, 0.2]]])
    merge = merge_into_kept(states, torch.tensor([[0.3, 0.25, 0.1, 0.2, 0.15]]), kept_count=2)
    assert merge.kept.tolist() == [[0, 1]] and merge.dropped.tolist() == [[2, 3, 4]]
    assert merge.targets.tolist() == [[0, 1, 0]] and merge.members.tolist() == [[2, 1]]
    hidden = torch.cat([torch.zeros(1, 2, 2), states, torch.ones(1, 1, 2)], dim=1)
    attention = torch.cat([torch.zeros(2), torch.tensor([0.3, 0.25, 0.1, 0.2, 0.15]), torch.zeros(1)])
    features, keep, _ = inner_merge(hidden, attention.expand(1, 3, 8), 2, 5, merge_ratio=0.6)  # round(5 · 0.4) = 2
    assert keep.tolist() == [0, 1, 2, 3, 7] and torch.equal(features[0, 2:4], merge.states[0])


def test_the_inner_merge_targets_the_most_similar_kept_token_at_any_kept_count():
    states, scores = randn(2, 40, 6), torch.rand(2, 40, generator=torch.Generator().manual_seed(1))
    for count in (1, 7, 8, 13, 40):  # the similarity's columns are padded to a multiple of 8, then cut
        merge = merge_into_kept(states, scores, count, "corrected")
        for row in range(2):
            kept = scores[row].argsort(descending=True, stable=True)[:count]
            similarity = F.cosine_similarity(states[row, merge.dropped[row], None], states[row, None, kept], dim=-1)
            assert torch.equal(merge.targets[row], kept[similarity.argmax(dim=-1)])
            assert torch.equal(merge.kept[row], kept.sort().values)


def test_the_helpers_that_spare_the_host_a_wait_give_what_nonzero_and_sort_give():
    mask = torch.rand(7, 13, generator=torch.Generator().manual_seed(2)) < 0.4
    assert torch.equal(true_positions(mask, int(mask.sum())), mask.flatten().nonzero().flatten())
    assert true_positions(torch.zeros(3, dtype=torch.bool), 0).tolist() == []
    ranking = torch.stack([torch.randperm(11, generator=torch.Generator().manual_seed(seed)) for seed in (3, 4)])
    kept, rank, dropped = split_ranking(ranking, 4)
    assert torch.equal(kept, ranking[:, :4].sort().values) and torch.equal(dropped, ranking[:, 4:].sort().values)
    assert torch.equal(ranking.gather(1, rank), kept)


def test_the_inner_reducer_acts_at_layer_k_ranking_by_layer_k_minus_1():
    reducer = build_reducer("holitom_inner", budget=0.5)
    assert (reducer.stage, reducer.layer, reducer.importance_lag, reducer.query_aware) == (Stage.LLM_LAYER, 18, 1, True)
    importance = torch.tensor([0.1, 0.9, 0.2, 0.8, 0.3, 0.7, 0.4, 0.6]).view(2, 2, 2)
    reduction = reducer(VideoTokens(torch.randn(2, 2, 2, 4), importance=importance))
    assert flat_positions(reduction.boxes, 2, 2).tolist() == [1, 3, 5, 7] and reduction.num_patches.sum() == 8
    assert reduction.info == {"HOLITOM_k": 18, "HOLITOM_r": 0.5, "variant": "official"}
    inner = HoliTom(budget=0.1, variant="corrected", inner_layer=12, inner_keep=0.3).inner_stage()
    assert (inner.layer, inner.budget, inner.variant) == (12, 0.3, "corrected")
    assert HoliTom(inner_merge=False).inner_stage() is None and "HOLITOM_k" not in HoliTom(inner_merge=False).knobs()


def test_bad_input_names_the_problem():
    for budget in (0.0, 1.5):
        with pytest.raises(ValueError, match=r"budget must lie in \(0, 1\]"):
            HoliTom(budget=budget)
    for params, problem in [
        ({"tau": 1.5}, "tau is a cosine similarity threshold"),
        ({"beta": -0.1}, "beta"),
        ({"neighbours": 0}, "neighbours"),
        ({"max_window_size": 0}, "max_window_size"),
        ({"newline_position": "row"}, "newline_position must be one of"),
        ({"variant": "fixed"}, "variant must be one of"),
        ({"inner_layer": 0}, "layer must be >= 1"),
        ({"inner_keep": 0.0}, "budget must lie in"),
    ]:
        with pytest.raises(ValueError, match=problem):
            HoliTom(**params)
    with pytest.raises(ValueError, match="needs importance"):
        HoliTom()(VideoTokens(torch.randn(2, 2, 2, 3)))
    with pytest.raises(ValueError, match=r"frames must have shape \[T, L, C\]"):
        frame_similarity(torch.randn(4, 3))
    with pytest.raises(ValueError, match=r"needs frames \[T, L, C\] and attention \[T, L\]"):
        holitom_outer(torch.randn(2, 4, 3), torch.rand(2, 5), 0.25, 0.8)
    with pytest.raises(ValueError, match="keeps no token of this 2x1x1 video at budget 0.01"):
        HoliTom(budget=0.01)(VideoTokens(torch.ones(2, 1, 1, 3), importance=torch.rand(2, 1, 1)))
    with pytest.raises(ValueError, match=r"keeps round\(n \* 0.4\) = 0 of n = 1"):
        HoliTomInner(budget=0.4)(VideoTokens(torch.randn(1, 1, 1, 3), importance=torch.rand(1, 1, 1)))
    with pytest.raises(ValueError, match="must keep between 1 and 3 tokens"):
        merge_into_kept(torch.randn(1, 3, 2), torch.rand(1, 3), 0)
    with pytest.raises(ValueError, match=r"image span \[5, 15\) must lie inside the sequence of 10"):
        inner_merge(torch.randn(1, 10, 2), torch.rand(1, 2, 10), 5, 10, 0.5)
    with pytest.raises(ValueError, match=r"attention must have shape \[B, heads, L\]"):
        inner_merge(torch.randn(1, 10, 2), torch.rand(1, 10), 0, 10, 0.5)


def test_runs_in_llava_onevision_at_the_vision_point():
    model = tiny_model("llava_onevision")
    ids = torch.tensor([[10, 11, *[model.config.video_token_id] * (2 * 64 + 1), 12, 13]])
    pixels = torch.randn(1, 2, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    with torch.no_grad(), reduction_point(model, HoliTom(budget=0.25, inner_layer=2)) as log:
        output = model.generate(input_ids=ids, pixel_values_videos=pixels, max_new_tokens=2, do_sample=False)
    assert output.shape[1] == ids.shape[1] + 2 and log.last.kept_ratio == 0.25  # distinct frames: 16 of 64 each
    assert log.inner.last.num_input == 32 and log.inner.last.num_kept == 16  # then its merge at layer 2, keeping half


def authors_class(checkout: str, monkeypatch):
    """The authors' ``LlavaMetaForCausalLM_holitom`` from a checkout, with the LLaVA modules it imports stubbed (the
    functions used here need none of them)."""
    stubs = {
        "llava": {},
        "llava.constants": dict.fromkeys(
            ["IGNORE_INDEX", "IMAGE_TOKEN_INDEX", "DEFAULT_IMAGE_PATCH_TOKEN", "DEFAULT_IM_START_TOKEN"]
            + ["DEFAULT_IM_END_TOKEN"]
        ),
        "llava.mm_utils": {"get_anyres_image_grid_shape": None},
        "llava.utils": {"rank0_print": print, "rank_print": print},
    }
    for name, attributes in stubs.items():
        module = types.ModuleType(name)
        module.__dict__.update(attributes)
        monkeypatch.setitem(sys.modules, name, module)
    spec = importlib.util.spec_from_file_location("holitom_authors_arch", Path(checkout) / "holitom" / "llava_arch.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.LlavaMetaForCausalLM_holitom


def authors_outer(authors, frames, attention, ratio, tau, newline_position):
    """The video branch of the authors' ``prepare_inputs_labels_for_multimodal`` on pooled frames [T, L, C]."""
    num_frames, slots, _ = frames.shape
    unit = F.normalize(frames, p=2, dim=-1)
    similarity = F.cosine_similarity(unit[:-1], unit[1:], dim=-1)
    windows, saved = authors.select_static_windows(similarity, num_frames, tau, 1024)
    ratio = min(ratio / ((num_frames * slots - saved) / (num_frames * slots)), 1)
    static, dynamic, _, dynamic_attention, static_pos, dynamic_pos = authors.get_static_dynamic_features(
        frames, attention, windows, similarity, tau
    )
    features = []
    for i, (start, end) in enumerate(windows):
        segment = static[i], dynamic[i], dynamic_attention[i], static_pos[i], dynamic_pos[i], end - start + 1
        features.append(authors.holitom(*segment, ratio, 0.0, 0.6, 7, frames.dtype, newline_position))  # D, β, K
    return torch.cat(features), [list(window) for window in windows]


def lower_slots_denser(shape, dtype=torch.float32, **kwargs):
    """In place of the authors' ``torch.rand`` tie-breaking noise: larger for lower slots, so that of equal densities
    the lower slot is the denser, as here (0.3e-6 apart: above float32 spacing, below the data's gaps)."""
    return (torch.arange(shape[-1], 0, -1, dtype=dtype, **kwargs) * 0.3).expand(shape).clone()


@pytest.mark.skipif("HOLITOM_AUTHORS" not in os.environ, reason="HOLITOM_AUTHORS: a cokeshao/HoliTom checkout")
def test_the_outer_stage_gives_what_the_authors_code_gives(monkeypatch):
    cls = authors_class(os.environ["HOLITOM_AUTHORS"], monkeypatch)
    authors = cls.__new__(cls)
    generator = torch.Generator().manual_seed(0)
    few_centres = 0
    for trial in range(80):
        frames = int(torch.randint(1, 13, (1,), generator=generator))
        side = int(torch.randint(3, 8, (1,), generator=generator))
        cuts = tuple(torch.randint(1, max(2, frames), (2,), generator=generator).tolist())
        grid = scenes(frames, side, side, 12, cuts, float(torch.rand(1, generator=generator)) * 0.6, seed=trial)
        attention = torch.rand(frames, side, side, generator=generator)
        ratio = (0.1, 0.15, 0.25, 0.5)[trial % 4]
        newline_position = ("one_token", "grid")[trial % 2]
        newline = torch.randn(12, generator=generator)
        reduction = HoliTom(budget=ratio, tau=0.8, newline_position=newline_position)(
            VideoTokens(grid, importance=attention)
        )
        # k = m <= 2: mutual nearest neighbours have equal densities, which the noise orders
        few_centres += any(0 < m <= 2 for m in reduction.info["static_tokens_per_segment"])
        features = reduction.tokens
        if newline_position == "grid":
            token_idx = flat_positions(reduction.boxes, side, side)
            features, _ = insert_newlines(features, token_idx, row_newlines(token_idx, side, side), newline)
        authors.model = SimpleNamespace(image_newline=newline)
        with monkeypatch.context() as patch:
            patch.setattr(torch, "rand", lower_slots_denser)
            inputs = grid.reshape(frames, side * side, 12), attention.reshape(frames, -1)
            theirs, windows = authors_outer(authors, *inputs, ratio, 0.8, newline_position)
        assert reduction.info["segments"] == windows
        assert features.shape == theirs.shape and (features - theirs).abs().max() <= 1e-5
    assert few_centres >= 5


@needs_golden
def test_reference_check_refuses_an_unknown_method(tmp_path):
    shutil.copy(GOLDEN / "case017.npz", tmp_path / "case017.npz")
    case = dict(np.load(tmp_path / "case017.npz"))
    case["params"] = np.array(str(case["params"]).replace('"holitom_inner"', '"holitom_pruning"'))
    np.savez(tmp_path / "case017.npz", **case)
    with pytest.raises(ValueError, match="no baseline check for method 'holitom_pruning'"):
        check_golden.main([str(tmp_path)])
