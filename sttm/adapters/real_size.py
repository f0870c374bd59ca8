"""Video LLMs at their published sizes with random weights, built without a download, and a video request for them.

``ARCHITECTURES`` holds them by the name of their ``configs/model`` file: LLaVA-OneVision-7B, which LLaVA-Video-7B
shares (SigLIP-so400m-384 + Qwen2-7B, 196 tokens per frame), Qwen2-VL-7B (its ViT-675M + Qwen2-7B, 256 tokens per
two 448x448 frames) and Qwen3-VL-8B (its 27-layer ViT of 16-pixel patches with DeepStack from layers 8, 16 and 24
+ Qwen3-8B; 196 tokens per two 448x448 frames, lmms-eval's smallest frame). Another model is one more row; a new
family also needs its config class in
``CONFIG_CLASSES``, its model class in ``sttm.adapters.loading.MODEL_CLASSES`` and its processor in
``sttm.adapters.tiny``. The configs take the placeholder ids of that module's offline tokenizer, and its processor
makes the requests (``request``): a question about a video of flat-coloured scenes (``scene_video``), so that
random vision weights still give redundant tokens.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field

import torch
from transformers import LlavaOnevisionConfig, PretrainedConfig, PreTrainedModel, Qwen2VLConfig, Qwen3VLConfig

from sttm.adapters.family import FAMILIES
from sttm.adapters.loading import MODEL_CLASSES, video_inputs
from sttm.adapters.pooling import pool_channels_last
from sttm.adapters.tiny import PATCH_SIZE, placeholder_token_ids, tiny_processor
from sttm.adapters.video import SampledVideo


@dataclass(frozen=True)
class Architecture:
    """A published model's sizes: its family (a key of ``CONFIG_CLASSES``), the side of the square frames its
    processor makes, and the fields of its config (vision tower, language model, the others)."""

    family: str
    frame_size: int
    vision: dict
    text: dict
    other: dict = field(default_factory=dict)


SIGLIP_SO400M_384 = dict(
    model_type="siglip_vision_model", hidden_size=1152, intermediate_size=4304, num_hidden_layers=26,
    num_attention_heads=16, image_size=384, patch_size=14,
)  # fmt: skip
QWEN2_VL_VIT = dict(
    depth=32, embed_dim=1280, hidden_size=3584, mlp_ratio=4, num_heads=16, patch_size=14, spatial_merge_size=2,
    temporal_patch_size=2,
)  # fmt: skip
QWEN2_7B = dict(
    hidden_size=3584, intermediate_size=18944, num_hidden_layers=28, num_attention_heads=28, num_key_value_heads=4,
    vocab_size=152_064, max_position_embeddings=32_768,
)  # fmt: skip
QWEN2_ROPE = {"rope_type": "default", "rope_theta": 1e6}
QWEN3_VL_VIT = dict(
    depth=27, hidden_size=1152, intermediate_size=4304, num_heads=16, patch_size=16, spatial_merge_size=2,
    temporal_patch_size=2, out_hidden_size=4096, num_position_embeddings=2304, deepstack_visual_indexes=[8, 16, 24],
)  # fmt: skip
QWEN3_8B = dict(
    hidden_size=4096, intermediate_size=12288, num_hidden_layers=36, num_attention_heads=32, num_key_value_heads=8,
    head_dim=128, vocab_size=151_936, max_position_embeddings=262_144,
    rope_parameters=dict(rope_type="default", rope_theta=5e6, mrope_section=[24, 20, 20], mrope_interleaved=True),
)  # fmt: skip

ARCHITECTURES = {
    "llava_onevision_7b": Architecture(
        family="llava_onevision",
        frame_size=384,
        vision=SIGLIP_SO400M_384,
        text=dict(model_type="qwen2", rope_parameters=QWEN2_ROPE, **QWEN2_7B),
        other=dict(vision_feature_layer=-1, vision_feature_select_strategy="full"),
    ),
    "qwen2_vl_7b": Architecture(
        family="qwen2_vl",
        frame_size=448,
        vision=QWEN2_VL_VIT,
        text=dict(rope_parameters=QWEN2_ROPE | {"mrope_section": [16, 24, 24]}, **QWEN2_7B),
    ),
    "qwen3_vl_8b": Architecture(family="qwen3_vl", frame_size=448, vision=QWEN3_VL_VIT, text=QWEN3_8B),
}
CONFIG_CLASSES = {"llava_onevision": LlavaOnevisionConfig, "qwen2_vl": Qwen2VLConfig, "qwen3_vl": Qwen3VLConfig}

#: the frame rate of the scene video's frames
SCENE_FPS = 2.0


def architecture(name: str) -> Architecture:
    if name not in ARCHITECTURES:
        raise ValueError(f"unknown architecture {name!r}; choose one of: {', '.join(sorted(ARCHITECTURES))}")
    return ARCHITECTURES[name]


def real_size_config(name: str, text_sizes: dict | None = None) -> PretrainedConfig:
    """The published architecture ``name`` (a key of ARCHITECTURES), with the tiny tokenizer's placeholder ids;
    ``text_sizes`` overrides the language model's sizes (e.g. Qwen2-72B's)."""
    found = architecture(name)
    # a config keeps the dicts it is given (rope_parameters among them): each gets its own copies
    return CONFIG_CLASSES[found.family](
        vision_config=copy.deepcopy(found.vision),
        text_config=copy.deepcopy(found.text | (text_sizes or {})),
        **copy.deepcopy(found.other),
        **placeholder_token_ids(found.family),
    )


def random_model(name: str, attn_implementation: str, device: str = "cuda") -> PreTrainedModel:
    """The architecture ``name`` with random bf16 weights (seed 0), built on ``device``, in eval mode, pooling as
    ``load_model`` does by default (channels-last)."""
    family = architecture(name).family
    torch.manual_seed(0)
    default = torch.get_default_dtype()
    torch.set_default_dtype(torch.bfloat16)
    try:
        with torch.device(device):
            model = MODEL_CLASSES[family]._from_config(real_size_config(name), attn_implementation=attn_implementation)
    finally:
        torch.set_default_dtype(default)
    pool_channels_last(model)
    return model.eval()


def scene_video(frames: int, size: int, seed: int = 0) -> torch.Tensor:
    """[T, size, size, 3] uint8: 4-frame scenes of 12x12 flat blocks plus a little noise."""
    generator = torch.Generator().manual_seed(seed)
    scenes = []
    for _ in range(0, frames, 4):
        blocks = torch.rand(3, 12, 12, generator=generator)
        scene = torch.nn.functional.interpolate(blocks[None], size=(size, size), mode="nearest")[0]
        scenes.append(scene.expand(4, -1, -1, -1))
    video = torch.cat(scenes)[:frames] + 0.03 * torch.randn(frames, 3, size, size, generator=generator)
    return (video.clamp(0, 1) * 255).to(torch.uint8).permute(0, 2, 3, 1)


QUESTION = "which color appeared first ? answer with the option letter ."


def request(name: str, frames: int, device: str = "cuda", question: str = QUESTION) -> dict:
    """The model inputs for ``question`` about a ``frames``-frame scene video at ``SCENE_FPS``, through the family's
    processor and chat template, on ``device``."""
    found = architecture(name)
    processor = tiny_processor(found.family, found.frame_size, found.vision.get("patch_size", PATCH_SIZE))
    messages = [{"role": "user", "content": [{"type": "video"}, {"type": "text", "text": question}]}]
    text = processor.apply_chat_template(messages, add_generation_prompt=True)
    video = SampledVideo(scene_video(frames, found.frame_size).numpy(), SCENE_FPS)
    return video_inputs(processor, FAMILIES[found.family], text, video).to(device)
