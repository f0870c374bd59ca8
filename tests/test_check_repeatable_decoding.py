"""scripts/check_repeatable_decoding.py shrunk: the tiny Qwen3-VL in place of Qwen3-VL-8B, on the CPU."""

from __future__ import annotations

from test_latency import tiny_architecture

from scripts import check_repeatable_decoding
from sttm.adapters.real_size import ARCHITECTURES
from sttm.adapters.tiny import tiny_config


def test_repeated_answers_are_compared_call_by_call_with_what_the_reducer_saw(monkeypatch, capsys):
    monkeypatch.setitem(ARCHITECTURES, "qwen3_vl_8b", tiny_architecture("qwen3_vl"))
    monkeypatch.setattr("sttm.adapters.real_size.real_size_config", lambda name: tiny_config("qwen3_vl"))
    argv = ["--model", "qwen3_vl_8b", "--frames", "8", "--calls", "2", "--new-tokens", "3", "--device", "cpu"]
    assert check_repeatable_decoding.main([*argv, "--reducer", "sttm", "--sdpa", "math"]) == 0
    calls = [line for line in capsys.readouterr().out.splitlines() if line.startswith("call ")]
    assert len(calls) == 2 and all(" grid " in line and " kept " in line for line in calls)
    assert calls[0].split("first logits")[1] == calls[1].split("first logits")[1]  # the CPU repeats itself
    assert check_repeatable_decoding.main([*argv, "--reducer", "none"]) == 0
    assert "none at 0.5: 2 of 2 calls as the first" in capsys.readouterr().out
