"""The real-scale latency benchmark's parts that run without a GPU: reducer list, ceilings, tables, a tiny run."""

from __future__ import annotations

import json

import pytest
import torch

from runners.latency import (
    EvenlySpaced,
    ceiling_rows,
    cut_forward,
    markdown,
    measured_rows,
    plot,
    reducers_at,
    text_positions,
)
from sttm.adapters.family import text_model
from sttm.adapters.loading import MODEL_CLASSES
from sttm.adapters.real_size import ARCHITECTURES, Architecture, request
from sttm.adapters.tiny import FRAME_SIZE, tiny_config
from sttm.api import VideoTokens, flat_positions


def tiny_architecture(family: str) -> Architecture:
    """A name for the tiny model's family and frame size; its sizes come from ``tiny_config`` (patched in)."""
    return Architecture(family, FRAME_SIZE, vision={}, text={})


def test_every_reducer_config_runs_or_says_why_not():
    settings = dict(reducers_at(0.15, "qwen2_vl_7b"))
    assert "sttm" in settings and settings["sttm"].layer == 2
    assert "floor of 25%" in settings["dycoke"]
    assert settings["visionzip"].stage.value == "vision"  # Qwen's ViT attention is read too


def test_inner_stages_act_where_the_benchmarked_model_config_puts_them():
    """The authors' layers for each model, not the tiny model's: HoliTom merges at 18 and FlashVID prunes at 20 in
    LLaVA-OneVision-7B; FlashVID at 28 keeping 10% in Qwen3-VL-8B, and in-LLM methods at its layer 3."""
    llava = dict(reducers_at(0.5, "llava_onevision_7b", ["holitom", "flashvid"]))
    qwen3 = dict(reducers_at(0.5, "qwen3_vl_8b", ["flashvid", "fastv"]))
    assert (llava["holitom"].inner_stage().layer, llava["flashvid"].inner_stage().layer) == (18, 20)
    flashvid_inner = qwen3["flashvid"].inner_stage()
    assert (flashvid_inner.layer, flashvid_inner.budget, qwen3["fastv"].layer) == (28, 0.1, 3)


def test_tables_and_plots_are_written(tmp_path):
    full = dict(model="m", frames=8, method="full tokens", budget=1.0, kept_ratio=1.0, vision_ms=10.0, reducer_ms=0.0,
                prefill_ms=100.0, ttft_ms=120.0, decode_ms_per_token=5.0, peak_memory_mb=2048.0)  # fmt: skip
    reduced = full | dict(method="sttm", budget=0.5, kept_ratio=0.5, prefill_ms=50.0, prefill_speedup=2.0,
                          ttft_speedup=1.5, reducer_share_of_prefill=0.01)  # fmt: skip
    skipped = dict(model="m", frames=8, method="dycoke", budget=0.15, note="below its floor")
    table = markdown([full, reduced, skipped], "## header")
    assert "| m | 8 | sttm | 0.5 | 0.500 |" in table and "2.00 | 1.50 | 1.00% | 100.0% |" in table
    assert "1.00% | 41.2% |" in markdown([reduced | dict(flops_ratio=0.412)], "## header")
    assert "not run: below its floor" in table
    plot([full, reduced, skipped], tmp_path / "plot.png")
    assert (tmp_path / "plot.png").stat().st_size > 0


def test_a_method_measured_at_one_frame_count_only_is_drawn_in_its_panel_alone(tmp_path):
    row = dict(model="m", method="sttm", budget=0.5, kept_ratio=0.5, prefill_speedup=2.0)
    other = row | dict(frames=128, method="fastvid", prefill_speedup=3.0)
    rows = [row | dict(frames=64), row | dict(frames=128), other]
    figure = plot(rows, tmp_path / "plot.png")
    panels = {axis.get_title(): [(line.get_label(), list(line.get_xydata().ravel())) for line in axis.lines]
              for axis in figure.axes}  # fmt: skip
    assert panels == {"m, 64 frames": [("sttm", [0.5, 2.0])],
                      "m, 128 frames": [("fastvid", [0.5, 3.0]), ("sttm", [0.5, 2.0])]}  # fmt: skip


def test_the_whole_benchmark_runs_on_a_tiny_architecture(monkeypatch):
    """The GPU run, shrunk: the tiny LLaVA-OneVision in place of the 7B one, on the CPU, one repeat."""
    monkeypatch.setitem(ARCHITECTURES, "tiny", tiny_architecture("llava_onevision"))
    monkeypatch.setattr("sttm.adapters.real_size.real_size_config", lambda name: tiny_config("llava_onevision"))
    rows = list(measured_rows("tiny", [8], [0.5], repeats=1, attention="sdpa", kv_reuse=2, device="cpu"))
    measured = {row["method"]: row for row in rows if "kept_ratio" in row}
    no_cost = "ceiling: evenly spaced at layer 2, no cost, through the hooks"
    before_llm = "ceiling: evenly spaced before the LLM, no cost, through the hooks"
    methods = {"full tokens", no_cost, before_llm, "sttm", "sttm (fixed thresholds)", "tome", "vidcom2", "dycoke"}
    assert methods <= set(measured)
    assert all(0 < row["kept_ratio"] <= 0.5 + 1e-9 for name, row in measured.items() if name != "full tokens")
    assert measured["full tokens"]["prefill_flops"] > 0
    timed = [row for name, row in measured.items() if name != "full tokens" and "layers_ms" not in row]
    assert timed and all(0 < row["flops_ratio"] < 1 for row in timed)
    assert rows[0]["speedup"] > 0 and rows[0]["reused_prefill_ms_per_question"] > 0
    assert "| tiny | 8 | sttm |" in markdown(rows, "## tiny")


def test_the_qwen3_vl_8b_benchmark_runs_scaled_down(monkeypatch):
    """``--model qwen3_vl_8b`` shrunk to the tiny Qwen3-VL (DeepStack after layers 0 and 1) on the CPU: LLM-layer
    methods at the model config's layer 3, VisionZip and FastVID on the ViT's attention, a stage inside the LLM past
    the shrunk model's layers refused with the reason (PruneVid's at the authors' layer 11)."""
    monkeypatch.setitem(ARCHITECTURES, "qwen3_vl_8b", tiny_architecture("qwen3_vl"))
    monkeypatch.setattr("sttm.adapters.real_size.real_size_config", lambda name: tiny_config("qwen3_vl"))
    names = ["sttm", "tome", "fastv", "vidcom2", "pool", "visionzip", "prunevid", "fastvid"]
    rows = list(
        measured_rows("qwen3_vl_8b", [8], [0.5], repeats=1, attention="sdpa", kv_reuse=2, device="cpu", names=names)
    )
    measured = {row["method"]: row for row in rows if "kept_ratio" in row}
    notes = {row["method"]: row["note"] for row in rows if "note" in row}
    ceilings = {"ceiling: evenly spaced at layer 3, no cost, through the hooks", "ceiling: cut at layer 3"}
    methods = {"full tokens", "sttm", "sttm (fixed thresholds)", "tome", "fastv", "vidcom2", "pool", "visionzip",
               "fastvid"}  # fmt: skip
    assert ceilings | methods <= set(measured)
    assert "layer 11 is out of range" in notes["prunevid"]
    assert all(0 < row["kept_ratio"] <= 0.5 + 1e-9 for name, row in measured.items() if name != "full tokens")
    assert measured["full tokens"]["prefill_flops"] > 0
    timed = [row for name, row in measured.items() if name != "full tokens" and "layers_ms" not in row]
    assert timed and all(0 < row["flops_ratio"] < 1 for row in timed)
    assert rows[0]["speedup"] > 0 and "| qwen3_vl_8b | 8 | sttm |" in markdown(rows, "## qwen3_vl_8b")


@pytest.mark.parametrize("family", ["llava_onevision", "qwen2_vl", "qwen3_vl"])
def test_the_ceiling_forward_is_the_language_model_on_the_kept_tokens(family):
    model = MODEL_CLASSES[family]._from_config(tiny_config(family)).eval()
    language_model = text_model(model)
    embeds = torch.randn(1, 12, language_model.config.hidden_size)
    keep = torch.tensor([0, 1, 4, 5, 9, 11])
    kept_positions = text_positions(language_model, 12, "cpu")[..., keep]
    assert kept_positions.shape == ((1, 6) if family == "llava_onevision" else (3, 1, 6))
    with torch.no_grad():
        whole = language_model(inputs_embeds=embeds).last_hidden_state
        cut_at_input = language_model(inputs_embeds=embeds[:, keep], position_ids=kept_positions).last_hidden_state
        torch.testing.assert_close(cut_forward(language_model, embeds, None, 2), whole)
        torch.testing.assert_close(cut_forward(language_model, embeds, keep, 0), cut_at_input)
        cut_later = cut_forward(language_model, embeds, keep, 1)
    assert cut_later.shape == cut_at_input.shape and not torch.allclose(cut_later, cut_at_input)


@pytest.mark.parametrize("family", ["llava_onevision", "qwen2_vl"])
def test_ceilings_cut_the_video_to_each_budget(monkeypatch, family):
    monkeypatch.setitem(ARCHITECTURES, "tiny", tiny_architecture(family))
    model = MODEL_CLASSES[family]._from_config(tiny_config(family)).eval()
    inputs = request("tiny", 8, device="cpu")
    rows = ceiling_rows("tiny", model, inputs, 8, [0.5, 0.3], repeats=1)
    assert [(row["budget"], row["method"]) for row in rows] == [
        (0.5, "ceiling: cut at the LLM's input"), (0.5, "ceiling: cut at layer 2"),
        (0.3, "ceiling: cut at the LLM's input"), (0.3, "ceiling: cut at layer 2"),
    ]  # fmt: skip
    visual = int((inputs["input_ids"] == model.config.video_token_id).sum())
    assert [row["kept_ratio"] for row in rows] == [round(b * visual) / visual for b in (0.5, 0.5, 0.3, 0.3)]
    assert "decoder layers alone" in markdown(rows, "## tiny")


def test_the_no_cost_reducer_keeps_an_evenly_spaced_share_of_the_grid():
    grid = torch.randn(4, 3, 3, 8)
    reduction = EvenlySpaced(0.25)(VideoTokens(grid))
    assert reduction.num_kept == 9 and reduction.num_patches.sum() == 9
    kept = flat_positions(reduction.boxes, 3, 3)
    assert kept[0] == 0 and kept[-1] == 35 and len(set((kept[1:] - kept[:-1]).tolist())) <= 2
    torch.testing.assert_close(reduction.tokens, grid.reshape(-1, 8)[kept])


def test_a_run_cut_short_keeps_the_rows_it_measured(monkeypatch, tmp_path):
    """The JSON is rewritten after every row, marked incomplete until the last: a run stopped by a time limit
    after two rows leaves those two on disk."""
    import runners.latency as latency

    def two_rows_then_killed(*args, **kwargs):
        yield {"model": "tiny", "frames": 8, "method": "full tokens", "budget": 1.0}
        yield {"model": "tiny", "frames": 8, "method": "sttm", "budget": 0.5, "note": "refused"}
        raise KeyboardInterrupt

    monkeypatch.setattr(latency, "measured_rows", two_rows_then_killed)
    monkeypatch.setattr(latency.torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(latency.torch.cuda, "get_device_name", lambda: "a GPU")
    with pytest.raises(KeyboardInterrupt):
        latency.main(["--model", "llava_onevision_7b", "--output", str(tmp_path / "h200")])
    (written,) = json.loads((tmp_path / "h200.json").read_text())
    assert written["complete"] is False and [row["method"] for row in written["rows"]] == ["full tokens", "sttm"]
    assert not (tmp_path / "h200.md").exists()
