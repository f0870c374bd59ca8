"""LLaVA-OneVision's pooling on the channels-last view gives transformers' values exactly, on one instance only."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from transformers.models.llava_onevision.modeling_llava_onevision import LlavaOnevisionModel

from sttm.adapters.loading import load_model, video_question_prompt
from sttm.adapters.pooling import channels_last_pooling, pool_channels_first, pool_channels_last
from sttm.adapters.tiny import tiny_model

COMMITTED = Path(__file__).resolve().parents[1] / "models" / "tiny_llava_onevision"


def owner(side: int) -> SimpleNamespace:
    """What ``apply_pooling`` reads of its model: a vision config with ``side`` patches per side."""
    return SimpleNamespace(config=SimpleNamespace(vision_config=SimpleNamespace(image_size=14 * side, patch_size=14)))


@pytest.mark.parametrize("side", [27, 16, 5])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_channels_last_pooling_equals_transformers_pooling(side, dtype):
    features = torch.randn(6, side * side, 40, generator=torch.Generator().manual_seed(side)).to(dtype)
    expected = LlavaOnevisionModel.apply_pooling(owner(side), features)
    pooled = channels_last_pooling(owner(side), features)
    assert pooled.shape == expected.shape == (6, ((side + 1) // 2) ** 2, 40)
    assert torch.equal(pooled, expected)


def test_installed_on_one_instance_and_removed_again():
    model, other = tiny_model("llava_onevision"), tiny_model("llava_onevision")
    pool_channels_last(model)
    assert model.model.apply_pooling.__func__ is channels_last_pooling
    assert other.model.apply_pooling.__func__ is LlavaOnevisionModel.apply_pooling
    assert LlavaOnevisionModel.apply_pooling is not channels_last_pooling
    pool_channels_first(model)
    assert model.model.apply_pooling.__func__ is LlavaOnevisionModel.apply_pooling


def test_qwen_models_are_left_as_they_are():
    model = tiny_model("qwen2_vl")
    pool_channels_last(model)
    assert "apply_pooling" not in vars(model.model)


@pytest.mark.skipif(not COMMITTED.is_dir(), reason=f"the committed tiny model is not at {COMMITTED}")
def test_features_and_generated_tokens_are_identical_with_and_without_it():
    fast, processor = load_model(str(COMMITTED), dtype="float32", attn_implementation="sdpa")
    plain, _ = load_model(str(COMMITTED), dtype="float32", attn_implementation="sdpa", channels_last_pooling=False)
    assert "apply_pooling" in vars(fast.model) and "apply_pooling" not in vars(plain.model)
    video = np.random.default_rng(0).integers(0, 255, (8, 224, 224, 3), dtype=np.uint8)
    inputs = processor(text=video_question_prompt(processor, "what colour is the square ?"), videos=[video],
                       return_tensors="pt")  # fmt: skip
    with torch.no_grad():
        features = [
            m.model.get_video_features(
                inputs["pixel_values_videos"], vision_feature_layer=m.config.vision_feature_layer,
                vision_feature_select_strategy=m.config.vision_feature_select_strategy,
            )
            for m in (fast, plain)
        ]  # fmt: skip
        outputs = [m.generate(**inputs, max_new_tokens=6, do_sample=False) for m in (fast, plain)]
    first, second = (f.pooler_output if hasattr(f, "pooler_output") else f for f in features)
    assert torch.equal(torch.as_tensor(first), torch.as_tensor(second))
    assert torch.equal(outputs[0], outputs[1])
