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
from transformers.video_utils import VideoMetadata

from sttm.adapters.family import Family
from sttm.adapters.pooling import pool_channels_last
from sttm.adapters.video import SampledVideo

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


def video_question_prompt(processor: ProcessorMixin, question: str, system_prompt: str | None = None) -> str:
    """The chat prompt of one question about one video (the video first), after ``system_prompt`` where given,
    ending with the assistant's turn."""
    messages = [{"role": "user", "content": [{"type": "video"}, {"type": "text", "text": question}]}]
    if system_prompt is not None:
        messages.insert(0, {"role": "system", "content": system_prompt})
    return processor.apply_chat_template(messages, add_generation_prompt=True)


def video_inputs(
    processor: ProcessorMixin, kind: Family, text: str, video: SampledVideo, pixels: tuple[int, int] | None = None
) -> dict:
    """The processor's inputs for ``text`` about one ``video``, its frames already sampled (not sampled again).

    A family that places frames in time (``kind.takes_video_fps``) gets them in ``VideoMetadata``: Qwen2/2.5-VL the
    sampled frame rate; Qwen3-VL, whose timestamps read them, each frame's index in the video and the video's frame
    rate. ``pixels`` (min, max) bounds the pixels of each frame (Qwen's resizing; None: the processor's own bounds).
    """
    options = {}
    if pixels is not None:
        if not kind.takes_video_fps:
            raise ValueError("pixel bounds are Qwen's resizing; LLaVA-OneVision's processor has a fixed frame size")
        frames = len(video.frames) if kind.pixels_per_video else 1
        options["size"] = {"shortest_edge": pixels[0] * frames, "longest_edge": pixels[1] * frames}
    if not kind.takes_video_fps:
        return processor(text=text, videos=[video.frames], return_tensors="pt")
    metadata = VideoMetadata(total_num_frames=len(video.frames), fps=video.fps)  # not sampled again: no total
    if kind.frames_apart and video.indices is not None:
        metadata.fps, metadata.frames_indices = video.video_fps, video.indices.tolist()
    elif kind.frames_apart:
        metadata.frames_indices = list(range(len(video.frames)))
    return processor(
        text=text, videos=[video.frames], video_metadata=[metadata], do_sample_frames=False, return_tensors="pt",
        **options,
    )  # fmt: skip
