"""``scripts/bench_reducers.py`` on the CPU with ``--model``: the video tokens a small model's vision stage hands a
reducer, and the reducers timed on them."""

from __future__ import annotations

import json

import torch

from scripts import bench_reducers
from sttm.adapters.real_size import ARCHITECTURES, Architecture
from sttm.adapters.tiny import VOCAB

SMALL = Architecture(
    family="llava_onevision",
    frame_size=56,
    vision=dict(model_type="siglip_vision_model", hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                num_attention_heads=2, image_size=56, patch_size=14),
    text=dict(model_type="qwen2", hidden_size=16, intermediate_size=32, num_hidden_layers=1,
              num_attention_heads=2, num_key_value_heads=1, vocab_size=len(VOCAB)),
)  # fmt: skip


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
