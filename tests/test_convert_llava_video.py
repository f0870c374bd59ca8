"""The LLaVA-NeXT → LlavaOnevision converter on a fabricated tiny checkpoint in the original key layout."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import save_file
from transformers import LlavaOnevisionConfig, LlavaOnevisionForConditionalGeneration

from scripts.convert_llava_video_to_hf import convert
from sttm.adapters.tiny import VOCAB, tiny_tokenizer

VISION = dict(hidden_size=32, intermediate_size=64, num_attention_heads=2, image_size=56, patch_size=14)
TEXT = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
            vocab_size=len(VOCAB), max_position_embeddings=512, rms_norm_eps=1e-6, tie_word_embeddings=False,
            hidden_act="silu")  # fmt: skip


def reference_model() -> LlavaOnevisionForConditionalGeneration:
    """The model the conversion must give, built directly in transformers' format with random weights."""
    config = LlavaOnevisionConfig(
        vision_config={"model_type": "siglip_vision_model", **VISION, "num_hidden_layers": 2, "vision_use_head": False},
        text_config={"model_type": "qwen2", **TEXT, "rope_parameters": {"rope_type": "default", "rope_theta": 1e6}},
        vision_feature_layer=-1, vision_feature_select_strategy="full", image_token_id=VOCAB["<image>"],
        video_token_id=VOCAB["<video>"],
    )  # fmt: skip
    torch.manual_seed(0)
    return LlavaOnevisionForConditionalGeneration(config).eval()


def original_name(name: str) -> str:
    """transformers' module name → the LLaVA-NeXT checkpoint's key, written out case by case."""
    if name.startswith("model.vision_tower."):
        return "model.vision_tower.vision_tower.vision_model." + name[len("model.vision_tower.") :]
    if name.startswith("model.multi_modal_projector.linear_1."):
        return "model.mm_projector.0." + name.split(".")[-1]
    if name.startswith("model.multi_modal_projector.linear_2."):
        return "model.mm_projector.2." + name.split(".")[-1]
    if name.startswith("model.language_model."):
        return "model." + name[len("model.language_model.") :]
    return name  # lm_head.weight, model.image_newline


@pytest.fixture
def original(tmp_path):
    """An original-format checkpoint folder of ``reference_model``'s weights, in two shards, with a tokenizer."""
    model = reference_model()
    weights = {original_name(name): tensor.contiguous() for name, tensor in model.state_dict().items()}
    names = sorted(weights)
    source = tmp_path / "LLaVA-Video-tiny"
    source.mkdir()
    save_file({n: weights[n] for n in names[: len(names) // 2]}, source / "model-00001-of-00002.safetensors")
    save_file({n: weights[n] for n in names[len(names) // 2 :]}, source / "model-00002-of-00002.safetensors")
    config = {"architectures": ["LlavaQwenForCausalLM"], "model_type": "llava", **TEXT, "rope_theta": 1e6,
              "mm_projector_type": "mlp2x_gelu", "mm_hidden_size": VISION["hidden_size"],
              "mm_spatial_pool_mode": "bilinear", "mm_spatial_pool_stride": 2, "mm_newline_position": "no_token",
              "mm_vision_tower": "google/siglip-so400m-patch14-384"}  # fmt: skip
    (source / "config.json").write_text(json.dumps(config))
    (tmp_path / "vision.json").write_text(json.dumps(VISION))
    tiny_tokenizer().save_pretrained(source)
    return source, model


def test_the_converted_model_computes_what_the_hand_built_one_does(original, tmp_path):
    source, reference = original
    output = convert(source, tmp_path / "converted", dtype="float32", vision_config=tmp_path / "vision.json")
    converted = LlavaOnevisionForConditionalGeneration.from_pretrained(output).eval()
    ids = torch.tensor([[10, 11, *[VOCAB["<video>"]] * (2 * 4 + 1), 12, 13]])  # 2 frames of 2x2 pooled + newline
    pixels = torch.randn(1, 2, 3, 56, 56, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = reference(input_ids=ids, pixel_values_videos=pixels).logits
        actual = converted(input_ids=ids, pixel_values_videos=pixels).logits
    assert (expected - actual).abs().max() <= 1e-5
    assert converted.config.llava_newline_position == "no_token"
    assert json.loads((output / "conversion.json").read_text())["mm_newline_position"] == "no_token"
    assert (output / "processor_config.json").is_file() or (output / "preprocessor_config.json").is_file()


def test_unrepresentable_settings_and_bad_folders_are_refused_leaving_nothing(original, tmp_path):
    source, _ = original
    config = json.loads((source / "config.json").read_text())
    (source / "config.json").write_text(json.dumps(config | {"mm_projector_type": "mlp3x_gelu"}))
    with pytest.raises(ValueError, match="projector type 'mlp3x_gelu' has no LlavaOnevision equivalent"):
        convert(source, tmp_path / "out")
    (source / "config.json").write_text(json.dumps(config | {"mm_spatial_pool_mode": "average"}))
    with pytest.raises(ValueError, match="video pooling 'average'"):
        convert(source, tmp_path / "out")
    (source / "config.json").write_text(json.dumps(config))
    next(source.glob("model-00002*")).unlink()
    with pytest.raises(ValueError, match="missing"):
        convert(source, tmp_path / "out", vision_config=tmp_path / "vision.json")
    assert not (tmp_path / "out").exists() and not list(tmp_path.glob(".out.*"))
    with pytest.raises(ValueError, match="no config.json"):
        convert(tmp_path, tmp_path / "out")


def test_an_existing_output_is_refused(original, tmp_path):
    source, _ = original
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "file").write_text("x")
    with pytest.raises(ValueError, match="exists and is not empty"):
        convert(source, tmp_path / "taken")
