"""Tiny models of the real architectures, built offline (no hub), for tests and the offline suite.

``tiny_llava_onevision()`` is a ``LlavaOnevisionForConditionalGeneration`` (SigLIP at 224 px with 14 px patches,
so an 8x8 pooled grid per frame, and a 4-layer Qwen2) with random weights; ``tiny_llava_onevision_processor()``
the matching ``LlavaOnevisionProcessor`` with a word-level tokenizer and a ChatML template; and
``save_tiny_llava_onevision(path)`` writes both as a normal Hugging Face folder that ``from_pretrained`` loads.
"""

from __future__ import annotations

from pathlib import Path

import torch
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import (
    LlavaOnevisionConfig,
    LlavaOnevisionForConditionalGeneration,
    LlavaOnevisionImageProcessor,
    LlavaOnevisionProcessor,
    LlavaOnevisionVideoProcessor,
    PreTrainedTokenizerFast,
)

IMAGE_SIZE, PATCH_SIZE = 224, 14
SPECIAL_TOKENS = ["<unk>", "<pad>", "<|im_start|>", "<|im_end|>", "<image>", "<video>"]
WORDS = (
    "system user assistant you are a helpful the of to and in with only which what how many color shape "
    "video question answer best is option letter correct following multiple choice based on subtitles select "
    "respond or did appear appeared first order times while half background at start camera move direction "
    "left right up down it not white ball reached side happened after turned red grew larger into square "
    "disappeared moved circle triangle cross green blue yellow magenta cyan orange gray navy olive brown teal "
    "plum colored during covered was were A B C D E F 0 1 2 3 4 5 6 7 8 9 . , : ? ( ) ' \n"
).split()
CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}{% else %}"
    "{% for part in message['content'] %}{% if part['type'] == 'video' %}<video>\n"
    "{% elif part['type'] == 'image' %}<image>\n{% else %}{{ part['text'] }}{% endif %}{% endfor %}{% endif %}"
    "<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
VOCAB = {token: index for index, token in enumerate(dict.fromkeys([*SPECIAL_TOKENS, *WORDS]))}
VIDEO_TOKEN_ID, IMAGE_TOKEN_ID = VOCAB["<video>"], VOCAB["<image>"]


def tiny_tokenizer() -> PreTrainedTokenizerFast:
    """A word-level tokenizer over the words of the synthetic benchmarks' prompts; other words are <unk>."""
    backend = Tokenizer(models.WordLevel(vocab=VOCAB, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend, unk_token="<unk>", pad_token="<pad>", eos_token="<|im_end|>",
        additional_special_tokens=SPECIAL_TOKENS[2:], chat_template=CHAT_TEMPLATE,
    )  # fmt: skip
    tokenizer.padding_side = "left"
    return tokenizer


def tiny_llava_onevision_processor() -> LlavaOnevisionProcessor:
    size = {"height": IMAGE_SIZE, "width": IMAGE_SIZE}
    return LlavaOnevisionProcessor(
        image_processor=LlavaOnevisionImageProcessor(size=size, image_grid_pinpoints=[[IMAGE_SIZE, IMAGE_SIZE]]),
        video_processor=LlavaOnevisionVideoProcessor(size=size),
        tokenizer=tiny_tokenizer(),
        num_image_tokens=(IMAGE_SIZE // PATCH_SIZE) ** 2,
        vision_feature_select_strategy="full",
        chat_template=CHAT_TEMPLATE,
    )


def tiny_llava_onevision(seed: int = 0, attn_implementation: str = "sdpa") -> LlavaOnevisionForConditionalGeneration:
    """Random weights from ``seed``, float32, in eval mode."""
    config = LlavaOnevisionConfig(
        vision_config=dict(
            model_type="siglip_vision_model", hidden_size=32, intermediate_size=64, num_hidden_layers=2,
            num_attention_heads=2, image_size=IMAGE_SIZE, patch_size=PATCH_SIZE,
        ),
        text_config=dict(
            model_type="qwen2", hidden_size=64, intermediate_size=128, num_hidden_layers=4, num_attention_heads=4,
            num_key_value_heads=2, vocab_size=256, max_position_embeddings=4096,
            eos_token_id=VOCAB["<|im_end|>"], pad_token_id=VOCAB["<pad>"],
        ),
        image_token_id=IMAGE_TOKEN_ID, video_token_id=VIDEO_TOKEN_ID, vision_feature_layer=-1,
        vision_feature_select_strategy="full", image_grid_pinpoints=[[IMAGE_SIZE, IMAGE_SIZE]],
    )  # fmt: skip
    config._attn_implementation = attn_implementation
    torch.manual_seed(seed)
    return LlavaOnevisionForConditionalGeneration(config).eval()


def save_tiny_llava_onevision(path: Path, seed: int = 0) -> Path:
    """Write the tiny model and its processor as a Hugging Face folder."""
    tiny_llava_onevision(seed).save_pretrained(path)
    tiny_llava_onevision_processor().save_pretrained(path)
    return path
