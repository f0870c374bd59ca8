"""Models at their published sizes with random weights, and the scene-video request, built offline."""

from __future__ import annotations

import pytest
import torch
from small_architecture import SMALL

from sttm.adapters.loading import MODEL_CLASSES
from sttm.adapters.real_size import (
    ARCHITECTURES,
    QWEN2_7B,
    random_model,
    real_size_config,
    request,
    scene_video,
)


@pytest.mark.parametrize(
    ("name", "billions"), [("llava_onevision_7b", 8.03), ("qwen2_vl_7b", 8.29), ("qwen3_vl_8b", 8.77)]
)
def test_architectures_have_the_published_sizes(name, billions):
    with torch.device("meta"):
        model = MODEL_CLASSES[ARCHITECTURES[name].family]._from_config(real_size_config(name))
    assert sum(p.numel() for p in model.parameters()) / 1e9 == pytest.approx(billions, abs=0.02)


@pytest.mark.parametrize(
    ("name", "tokens_per_4_frames"), [("llava_onevision_7b", 4 * 196 + 1), ("qwen2_vl_7b", 512), ("qwen3_vl_8b", 392)]
)
def test_requests_carry_the_models_visual_tokens(name, tokens_per_4_frames):
    inputs = request(name, 4, device="cpu")
    video_token = real_size_config(name).video_token_id
    assert int((inputs["input_ids"] == video_token).sum()) == tokens_per_4_frames


def test_text_sizes_override_the_language_model_and_configs_leave_the_table_alone():
    config = real_size_config("llava_onevision_7b", {"num_hidden_layers": 80, "hidden_size": 8192})
    assert (config.text_config.num_hidden_layers, config.text_config.hidden_size) == (80, 8192)
    assert config.text_config.intermediate_size == QWEN2_7B["intermediate_size"]
    assert config.text_config.rope_parameters["rope_theta"] == 1e6
    config.text_config.rope_parameters["rope_theta"] = 1.0
    again = real_size_config("llava_onevision_7b").text_config
    assert again.num_hidden_layers == QWEN2_7B["num_hidden_layers"] and again.rope_parameters["rope_theta"] == 1e6


def test_an_unknown_architecture_is_named_with_the_choices():
    with pytest.raises(ValueError, match="unknown architecture 'qwen9_vl'.*llava_onevision_7b"):
        real_size_config("qwen9_vl")


def test_random_models_are_bf16_and_the_same_for_the_same_name(monkeypatch):
    monkeypatch.setitem(ARCHITECTURES, "small", SMALL)
    first, second = random_model("small", "sdpa", "cpu"), random_model("small", "sdpa", "cpu")
    assert torch.get_default_dtype() == torch.float32 and not first.training
    assert {p.dtype for p in first.parameters()} == {torch.bfloat16}
    for (name, a), b in zip(first.state_dict().items(), second.state_dict().values(), strict=True):
        assert torch.equal(a, b), name


def test_the_scene_video_repeats_each_scene_for_four_frames():
    video = scene_video(8, 48)
    assert video.shape == (8, 48, 48, 3) and video.dtype == torch.uint8
    same_scene = (video[0].float() - video[3].float()).abs().mean()
    next_scene = (video[3].float() - video[4].float()).abs().mean()
    assert same_scene < 20 < next_scene
    assert torch.equal(video, scene_video(8, 48)) and not torch.equal(video, scene_video(8, 48, seed=1))
