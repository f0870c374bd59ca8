"""FlashVID: the authors' reference vectors, the budget mapping, each quirk of the official variant against the
corrected one, the pruning inside the LLM, and the reducer in the model."""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from triton_interpreter import interpreted

from baselines import check_golden
from baselines.flashvid import (
    FlashVID,
    FlashVIDLLM,
    calibrated_distances,
    child_counts,
    cluster_counts,
    fastv_prune,
    frame_budget,
    select_diverse,
    smallest,
    split_budget,
    temporal_merges,
    tree_roots,
    tree_sums,
)
from sttm.adapters.points import reduction_point
from sttm.adapters.tiny import tiny_model
from sttm.api import Stage, VideoTokens, build_reducer, flat_positions, keep_everything, reduce_like
from sttm.device_work import device_work
from sttm.synthetic import redundant_video

GOLDEN = (Path(__file__).resolve().parents[1] / ".." / "shared" / "golden" / "flashvid").resolve()
needs_golden = pytest.mark.skipif(not GOLDEN.is_dir(), reason=f"FlashVID reference vectors not found at {GOLDEN}")


def video(frames: int = 4, side: int = 4, channels: int = 32, seed: int = 0) -> VideoTokens:
    generator = torch.Generator().manual_seed(seed)
    grid = torch.randn(frames, side, side, channels, generator=generator)
    return VideoTokens(grid, importance=torch.rand(frames, side, side, generator=generator))


def repeated(frame: torch.Tensor, frames: int) -> torch.Tensor:
    """[N, C] -> [frames, N, C] copies."""
    return frame.expand(frames, *frame.shape).clone()


@needs_golden
@pytest.mark.parametrize(("folder", "summary"), [("", "17 passed, 0 failed"), ("llm_prune", "3 passed, 0 failed")])
def test_every_reference_case_passes(folder, summary, capsys):
    assert check_golden.main([str(GOLDEN / folder)]) == 0
    assert capsys.readouterr().out.strip().splitlines()[-1] == summary


@needs_golden
def test_reference_check_fails_on_wrong_features_or_kept_positions(tmp_path, capsys):
    case = dict(np.load(GOLDEN / "case007.npz"))
    case["features"] = case["features"] + np.float32(1e-4)
    np.savez(tmp_path / "case007.npz", **case)
    pruned = dict(np.load(GOLDEN / "llm_prune" / "case000.npz"))
    pruned["keep_indices"] = pruned["keep_indices"][::-1].copy()
    np.savez(tmp_path / "case008.npz", **pruned)
    assert check_golden.main([str(tmp_path)]) == 1
    out = capsys.readouterr().out.strip().splitlines()
    assert "FAIL max feature diff 1.00e-04" in out[0] and "FAIL keep_indices differs" in out[1]
    assert out[-1] == "0 passed, 2 failed"


def test_rows_sharing_a_slot_may_come_in_either_order_and_no_others():
    features = torch.tensor([[1.0], [2.0], [3.0], [4.0]])
    token_idx = torch.tensor([0, 5, 5, 7])
    swapped_tie = features[[0, 2, 1, 3]]
    assert check_golden.max_diff_up_to_tied_rows(swapped_tie, features, token_idx) == 0.0
    swapped_distinct = features[[0, 1, 3, 2]]
    assert check_golden.max_diff_up_to_tied_rows(swapped_distinct, features, token_idx) == 1.0


@pytest.mark.parametrize(
    ("retention", "budget", "selected", "merged"),
    [(0.25, 62, 44, 18), (0.20, 49, 35, 14), (0.15, 37, 26, 11), (0.10, 25, 18, 7), (0.50, 123, 87, 36)],
)
def test_the_authors_retention_ratio_maps_to_the_per_frame_counts_of_their_table(retention, budget, selected, merged):
    assert frame_budget(196, retention, "authors", 1.25) == budget
    assert split_budget(budget, 0.7) == (selected, merged)


def test_the_budget_is_the_vision_side_ratio_unless_read_as_the_authors_retention_ratio():
    direct, authors = FlashVID(budget=0.25).knobs(196), FlashVID(budget=0.25, budget_mode="authors").knobs(196)
    assert (direct["tokens_per_frame"], direct["vision_ratio"], direct["retention_ratio"]) == (49, 0.25, 0.2)
    assert (authors["tokens_per_frame"], authors["vision_ratio"], authors["retention_ratio"]) == (62, 0.3125, 0.25)
    assert FlashVID().knobs(196)["tokens_per_frame"] == 62  # the default is the authors' default r = 0.25


def test_from_the_registry_on_a_realistic_grid_it_keeps_about_the_budget_and_records_its_knobs():
    reducer = build_reducer("flashvid", budget=0.25)
    assert reducer.stage is Stage.VISION and reducer.needs == {"importance"}
    tokens = video(frames=8, side=14, channels=64)
    reduction = reducer(tokens)
    per_frame = math.ceil(196 * 0.25)
    assert 8 * per_frame <= reduction.num_kept <= 8 * per_frame + 8  # each frame's cluster count rounds up
    assert reduction.kept_ratio == reduction.num_kept / (8 * 196) and reduction.reducer_ms > 0
    positions = flat_positions(reduction.boxes, 14, 14)
    assert torch.equal(positions, positions.sort().values)  # the authors' order: by slot
    assert torch.equal(reduction.boxes[:, 3:] - reduction.boxes[:, 1:3], torch.ones(reduction.num_kept, 2).long())
    assert reduction.info["num_attn_div_tokens"] == 35 and reduction.info["num_sttm_tokens"] == 14
    assert sum(reduction.info["segment_lengths"]) == 8 and reduction.info["pruning_layer"] == 20


def test_a_frame_repeated_merges_into_its_first_copy():
    frame = torch.randn(16, 32, generator=torch.Generator().manual_seed(1))
    grid = repeated(frame, 2).reshape(2, 4, 4, 32)
    importance = repeated(torch.rand(16, generator=torch.Generator().manual_seed(2)), 2).reshape(2, 4, 4)
    # 13 tokens a frame: 10 selected, 3 merged; the 6 tokens not selected of frame 0 absorb their copies, and with
    # 3·2 merged tokens for those 6 roots no clustering is left to do
    reduction = FlashVID(budget=13 / 16, do_segment=False)(VideoTokens(grid, importance=importance))
    positions = flat_positions(reduction.boxes, 4, 4)
    selected = positions[(positions >= 16)] - 16
    assert reduction.num_kept == 26 and len(selected) == 10
    roots = positions[(positions < 16) & ~torch.isin(positions, selected)]
    assert len(roots) == 6 and reduction.num_patches[torch.isin(positions, roots)].tolist() == [2] * 6
    assert torch.equal(reduction.tokens, grid.reshape(32, 32)[positions])  # (x + x) / 2 and copies of the selected


def test_official_roots_are_tree_sums_over_one_plus_their_children_corrected_ones_tree_means():
    frame = torch.randn(3, 4)
    frames, parent = repeated(frame, 3), torch.arange(3).expand(3, 3)
    merged = torch.tensor([[False] * 3, [True] * 3, [True] * 3])  # a chain over three frames at each slot
    sums = tree_sums(frames, merged, parent, [3])
    assert torch.allclose(sums[0], 3 * frame)
    assert child_counts(merged, parent, torch.float32)[0].tolist() == [1.0] * 3
    assert torch.allclose(sums[0] / (child_counts(merged, parent, torch.float32)[0, :, None] + 1), 1.5 * frame)
    assert torch.bincount(tree_roots(merged, parent, 3), minlength=9).tolist() == [3, 3, 3] + [0] * 6


def test_official_roots_are_inflated_corrected_ones_are_means_in_the_reducer():
    frame = torch.randn(16, 32, generator=torch.Generator().manual_seed(3))
    grid = repeated(frame, 3).reshape(3, 4, 4, 32)
    importance = repeated(torch.rand(16, generator=torch.Generator().manual_seed(4)), 3).reshape(3, 4, 4)
    tokens = VideoTokens(grid, importance=importance)
    # 10 tokens a frame: 7 selected, 3 merged; 9 roots in frame 0 each take a chain of two copies, none clustered
    for variant, scale in (("official", 1.5), ("corrected", 1.0)):
        reduction = FlashVID(budget=10 / 16, do_segment=False, variant=variant)(tokens)
        roots = reduction.num_patches == 3
        positions = flat_positions(reduction.boxes, 4, 4)
        assert reduction.num_kept == 3 * 7 + 9 and int(roots.sum()) == 9 and bool((positions[roots] < 16).all())
        assert torch.allclose(reduction.tokens[roots], scale * frame[positions[roots]])
        assert torch.equal(reduction.tokens[~roots], grid.reshape(48, 32)[positions[~roots]])
        # its members say so: each of a root's 3 copies weighs scale / 3
        in_root = roots[reduction.members]
        assert torch.allclose(reduction.member_weights[in_root], torch.full((27,), scale / 3))
        assert torch.allclose(reduce_like(reduction, grid), reduction.tokens, atol=1e-6)


def test_the_soft_floor_keeps_one_token_more_than_the_floor_officially_and_exactly_the_floor_corrected():
    similarity = torch.tensor([[-1.0, -1.0, -1.0, -1.0], [0.9, 0.95, 0.85, 0.99]])  # all would merge at 0.8
    segment, position = torch.zeros(2, dtype=torch.long), torch.arange(2)
    # 3 tokens a frame over 2 frames: at least 6 of the 8 stay; merging all 4 of frame 1 would keep 4
    official, soft = temporal_merges(similarity, segment, position, [2], 3, 0.8)
    corrected, _ = temporal_merges(similarity, segment, position, [2], 3, 0.8, exact_floor=True)
    assert soft.tolist() == [True]
    assert official[1].tolist() == [False, False, False, True] and int((~official).sum()) == 7
    assert corrected[1].tolist() == [False, True, False, True] and int((~corrected).sum()) == 6


def test_a_long_static_segment_keeps_one_token_more_officially():
    generator = torch.Generator().manual_seed(4)
    grid = torch.randn(1, 4, 4, 32, generator=generator) + 0.01 * torch.randn(16, 4, 4, 32, generator=generator)
    tokens = VideoTokens(grid, importance=torch.rand(1, 4, 4, generator=generator).expand(16, 4, 4))
    # 4 tokens a frame (3 selected): merging at 0.8 would keep 16 + 15·3 of the 64 the segment may keep
    official = FlashVID(budget=0.25, do_segment=False)(tokens)
    corrected = FlashVID(budget=0.25, do_segment=False, variant="corrected")(tokens)
    assert official.info["soft_threshold_segments"] == corrected.info["soft_threshold_segments"] == 1
    assert (official.num_kept, corrected.num_kept) == (16 * 4 + 1, 16 * 4)


def test_one_frame_segments_cluster_the_selected_tokens_again_officially_not_corrected():
    tokens = video(frames=4, side=6)  # 4 frames < min_segment_num 8: every frame is its own segment
    official, corrected = FlashVID(budget=0.3)(tokens), FlashVID(budget=0.3, variant="corrected")(tokens)
    assert official.info["segment_lengths"] == corrected.info["segment_lengths"] == [1, 1, 1, 1]
    selected, merged = official.info["num_attn_div_tokens"], official.info["num_sttm_tokens"]
    assert int(official.num_patches.sum()) == 4 * (36 + selected)  # the selected tokens count twice
    assert int(corrected.num_patches.sum()) == 4 * 36
    # so an official selected token's slot is in two tokens, and cannot name one
    assert official.members is None and official.info["shared_patches"] == 4 * selected
    assert corrected.info["shared_patches"] == 0
    assert torch.allclose(reduce_like(corrected, tokens.grid), corrected.tokens, atol=1e-6)
    positions = flat_positions(corrected.boxes, 6, 6)
    assert len(positions.unique()) == len(positions) == 4 * (selected + merged)


def test_official_v2_selection_may_pick_a_token_twice_corrected_never():
    distances = torch.tensor([[[0.0, -5.0, -0.5], [5.0, 0.0, -1.0], [0.5, -1.0, 0.0]]])  # columns 1, 2 negative
    assert select_diverse(distances, 2, exclude_selected=False).tolist() == [[0, 0]]
    assert select_diverse(distances, 2, exclude_selected=True).tolist() == [[0, 2]]


def selection_cases() -> list[tuple[str, torch.Tensor, int, bool]]:
    """(name, [T, N, N] float32 distances, count, exclude_selected): ADTS's calibrated distances (negative columns
    where the v2 relevance is), integer distances full of ties, sizes around the kernels' blocks, both rules."""
    generator = torch.Generator().manual_seed(3)
    cases = []
    for size in (2, 7, 33, 196, 300):
        tokens = torch.randn(4, size, 16, generator=generator)
        attention = torch.rand(4, size, generator=generator) / size
        relevance = torch.randn(4, size, generator=generator)
        for kind, distances in (("v1", calibrated_distances(tokens, attention)),
                                ("v2", calibrated_distances(tokens, attention, relevance))):  # fmt: skip
            for count in sorted({1, 2, min(size - 1, 12)}):
                cases += [(f"{kind} n={size} count={count} exclude={rule}", distances, count, rule)
                          for rule in (True, False)]  # fmt: skip
    ties = torch.randint(-2, 3, (3, 40, 40), generator=generator).float()
    cases += [(f"ties count={count} exclude={rule}", ties, count, rule) for count in (5, 39) for rule in (True, False)]
    return cases


SELECTION_CASES = selection_cases()
SELECTION_UNDER_THE_TRITON_INTERPRETER = """
import sys
import torch
from baselines.maxmin import most_diverse
cases = torch.load(sys.argv[1])
torch.save([most_diverse(d, count, exclude_chosen=rule).sort(dim=1).values for d, count, rule in cases], sys.argv[2])
"""


@pytest.mark.skipif(importlib.util.find_spec("triton") is None, reason="Triton is not installed")
def test_the_selection_kernels_pick_as_the_torch_loop(tmp_path):
    """ADTS's selection on CUDA (``baselines.maxmin``'s kernels, run here by Triton's interpreter) picks what
    ``select_diverse``'s torch loop picks, with and without excluding the picks."""
    outputs = interpreted(SELECTION_UNDER_THE_TRITON_INTERPRETER, [case[1:] for case in SELECTION_CASES], tmp_path)
    for (name, distances, count, rule), picks in zip(SELECTION_CASES, outputs, strict=True):
        assert torch.equal(picks, select_diverse(distances, count, exclude_selected=rule)), name


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_the_selection_on_a_gpu_picks_as_the_torch_loop_on_the_cpu():
    for name, distances, count, rule in SELECTION_CASES:
        on_gpu = select_diverse(distances.cuda(), count, exclude_selected=rule)
        assert torch.equal(on_gpu.cpu(), select_diverse(distances, count, exclude_selected=rule)), name


def test_the_smallest_values_are_topks_repeats_and_signed_zeros_included_and_the_input_is_kept():
    values = torch.randint(-3, 4, (3, 9, 11), generator=torch.Generator().manual_seed(5)).float()
    values[0, 0] = -0.0
    before = values.clone()
    for dim, count in ((1, 2), (-1, 7), (0, 3)):
        assert torch.equal(smallest(values, count, dim), values.topk(count, dim=dim, largest=False).values)
    assert torch.equal(values, before) and bool(values[0, 0].signbit().all())


def test_the_host_reads_the_device_only_for_the_segments_the_cluster_counts_and_the_info_counts():
    tokens = VideoTokens(redundant_video(12, 6, 6, 32), importance=torch.rand(12, 6, 6))
    for variant in ("official", "corrected"):
        work = device_work(lambda v=variant: FlashVID(budget=0.3, variant=v).reduce(tokens), cuda=False)
        # .item(): the segments' count, the slots in two tokens, the soft segments; .tolist(): lengths, clusters
        assert (work["item/bool"], work["nonzero"], work["tolist"]) == (3, 0, 2)


def test_official_cluster_counts_round_up_in_floating_point_corrected_exactly():
    valid = torch.ones(1, 196, dtype=torch.bool)
    segment = torch.zeros(1, dtype=torch.long)
    assert 196 * (53 / 196) > 53
    assert cluster_counts(valid, segment, [1], 53).tolist() == [54]
    assert cluster_counts(valid, segment, [1], 53, exact=True).tolist() == [53]


def test_budget_one_and_budgets_of_every_token_keep_everything_unchanged():
    tokens = video()
    everything = keep_everything(tokens)
    for reducer in (FlashVID(budget=1.0), FlashVID(budget=0.8, budget_mode="authors"), FlashVID(budget=0.97)):
        reduction = reducer(tokens)
        assert torch.equal(reduction.tokens, everything.tokens) and torch.equal(reduction.boxes, everything.boxes)
        assert torch.equal(reduction.num_patches, everything.num_patches)
        assert reduction.info["tokens_per_frame"] >= 16


def test_the_input_is_not_modified():
    tokens = video(frames=8, side=6)
    grid = tokens.grid.clone()
    FlashVID(budget=0.25, do_segment=False)(tokens)
    assert torch.equal(tokens.grid, grid)


def test_bad_input_names_the_problem():
    for budget in (0.0, 1.5):
        with pytest.raises(ValueError, match=r"budget must lie in \(0, 1\]"):
            FlashVID(budget=budget)
    with pytest.raises(ValueError, match=r"alpha .* must lie in \(0, 1\]"):
        FlashVID(alpha=0.0)
    with pytest.raises(ValueError, match=r"temporal_threshold .* must lie in \[-1, 1\)"):
        FlashVID(temporal_threshold=1.0)
    with pytest.raises(ValueError, match="selection must be one of attn_div, attn_div_v2"):
        FlashVID(selection="div")
    with pytest.raises(ValueError, match="variant must be one of official, corrected"):
        FlashVID(variant="fixed")
    with pytest.raises(ValueError, match="budget_mode must be one of direct, authors"):
        FlashVID(budget_mode="average")
    with pytest.raises(ValueError, match="needs importance"):
        FlashVID()(VideoTokens(torch.randn(2, 4, 4, 8)))
    with pytest.raises(ValueError, match="at least 2 tokens per frame, got a 1x1 grid"):
        FlashVID()(VideoTokens(torch.randn(2, 1, 1, 8), importance=torch.rand(2, 1, 1)))
    with pytest.raises(ValueError, match="layer must be >= 1"):
        FlashVIDLLM(layer=0)
    with pytest.raises(ValueError, match=r"attention must have shape \[heads, 6\]"):
        fastv_prune(torch.randn(6, 4), torch.rand(2, 5), 1, 4, 0.5)
    with pytest.raises(ValueError, match=r"visual span \[3, 8\) must lie in \[0, 6\]"):
        fastv_prune(torch.randn(6, 4), torch.rand(2, 6), 3, 5, 0.5)


def test_pruning_inside_the_llm_keeps_every_text_token_and_the_most_attended_visual_ones_rounded_up():
    hidden = torch.randn(7, 4)
    attention = torch.tensor([[0.1, 0.3, 0.0, 0.2, 0.1, 0.2, 0.1], [0.1, 0.1, 0.2, 0.4, 0.0, 0.1, 0.1]])
    # visual span [1, 6): head means 0.2, 0.1, 0.3, 0.05, 0.15; ceil(5 · 0.3) = 2 of them stay
    keep, states, positions = fastv_prune(hidden, attention, 1, 5, 0.3)
    assert keep.tolist() == [0, 1, 3, 6] and torch.equal(states, hidden[keep]) and torch.equal(positions, keep)
    _, _, given = fastv_prune(hidden, attention, 1, 5, 0.3, position_ids=torch.arange(7) + 10)
    assert given.tolist() == [10, 11, 13, 16]


def test_the_inner_stage_is_fastvs_ranking_with_flashvids_rounding_and_can_be_switched_off():
    inner = FlashVID(llm_layer=28, llm_keep=0.1).inner_stage()
    assert isinstance(inner, FlashVIDLLM) and (inner.layer, inner.budget, inner.importance_lag) == (28, 0.1, 1)
    assert FlashVID(llm_prune=False).inner_stage() is None
    assert FlashVID(llm_prune=False).knobs(196)["pruning_layer"] is None
    importance = torch.tensor([0.5, 0.1, 0.9, 0.3, 0.7, 0.2, 0.8]).reshape(1, 1, 7)
    reduction = build_reducer("flashvid_llm")(VideoTokens(torch.randn(1, 1, 7, 3), importance=importance))
    assert flat_positions(reduction.boxes, 1, 7).tolist() == [2, 4, 6]  # ceil(7 · 0.3) = 3, where int() gives 2
    assert reduction.info == {"llm_retention_ratio": 0.3, "pruning_layer": 20}


def test_runs_in_llava_onevision_at_the_vision_point():
    model = tiny_model("llava_onevision")
    ids = torch.tensor([[10, 11, *[model.config.video_token_id] * (2 * 64 + 1), 12, 13]])
    pixels = torch.randn(1, 2, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    with torch.no_grad(), reduction_point(model, FlashVID(budget=0.25, llm_layer=2)) as log:
        output = model.generate(input_ids=ids, pixel_values_videos=pixels, max_new_tokens=2, do_sample=False)
    reduction = log.last.reductions[0]
    assert output.shape[1] == ids.shape[1] + 2 and reduction.num_input == 128
    assert 2 * 16 <= reduction.num_kept <= 2 * 17  # 16 a frame, one more where a cluster count rounds up
    assert log.inner.last.num_input == reduction.num_kept  # then its pruning at layer 2, on those tokens


def test_the_shipped_config_builds_the_reducer_with_the_authors_defaults():
    config = OmegaConf.load(Path(__file__).resolve().parents[1] / "configs" / "reducers" / "flashvid.yaml")
    reducer = build_reducer(config.name, budget=0.3125, **OmegaConf.to_container(config.params, resolve=True))
    assert reducer.knobs(196) == FlashVID().knobs(196)


def test_a_single_frame_is_one_segment_of_selected_tokens_and_clusters():
    reduction = FlashVID(budget=0.25)(video(frames=1, side=6))
    selected, merged = split_budget(9, 0.7)
    assert reduction.info["segment_lengths"] == [1] and reduction.num_kept in (selected + merged, selected + merged + 1)
