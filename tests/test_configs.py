"""Shipped configs: the authors' STTM thresholds, the model configs, the reducers' layers."""

from __future__ import annotations

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from runners.evaluate import CONFIGS, reducer_config, reducer_params
from sttm.adapters.loading import MODEL_CLASSES
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
    assert reducer_params(cfg, reducer_config("sttm"))["layer"] == layer
    assert "layer" not in reducer_params(cfg, reducer_config("vidcom2"))  # acts before the LLM


def compose_evaluate(*overrides: str):
    with initialize_config_dir(config_dir=str(CONFIGS), version_base="1.3"):
        return compose(config_name="evaluate", overrides=list(overrides))
