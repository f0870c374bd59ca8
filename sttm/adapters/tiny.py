"""Tiny models of the real architectures, built offline from configs, for tests and the offline suite."""

from __future__ import annotations

import torch
from transformers import LlavaOnevisionConfig, LlavaOnevisionForConditionalGeneration

VIDEO_TOKEN_ID = 299


def tiny_llava_onevision(seed: int = 0, attn_implementation: str = "sdpa") -> LlavaOnevisionForConditionalGeneration:
    """SigLIP (112 px, 14 px patches: a 4x4 pooled grid per frame) + a 4-layer Qwen2, random weights, float32."""
    config = LlavaOnevisionConfig(
        vision_config=dict(
            model_type="siglip_vision_model", hidden_size=32, intermediate_size=64, num_hidden_layers=2,
            num_attention_heads=2, image_size=112, patch_size=14,
        ),
        text_config=dict(
            model_type="qwen2", hidden_size=64, intermediate_size=128, num_hidden_layers=4, num_attention_heads=4,
            num_key_value_heads=2, vocab_size=300, max_position_embeddings=2048,
        ),
        image_token_id=VIDEO_TOKEN_ID - 1, video_token_id=VIDEO_TOKEN_ID, vision_feature_layer=-1,
        image_grid_pinpoints=[[112, 112]],
    )  # fmt: skip
    config._attn_implementation = attn_implementation
    torch.manual_seed(seed)
    return LlavaOnevisionForConditionalGeneration(config).eval()
