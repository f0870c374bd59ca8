"""scripts/profile_sttm_search.py on a model's grid, shrunk: the tiny Qwen3-VL in place of Qwen3-VL-8B, on the CPU."""

from __future__ import annotations

from test_latency import tiny_architecture

from scripts import profile_sttm_search
from sttm.adapters.real_size import ARCHITECTURES
from sttm.adapters.tiny import tiny_config


def test_the_search_is_profiled_on_the_grid_a_model_hands_sttm_at_its_layer(monkeypatch, capsys):
    monkeypatch.setitem(ARCHITECTURES, "qwen3_vl_8b", tiny_architecture("qwen3_vl"))
    monkeypatch.setattr("sttm.adapters.real_size.real_size_config", lambda name: tiny_config("qwen3_vl"))
    video = profile_sttm_search.model_video("qwen3_vl_8b", 8, "cpu")
    config = tiny_config("qwen3_vl")
    assert video.grid.shape[0] == 8 // config.vision_config.temporal_patch_size  # temporal patches
    assert video.grid.shape[-1] == config.text_config.hidden_size and video.grid.dtype.is_floating_point
    argv = ["--model", "qwen3_vl_8b", "--frames", "8", "--budgets", "0.5", "--variants", "official", "--device", "cpu"]
    assert profile_sttm_search.main(argv) == 0
    printed = capsys.readouterr().out
    assert "qwen3_vl_8b's layer 3 at 8 frames" in printed
    budget_row = next(line for line in printed.splitlines() if line.startswith("official budget=0.5"))
    assert budget_row.split()[-1] == "yes"  # the thresholds of a one-at-a-time bisection
