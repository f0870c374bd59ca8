"""Shipped configs: the authors' STTM thresholds and the reducer sweep."""

from __future__ import annotations

import pytest
from omegaconf import OmegaConf

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
