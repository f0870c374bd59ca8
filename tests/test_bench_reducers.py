"""``scripts/bench_reducers.py`` on the CPU with ``--model``: the video tokens a small model's vision stage hands a
reducer, and the reducers timed on them."""

from __future__ import annotations

import json

import torch
from small_architecture import SMALL

from scripts import bench_reducers
from sttm.adapters.real_size import ARCHITECTURES


def test_the_model_input_is_what_the_vision_stage_hands_a_reducer(monkeypatch, tmp_path):
    monkeypatch.setitem(ARCHITECTURES, "small", SMALL)
    video = bench_reducers.model_video("small", 4, "cpu")
    frames, height, width, channels = video.grid.shape
    assert (frames, channels) == (4, 16) and video.grid.dtype == torch.bfloat16
    assert video.importance.shape == (frames, height, width) and video.keys.shape[:3] == (frames, height, width)
    output = tmp_path / "bench.json"
    assert bench_reducers.main(["--model", "small", "--frames", "4", "--reducers", "flashvid", "evs", "--budgets",
                                "0.5", "--device", "cpu", "--warmup", "0", "--repeats", "1", "--output",
                                str(output)]) == 0  # fmt: skip
    results = json.loads(output.read_text())
    assert results["meta"]["input"] == "small, 4 frames" and results["meta"]["shape"] == list(video.grid.shape)
    assert [row["reducer"] for row in results["rows"]] == ["flashvid", "evs"]
    assert all(len(row["times_ms"]) == 1 and 0 < row["kept"] <= 1 for row in results["rows"])
