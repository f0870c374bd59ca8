"""Tiny models of the video-LLM families, built offline from transformers' own classes (no hub).

``tiny_model(family)`` builds ``LlavaOnevisionForConditionalGeneration`` (SigLIP + Qwen2),
``Qwen2VLForConditionalGeneration``, ``Qwen2_5_VLForConditionalGeneration``, ``Qwen3VLForConditionalGeneration`` or
``Qwen3VLMoeForConditionalGeneration`` with seeded random weights (a 64-wide, 4-layer language model, mixture of
experts in every layer for the MoE, and a 2-layer vision tower on 224-pixel frames; Qwen3-VL's DeepStack takes both
vision layers, added after language layers 0 and 1); ``tiny_processor(family)`` the family's processor over a
word-level tokenizer (the words of the synthetic benchmarks' prompts) with a ChatML template;
``save_tiny_model(family, path)`` writes both as a Hugging Face folder that ``from_pretrained`` and
``AutoProcessor.from_pretrained`` load back. The tests use them, and the offline suite starts from them.

Visual tokens: LLaVA-OneVision pools each frame's 16x16 patches to 8x8 (plus one newline per video); Qwen merges
2x2 patches and 2 frames, so 8 frames of 224x224 give a 4x8x8 grid (Qwen3-VL: in 4 runs of 8x8 placeholders, each
after its timestamp, whose words the tiny vocabulary reads as ``<unk>`` and digits).
"""

from __future__ import annotations

from pathlib import Path

import torch
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import (
    LlavaOnevisionConfig,
    LlavaOnevisionImageProcessor,
    LlavaOnevisionProcessor,
    LlavaOnevisionVideoProcessor,
    PreTrainedModel,
    PreTrainedTokenizerFast,
    ProcessorMixin,
    Qwen2_5_VLConfig,
    Qwen2_5_VLProcessor,
    Qwen2VLConfig,
    Qwen2VLImageProcessor,
    Qwen2VLProcessor,
    Qwen2VLVideoProcessor,
    Qwen3VLConfig,
    Qwen3VLMoeConfig,
    Qwen3VLProcessor,
    Qwen3VLVideoProcessor,
)

from sttm.adapters.loading import MODEL_CLASSES

FAMILIES = ("llava_onevision", "qwen2_vl", "qwen2_5_vl", "qwen3_vl", "qwen3_vl_moe")
QWEN_FAMILIES = FAMILIES[1:]
FRAME_SIZE, PATCH_SIZE = 224, 14
HIDDEN, LAYERS = 64, 4
MAX_FRAMES = 1024  # the most frames a tiny Qwen3-VL processor keeps at their size

SPECIAL_TOKENS = [
    "<unk>", "<|endoftext|>", "<|im_start|>", "<|im_end|>", "<image>", "<video>",
    "<|vision_start|>", "<|vision_end|>", "<|image_pad|>", "<|video_pad|>",
]  # fmt: skip
WORDS = (
    "system user assistant you are a helpful the of to and in with only which what how many color shape "
    "video question answer best is option letter correct following multiple choice based on subtitles select "
    "respond or did appear appeared first order times while half background at start camera move direction "
    "left right up down it not white ball reached side happened after turned red grew larger into square "
    "disappeared moved circle triangle cross green blue yellow magenta cyan orange gray navy olive brown teal "
    "plum colored during covered was were A B C D E F 0 1 2 3 4 5 6 7 8 9 . , : ? ( ) ' \n"
).split()
VOCAB = {token: index for index, token in enumerate(dict.fromkeys([*SPECIAL_TOKENS, *WORDS]))}

VIDEO_MARKUP = {
    "llava_onevision": "<video>",
    **{family: "<|vision_start|><|video_pad|><|vision_end|>" for family in QWEN_FAMILIES},
}
IMAGE_MARKUP = {
    "llava_onevision": "<image>",
    **{family: "<|vision_start|><|image_pad|><|vision_end|>" for family in QWEN_FAMILIES},
}


def check_family(family: str) -> str:
    if family not in FAMILIES:
        raise ValueError(f"unknown model family {family!r}; choose one of: {', '.join(FAMILIES)}")
    return family


def chat_template(family: str) -> str:
    """A ChatML template that writes the family's placeholder for each video or image part of a message."""
    return (
        "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
        "{% if message['content'] is string %}{{ message['content'] }}{% else %}"
        "{% for part in message['content'] %}"
        f"{{% if part['type'] == 'video' %}}{VIDEO_MARKUP[family]}\n"
        f"{{% elif part['type'] == 'image' %}}{IMAGE_MARKUP[family]}\n"
        "{% else %}{{ part['text'] }}{% endif %}{% endfor %}{% endif %}"
        "<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
    )


def tiny_tokenizer(family: str = "llava_onevision") -> PreTrainedTokenizerFast:
    """A word-level tokenizer (other words are <unk>) that pads on the left, with the family's chat template."""
    backend = Tokenizer(models.WordLevel(vocab=VOCAB, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(
        tokenizer_object=backend, unk_token="<unk>", pad_token="<|endoftext|>", eos_token="<|im_end|>",
        additional_special_tokens=SPECIAL_TOKENS[2:], chat_template=chat_template(check_family(family)),
        padding_side="left",
    )  # fmt: skip


def tiny_processor(family: str, frame_size: int = FRAME_SIZE, patch_size: int = PATCH_SIZE) -> ProcessorMixin:
    """The family's processor for square frames of ``frame_size`` pixels (Qwen: exactly that size) and vision
    patches of ``patch_size``."""
    tokenizer = tiny_tokenizer(family)
    if check_family(family) == "llava_onevision":
        size = {"height": frame_size, "width": frame_size}
        return LlavaOnevisionProcessor(
            image_processor=LlavaOnevisionImageProcessor(size=size, image_grid_pinpoints=[[frame_size, frame_size]]),
            video_processor=LlavaOnevisionVideoProcessor(size=size),
            tokenizer=tokenizer,
            num_image_tokens=(frame_size // PATCH_SIZE) ** 2,
            vision_feature_select_strategy="full",
            chat_template=tokenizer.chat_template,
        )
    pixels = {"shortest_edge": frame_size * frame_size, "longest_edge": frame_size * frame_size}
    image_processor = Qwen2VLImageProcessor(size=pixels, patch_size=patch_size)
    if family in ("qwen3_vl", "qwen3_vl_moe"):
        # its pixel bounds hold for all frames together: any number of frames keeps their size
        bounds = {"shortest_edge": frame_size * frame_size, "longest_edge": MAX_FRAMES * frame_size * frame_size}
        return Qwen3VLProcessor(
            image_processor=image_processor,
            video_processor=Qwen3VLVideoProcessor(size=bounds, patch_size=patch_size, cap_pixels_per_frame=False),
            tokenizer=tokenizer,
            chat_template=tokenizer.chat_template,
        )
    processor_class = Qwen2VLProcessor if family == "qwen2_vl" else Qwen2_5_VLProcessor
    return processor_class(
        image_processor=image_processor,
        video_processor=Qwen2VLVideoProcessor(size=pixels, patch_size=patch_size, cap_pixels_per_frame=True),
        tokenizer=tokenizer,
        chat_template=tokenizer.chat_template,
    )


def text_config(**family_specific) -> dict:
    return dict(
        hidden_size=HIDDEN, intermediate_size=2 * HIDDEN, num_hidden_layers=LAYERS, num_attention_heads=4,
        num_key_value_heads=2, vocab_size=len(VOCAB), max_position_embeddings=4096, bos_token_id=None,
        eos_token_id=VOCAB["<|im_end|>"], pad_token_id=VOCAB["<|endoftext|>"], **family_specific,
    )  # fmt: skip


def placeholder_token_ids(family: str) -> dict[str, int]:
    """The ids of the family's image and video placeholders (and Qwen's vision markers) in the tiny vocabulary."""
    if check_family(family) == "llava_onevision":
        return dict(image_token_id=VOCAB["<image>"], video_token_id=VOCAB["<video>"])
    return dict(
        image_token_id=VOCAB["<|image_pad|>"], video_token_id=VOCAB["<|video_pad|>"],
        vision_start_token_id=VOCAB["<|vision_start|>"], vision_end_token_id=VOCAB["<|vision_end|>"],
    )  # fmt: skip


def tiny_config(family: str):
    ids = placeholder_token_ids(family)
    if family == "llava_onevision":
        return LlavaOnevisionConfig(
            vision_config=dict(
                model_type="siglip_vision_model", hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                num_attention_heads=2, image_size=FRAME_SIZE, patch_size=PATCH_SIZE,
            ),
            text_config=text_config(model_type="qwen2"),
            vision_feature_layer=-1, vision_feature_select_strategy="full",
            image_grid_pinpoints=[[FRAME_SIZE, FRAME_SIZE]], **ids,
        )  # fmt: skip
    mrope = dict(
        rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [2, 3, 3]}
    )  # sums to head_dim / 2
    vision = dict(depth=2, num_heads=2, patch_size=PATCH_SIZE, spatial_merge_size=2, temporal_patch_size=2)
    if family in ("qwen3_vl", "qwen3_vl_moe"):
        # interleaved M-RoPE: of head_dim / 2 = 8 frequencies, h and w take 2 each (every third from 1 and 2)
        rope = {"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [4, 2, 2], "mrope_interleaved": True}
        experts = dict(num_experts=4, num_experts_per_tok=2, moe_intermediate_size=HIDDEN, decoder_sparse_step=1)
        config_class = Qwen3VLConfig if family == "qwen3_vl" else Qwen3VLMoeConfig
        return config_class(
            vision_config=dict(
                **vision, hidden_size=32, intermediate_size=64, out_hidden_size=HIDDEN,
                num_position_embeddings=(FRAME_SIZE // PATCH_SIZE) ** 2, deepstack_visual_indexes=[0, 1],
            ),
            text_config=text_config(
                head_dim=HIDDEN // 4, rope_parameters=rope, **(experts if family == "qwen3_vl_moe" else {})
            ),
            **ids,
        )  # fmt: skip
    if family == "qwen2_vl":
        return Qwen2VLConfig(
            vision_config=dict(**vision, embed_dim=32, hidden_size=HIDDEN, mlp_ratio=2),
            text_config=text_config(**mrope), **ids,
        )  # fmt: skip
    return Qwen2_5_VLConfig(
        vision_config=dict(
            **vision, hidden_size=32, intermediate_size=64, out_hidden_size=HIDDEN, window_size=FRAME_SIZE // 2,
            fullatt_block_indexes=[1], tokens_per_second=2,
        ),
        text_config=text_config(**mrope), **ids,
    )  # fmt: skip


def tiny_model(family: str, seed: int = 0, attn_implementation: str = "sdpa") -> PreTrainedModel:
    """Random weights from ``seed``, float32, in eval mode."""
    config = tiny_config(family)
    torch.manual_seed(seed)
    model = MODEL_CLASSES[family]._from_config(config, attn_implementation=attn_implementation)
    return model.eval()


def save_tiny_model(family: str, path: str | Path, seed: int = 0) -> Path:
    """Write the tiny model and its processor as a Hugging Face folder; return ``path``."""
    path = Path(path)
    tiny_model(family, seed).save_pretrained(path)
    tiny_processor(family).save_pretrained(path)
    return path
