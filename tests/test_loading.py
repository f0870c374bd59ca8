"""Loading checkpoints through transformers' own classes, by folder, with the requested dtype and attention."""

from __future__ import annotations

import importlib.util

import pytest
import torch
from transformers import Qwen2Config, Qwen2ForCausalLM

from sttm.adapters.loading import MODEL_CLASSES, attention_implementation, load_model
from sttm.adapters.tiny import FAMILIES, save_tiny_model


@pytest.mark.parametrize("family", FAMILIES)
def test_each_family_loads_from_a_folder_with_dtype_and_attention(family, tmp_path):
    model, processor = load_model(str(save_tiny_model(family, tmp_path)), dtype="bfloat16", attn_implementation="eager")
    assert type(model) is MODEL_CLASSES[family] and not model.training
    assert model.dtype == torch.bfloat16 and model.config._attn_implementation == "eager"
    assert processor.tokenizer.padding_side == "left"


def test_auto_attention_is_flash_where_installed_and_sdpa_otherwise():
    expected = "flash_attention_2" if importlib.util.find_spec("flash_attn") else "sdpa"
    assert attention_implementation("auto") == expected


def test_bad_arguments_name_the_problem(tmp_path):
    with pytest.raises(ValueError, match="unknown attn_implementation 'flash'"):
        attention_implementation("flash")
    with pytest.raises(ValueError, match="unknown dtype 'fp8'"):
        load_model(str(tmp_path), dtype="fp8")
    Qwen2ForCausalLM(Qwen2Config(hidden_size=8, intermediate_size=8, num_hidden_layers=1, num_attention_heads=2,
                                 num_key_value_heads=1, vocab_size=16)).save_pretrained(tmp_path)  # fmt: skip
    with pytest.raises(ValueError, match="is a 'qwen2' model; supported model types: llava_onevision"):
        load_model(str(tmp_path))
