"""The reducer protocol: registry and its discovery through entry points, budgets, timing."""

from __future__ import annotations

import math

import pytest
import torch

from sttm import api
from sttm.api import Reducer, Reduction, Stage, VideoTokens, available_reducers, build_reducer, check_budget
from sttm.reducer import STTM


def test_sttm_is_found_by_name():
    assert "sttm" in available_reducers()
    reducer = build_reducer("sttm", threshold=0.8, temporal_threshold=0.6)
    assert isinstance(reducer, STTM) and reducer.stage is Stage.LLM_LAYER and reducer.layer == 2
    assert not reducer.query_aware


HALF = """
import torch
from sttm.api import Reducer, Stage, keep_subset, register


@register("first_half")
class FirstHalf(Reducer):
    stage = Stage.PRE_LLM

    def reduce(self, video):
        return keep_subset(video, torch.arange(video.num_tokens // 2))
"""


def test_a_package_named_by_an_entry_point_of_the_group_has_each_module_registered(tmp_path, monkeypatch):
    (tmp_path / "more_reducers").mkdir()
    (tmp_path / "more_reducers" / "__init__.py").write_text("")
    (tmp_path / "more_reducers" / "half.py").write_text(HALF)
    info = tmp_path / "more_reducers-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: more-reducers\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(f"[{api.ENTRY_POINT_GROUP}]\nmore = more_reducers\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(api, "_REGISTRY", dict(api._REGISTRY))
    monkeypatch.setattr(api, "_discovered", False)
    assert "first_half" in available_reducers()
    reduction = build_reducer("first_half")(VideoTokens(torch.randn(2, 2, 2, 4)))
    assert reduction.num_kept == 4 and type(build_reducer("first_half")).__module__ == "more_reducers.half"


def test_an_unknown_reducer_name_lists_the_choices():
    with pytest.raises(ValueError, match=r"unknown reducer 'sttn'; choose one of: .*sttm"):
        build_reducer("sttn")


@pytest.mark.parametrize("budget", [0, -0.1, 1.0001, math.nan])
def test_budgets_outside_zero_one_are_refused(budget):
    with pytest.raises(ValueError, match=r"budget must lie in \(0, 1\]"):
        check_budget(budget)


def test_calling_a_reducer_times_it_and_reports_the_achieved_ratio():
    clip = VideoTokens(torch.randn(4, 14, 14, 16))
    result = STTM(threshold=0.5, temporal_threshold=0.3)(clip)
    assert result.reducer_ms > 0 and math.isfinite(result.reducer_ms)
    assert result.kept_ratio == result.num_kept / (4 * 14 * 14)


def test_query_aware_reducers_need_the_question():
    class AskFirst(Reducer):
        name = "ask-first"
        stage = Stage.LLM_LAYER
        query_aware = True

        def reduce(self, video: VideoTokens) -> Reduction:
            return Reduction(video.grid.reshape(-1, video.grid.shape[-1]), torch.zeros(0, 5), torch.zeros(0), 1)

    with pytest.raises(ValueError, match="query-aware"):
        AskFirst()(VideoTokens(torch.randn(1, 2, 2, 4)))


def test_importance_must_match_the_grid():
    with pytest.raises(ValueError, match=r"importance must have shape \[T, H, W\]"):
        VideoTokens(torch.randn(2, 4, 4, 8), importance=torch.rand(2, 4, 5))


@pytest.mark.parametrize("budget", [True, False, "abc", "0.5", None])
def test_a_budget_that_is_not_a_number_is_named(budget):
    with pytest.raises(ValueError, match="budget must be a number in"):
        check_budget(budget)


@pytest.mark.parametrize("name", ["importance", "keys"])
def test_non_finite_evidence_is_refused(name):
    grid = torch.randn(2, 3, 3, 4)
    evidence = torch.rand(2, 3, 3) if name == "importance" else torch.randn(2, 3, 3, 5)
    evidence[1, 2, 0] = math.nan
    with pytest.raises(ValueError, match=f"{name} holds non-finite values"):
        VideoTokens(grid, **{name: evidence})


@pytest.mark.parametrize("name", ["sttm", "tome", "vidcom2", "evs", "pool", "random"])
def test_float64_grids_are_reduced_and_budget_one_keeps_every_token(name):
    grid = torch.randn(4, 6, 6, 16, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    half = build_reducer(name, budget=0.5)(VideoTokens(grid))
    assert half.tokens.dtype == torch.float64 and 0 < half.num_kept < grid.shape[:3].numel()
    assert build_reducer(name, budget=1.0)(VideoTokens(grid)).num_kept == grid.shape[:3].numel()
