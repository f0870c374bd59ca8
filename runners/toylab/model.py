"""The tiny LLaVA-OneVision the lab trains: its configuration, its grids, and what is done to its weights before
training (loading an earlier run's, silencing the vision tower's attention)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
from transformers import LlavaOnevisionConfig, LlavaOnevisionForConditionalGeneration

from sttm.adapters.family import vision_encoder_layers
from sttm.adapters.tiny import FRAME_SIZE, PATCH_SIZE, placeholder_token_ids, text_config

ROOT = Path(__file__).resolve().parents[2]
MODEL_CONFIG = ROOT / "configs" / "model" / "tiny_llava_onevision.yaml"
TEXT_MODEL = dict(hidden_size=192, intermediate_size=768, num_hidden_layers=8, num_attention_heads=4,
                  num_key_value_heads=4)  # fmt: skip
VISION_TOWER = dict(hidden_size=96, intermediate_size=384, num_hidden_layers=3, num_attention_heads=2)
PATCH_GRID = (FRAME_SIZE // PATCH_SIZE,) * 2
TOKEN_GRID = (PATCH_GRID[0] // 2, PATCH_GRID[1] // 2)  # LLaVA-OneVision pools each frame's patch grid by 2


def toy_config(vision_feature_layer: int = -1) -> LlavaOnevisionConfig:
    """The tiny configuration of ``sttm.adapters.tiny`` with a wider and deeper language model and vision tower."""
    return LlavaOnevisionConfig(
        vision_config=dict(
            model_type="siglip_vision_model", image_size=FRAME_SIZE, patch_size=PATCH_SIZE, vision_use_head=False,
            **VISION_TOWER,
        ),
        text_config=text_config(model_type="qwen2") | TEXT_MODEL,
        vision_feature_layer=vision_feature_layer, vision_feature_select_strategy="full",
        image_grid_pinpoints=[[FRAME_SIZE, FRAME_SIZE]], **placeholder_token_ids("llava_onevision"),
    )  # fmt: skip


def is_vision_encoder_weight(name: str) -> bool:
    return "vision_tower." in name and ".encoder.layers." in name


def load_initial_weights(model, folder: str, fresh_vision_encoder: bool = False) -> None:
    """Load the weights of a model folder the lab wrote into ``model``; with ``fresh_vision_encoder``, all but the
    vision encoder layers', which keep ``model``'s own."""
    loaded = LlavaOnevisionForConditionalGeneration.from_pretrained(folder).state_dict()
    if fresh_vision_encoder:
        loaded = {name: value for name, value in loaded.items() if not is_vision_encoder_weight(name)}
    model.load_state_dict(model.state_dict() | loaded)


def silence_vision_attention(model) -> None:
    """Zero and freeze the output projection of each vision encoder layer's attention, so that a patch's features
    depend on its own pixels only (its position embedding and the layers' MLPs act patch by patch)."""
    for layer in vision_encoder_layers(model):
        layer.self_attn.out_proj.weight.data.zero_()
        layer.self_attn.out_proj.weight.requires_grad_(False)


@contextmanager
def projector_inputs(model) -> Iterator[list[torch.Tensor]]:
    """The vision features each forward hands to the multimodal projector ([frames, patches, C] each), as the
    model selected them from its tower's hidden states."""
    captured: list[torch.Tensor] = []
    handle = model.model.multi_modal_projector.register_forward_pre_hook(lambda _, args: captured.append(args[0]))
    try:
        yield captured
    finally:
        handle.remove()
