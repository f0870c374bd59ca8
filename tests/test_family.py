"""Where each family keeps its parts: the accessors find the modules a forward runs through, and a family the module
does not know is refused by name."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from sttm.adapters import family
from sttm.adapters.tiny import FAMILIES, tiny_config, tiny_model


@pytest.mark.parametrize("name", FAMILIES)
def test_the_parts_are_the_modules_of_the_towers_and_the_language_model(name):
    model = tiny_model(name)
    tower, text = family.vision_tower(model), family.text_model(model)
    config = model.config
    assert len(family.vision_encoder_layers(model)) == 2  # the tiny towers' depth
    assert all(any(layer is module for module in tower.modules()) for layer in family.vision_encoder_layers(model))
    assert len(family.decoder_layers(model)) == config.text_config.num_hidden_layers
    assert family.decoder_layers(model) is text.layers and family.rotary_embedding(model) is text.rotary_emb
    assert family.video_token_id(model) == config.video_token_id
    assert family.newlines_per_video(model) == (1 if name == "llava_onevision" else 0)
    assert family.compact_positions_apply(model) == (name == "llava_onevision")
    assert family.frames_in_pairs(model) == family.takes_video_fps(model) == (name != "llava_onevision")


@pytest.mark.parametrize("name", ["llava_onevision", "qwen2_vl"])
def test_rope_deltas_are_read_and_written_where_the_family_has_them(name):
    model = tiny_model(name)
    deltas = torch.tensor([[3]])
    if name == "llava_onevision":
        assert family.rope_deltas(model) is None
        family.set_rope_deltas(model, None)
        assert not hasattr(model.model, "rope_deltas")
        with pytest.raises(ValueError, match="llava_onevision has no M-RoPE"):
            family.set_rope_deltas(model, deltas)
    else:
        family.set_rope_deltas(model, deltas)
        assert family.rope_deltas(model) is deltas


def test_the_grid_comes_from_the_config_or_the_m_rope_ids():
    llava = SimpleNamespace(config=tiny_config("llava_onevision"))
    assert family.grid_shape(llava, 4 * 8 * 8 + 1, None) == (4, 8, 8)
    qwen = SimpleNamespace(config=tiny_config("qwen2_vl"))
    t, h, w = torch.meshgrid(torch.arange(2), torch.arange(5, 8), torch.arange(5, 9), indexing="ij")
    assert family.grid_shape(qwen, 24, torch.stack([t, h, w]).reshape(3, -1)) == (2, 3, 4)
    with pytest.raises(ValueError, match="pass mm_token_type_ids"):
        family.grid_shape(qwen, 24, None)


def test_an_unknown_family_is_refused_by_its_model_type():
    model = SimpleNamespace(config=SimpleNamespace(model_type="gemma4"))
    with pytest.raises(ValueError, match="unknown model family 'gemma4'; supported model types: llava_onevision"):
        family.text_model(model)


@pytest.mark.parametrize("name", FAMILIES)
def test_deepstack_and_timestamps_are_qwen3_vl_s(name):
    model = tiny_model(name)
    qwen3 = name in ("qwen3_vl", "qwen3_vl_moe")
    assert family.has_deepstack(model) == family.frames_apart(model) == family.pixels_per_video(model) == qwen3
    assert family.deepstack_levels(model) == (len(model.config.vision_config.deepstack_visual_indexes) if qwen3 else 0)
    if qwen3:
        assert family.deepstack_process(model) == family.text_model(model)._deepstack_process
