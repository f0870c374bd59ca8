"""Shipped configs: each reducer config under its own name, the authors' STTM thresholds composed as data, the
paper experiments, the model configs, the reducers' layers."""

from __future__ import annotations

import pytest

from runners.evaluate import plan_cells
from runners.records import FULL_TOKENS
from runners.settings import CONFIGS, compose_evaluate, setting_params
from sttm.adapters.loading import MODEL_CLASSES
from sttm.paper import paper_params

REDUCER_CONFIGS = sorted(path.stem for path in (CONFIGS / "reducers").glob("*.yaml"))


@pytest.mark.parametrize("name", REDUCER_CONFIGS)
def test_each_reducer_config_is_composed_under_its_own_name(name):
    assert list(compose_evaluate(f"reducers=[{name}]").reducers) == [name]  # its `# @package reducers.<name>`


def paper_table():
    return compose_evaluate("reducers=[sttm_paper]").reducers.sttm_paper.paper


def test_paper_table_has_every_setting_of_the_authors_scripts():
    table = paper_table().thresholds
    rows = [(model, bench) for model in table for bench in table[model]]
    assert len(rows) == 16  # STTM_SPEC.md §4: 6 + 6 + 3 + 1 model x benchmark rows
    assert all(set(table[m][b]) == {"0.5", "0.3"} for m, b in rows)


def test_paper_params_are_the_tuned_thresholds_and_layer():
    assert paper_params(paper_table(), "llava_video_7b", "vnbench", 0.3) == {
        "threshold": 0.8, "temporal_threshold": 0.6, "layer": 2
    }  # fmt: skip
    assert paper_params(paper_table(), "llava_video_72b", "videomme", 0.5)["layer"] == 0


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
        paper_params(paper_table(), model, benchmark, budget)


@pytest.mark.parametrize("experiment", sorted(path.stem for path in (CONFIGS / "experiment").glob("paper_*.yaml")))
def test_each_paper_experiment_plans_sttm_at_the_authors_settings_before_any_work(experiment, tmp_path):
    cfg = compose_evaluate(f"experiment={experiment}", f"results_dir={tmp_path}")
    cells = [cell for cell in plan_cells(cfg) if cell.reducer == "sttm_paper"]
    assert cells and all(cell.build_reducer().threshold is not None for cell in cells)
    table = paper_table()
    for cell in cells:
        thresholds = table.thresholds[cfg.model.name][cell.benchmark.name]["0.5"]
        assert (cell.params["threshold"], cell.params["temporal_threshold"]) == tuple(thresholds)
        assert cell.params["layer"] == table.layers[cfg.model.name] and "budget" not in cell.params
    assert not list(tmp_path.iterdir())


MODEL_KEYS = {"name", "pretrained", "family", "dtype", "attn_implementation", "device", "device_map", "llm_layer",
              "target_fps", "max_frames", "max_new_tokens"}  # fmt: skip


@pytest.mark.parametrize("model", sorted(p.stem for p in (CONFIGS / "model").glob("*.yaml")))
def test_every_model_config_composes_with_every_key_the_runner_reads(model):
    cfg = compose_evaluate(f"model={model}")
    assert MODEL_KEYS <= set(cfg.model) and cfg.model.name == model
    assert cfg.model.family in MODEL_CLASSES and set(cfg.model.max_frames) == {"default", "needle"}


@pytest.mark.parametrize(("model", "layer"), [("llava_video_7b", 2), ("qwen2_vl_7b", 2), ("llava_video_72b", 0)])
def test_llm_layer_reducers_act_at_the_models_layer_unless_their_config_names_one(model, layer):
    cfg = compose_evaluate(f"model={model}")
    assert setting_params(cfg.reducers.sttm, cfg.model, 0.5)["layer"] == layer
    assert "layer" not in setting_params(cfg.reducers.vidcom2, cfg.model, 0.5)  # acts before the LLM
    cfg = compose_evaluate(f"model={model}", "+reducers.sttm.params.layer=5")
    assert setting_params(cfg.reducers.sttm, cfg.model, 0.5)["layer"] == 5


def test_the_qwen3_vl_comparison_plans_its_reducers_at_a_quarter_of_the_tokens(tmp_path):
    cfg = compose_evaluate("experiment=vidcom2_qwen3_vl_8b", f"results_dir={tmp_path}")
    reducers = {cell.reducer for cell in plan_cells(cfg)}
    assert reducers == {FULL_TOKENS, "visionzip", "fastvid", "holitom", "vidcom2", "sttm"}
    assert cfg.budget == 0.25 and cfg.model.name == "qwen3_vl_8b" and cfg.model.max_frames.default == 32
    # the variants Qwen3-VL can cut DeepStack's features by, before its DeepStack layers
    assert cfg.reducers.fastvid.params.variant == "corrected" and cfg.reducers.holitom.params.inner_merge is False
