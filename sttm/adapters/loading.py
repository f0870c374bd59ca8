"""Loading a video LLM through transformers' own classes, by local path or hub id, and the chat prompt it is asked with.

Families: LLaVA-OneVision (``LlavaOnevisionForConditionalGeneration``: llava-onevision-qwen2-*-ov-hf and LLaVA-Video
checkpoints converted by ``scripts/convert_llava_video_to_hf.py``), Qwen2-VL (``Qwen2VLForConditionalGeneration``),
Qwen2.5-VL (``Qwen2_5_VLForConditionalGeneration``) and Qwen3-VL, dense (``Qwen3VLForConditionalGeneration``:
Qwen3-VL-8B-Instruct) or mixture-of-experts (``Qwen3VLMoeForConditionalGeneration``: Qwen3-VL-30B-A3B-Instruct). The
family comes from the checkpoint's ``model_type``.
"""

from __future__ import annotations

import importlib.util

import torch
from transformers import (
    AutoConfig,
    AutoProcessor,
    LlavaOnevisionForConditionalGeneration,
    PreTrainedModel,
    ProcessorMixin,
    Qwen2_5_VLForConditionalGeneration,
    Qwen2VLForConditionalGeneration,
    Qwen3VLForConditionalGeneration,
    Qwen3VLMoeForConditionalGeneration,
)

from sttm.adapters.pooling import pool_channels_last

MODEL_CLASSES = {
    "llava_onevision": LlavaOnevisionForConditionalGeneration,
    "qwen2_vl": Qwen2VLForConditionalGeneration,
    "qwen2_5_vl": Qwen2_5_VLForConditionalGeneration,
    "qwen3_vl": Qwen3VLForConditionalGeneration,
    "qwen3_vl_moe": Qwen3VLMoeForConditionalGeneration,
}
ATTENTION_IMPLEMENTATIONS = ("auto", "flash_attention_2", "sdpa", "eager")
DTYPES = ("float32", "bfloat16", "float16")


def attention_implementation(requested: str) -> str:
    """``auto``: flash_attention_2 where the flash-attn package is installed, sdpa otherwise."""
    if requested not in ATTENTION_IMPLEMENTATIONS:
        choices = ", ".join(ATTENTION_IMPLEMENTATIONS)
        raise ValueError(f"unknown attn_implementation {requested!r}; choose one of: {choices}")
    if requested == "auto":
        return "flash_attention_2" if importlib.util.find_spec("flash_attn") else "sdpa"
    return requested


def model_family(pretrained: str) -> str:
    """The family of the checkpoint at ``pretrained`` (a folder or hub id), from its config's ``model_type``."""
    model_type = AutoConfig.from_pretrained(pretrained).model_type
    if model_type not in MODEL_CLASSES:
        raise ValueError(
            f"{pretrained} is a {model_type!r} model; supported model types: {', '.join(MODEL_CLASSES)} "
            "(convert original LLaVA-Video checkpoints with scripts/convert_llava_video_to_hf.py)"
        )
    return model_type


def load_model(
    pretrained: str,
    dtype: str = "bfloat16",
    attn_implementation: str = "auto",
    device_map: str | dict | None = None,
    channels_last_pooling: bool = True,
) -> tuple[PreTrainedModel, ProcessorMixin]:
    """The model in eval mode and its processor. ``device_map``: None (CPU), a device such as ``cuda:0``, or
    ``auto`` to shard across the visible GPUs; ``channels_last_pooling``: LLaVA-OneVision pools its video features
    on the channels-last view (``sttm.adapters.pooling``: the same values, without transformers' copy)."""
    if dtype not in DTYPES:
        raise ValueError(f"unknown dtype {dtype!r}; choose one of: {', '.join(DTYPES)}")
    model = MODEL_CLASSES[model_family(pretrained)].from_pretrained(
        pretrained,
        dtype=getattr(torch, dtype),
        attn_implementation=attention_implementation(attn_implementation),
        device_map=device_map,
    )
    if channels_last_pooling:
        pool_channels_last(model)
    return model.eval(), AutoProcessor.from_pretrained(pretrained)


def video_question_prompt(processor: ProcessorMixin, question: str) -> str:
    """The chat prompt of one question about one video (the video first), ending with the assistant's turn."""
    messages = [{"role": "user", "content": [{"type": "video"}, {"type": "text", "text": question}]}]
    return processor.apply_chat_template(messages, add_generation_prompt=True)
