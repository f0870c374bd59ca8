"""A LLaVA-OneVision architecture of a few thousand random weights, for tests of the published-size code paths
(``sttm.adapters.real_size``) that must run a forward on the CPU."""

from __future__ import annotations

from sttm.adapters.real_size import Architecture
from sttm.adapters.tiny import VOCAB

SMALL = Architecture(
    family="llava_onevision",
    frame_size=56,
    vision=dict(model_type="siglip_vision_model", hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                num_attention_heads=2, image_size=56, patch_size=14),
    text=dict(model_type="qwen2", hidden_size=16, intermediate_size=32, num_hidden_layers=1,
              num_attention_heads=2, num_key_value_heads=1, vocab_size=len(VOCAB)),
)  # fmt: skip
