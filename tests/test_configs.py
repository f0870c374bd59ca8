"""Shipped configs: the authors' STTM thresholds and the reducer sweep."""

from __future__ import annotations

import pytest
from omegaconf import OmegaConf

from runners.sweep import CONFIGS, sweep
from sttm.paper import PAPER_CONFIG, paper_reducer


def test_paper_table_has_every_setting_of_the_authors_scripts():
    table = OmegaConf.load(PAPER_CONFIG).thresholds
    rows = [(model, bench) for model in table for bench in table[model]]
    assert len(rows) == 16  # STTM_SPEC.md §4: 6 + 6 + 3 + 1 model x benchmark rows
    assert all(set(table[m][b]) == {"0.5", "0.3"} for m, b in rows)


def test_paper_reducer_uses_the_tuned_thresholds_and_layer():
    reducer = paper_reducer("llava_video_7b", "vnbench", 0.3)
    assert (reducer.threshold, reducer.temporal_threshold, reducer.layer, reducer.root_level) == (0.8, 0.6, 2, 1)
    assert paper_reducer("llava_video_72b", "videomme", 0.5).layer == 0


@pytest.mark.parametrize(
    "model, benchmark, budget, problem",
    [
        ("llava_video_8b", "vnbench", 0.5, "no paper setting for model 'llava_video_8b'"),
        ("qwen2_vl_7b", "mlvu", 0.5, "no paper setting for qwen2_vl_7b on 'mlvu'"),
        ("llava_video_7b", "mlvu", 0.15, "not 0.15"),
    ],
)
def test_settings_the_paper_did_not_run_are_refused(model, benchmark, budget, problem):
    with pytest.raises(ValueError, match=problem):
        paper_reducer(model, benchmark, budget)


def sweep_config(**overrides):
    cfg = OmegaConf.load(CONFIGS / "sweep.yaml")
    cfg.video.frames, cfg.video.channels, cfg.repeats = 4, 16, 1
    for key, value in overrides.items():
        OmegaConf.update(cfg, key, value)
    return cfg


def test_sweep_reports_the_achieved_ratio_within_budget():
    table = sweep(sweep_config(budget=0.3))
    row = table.set_index("reducer").loc["sttm"]
    assert row.tokens_in == 4 * 14 * 14 and row.achieved_ratio <= 0.3
    assert row.achieved_ratio == pytest.approx(row.tokens_out / row.tokens_in, abs=1e-4)


def test_sweep_refuses_an_unknown_reducer_before_any_work():
    with pytest.raises(ValueError, match="no reducer config 'stm'.*choose one of: .*sttm"):
        sweep(sweep_config(reducers=["stm"]))


def test_sweep_refuses_a_budget_outside_zero_one():
    with pytest.raises(ValueError, match="budget must lie in"):
        sweep(sweep_config(budget=1.5))
