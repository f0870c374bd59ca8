"""Where each video-LLM family keeps its parts: the one module that knows them, keyed by ``model.config.model_type``.

* ``llava_onevision`` (LLaVA-OneVision, and LLaVA-Video converted to it): a SigLIP ``vision_tower`` whose frame
  features are pooled bilinearly to an H x W grid, H = W = ceil(patches per side / 2), and one ``image_newline``
  token after each video's grid that shares the video placeholder id and stays out of the grid; positions 0..L−1.
* ``qwen2_vl``, ``qwen2_5_vl``: a ViT ``visual`` (its ``blocks``) over temporal patches of two frames, 2x2 patches
  merged (``video_grid_thw`` over the spatial merge size); M-RoPE (t, h, w) position ids [3, B, L], whose h and w ids
  count a video's grid rows and columns, and ``rope_deltas``, which place decoding after them. Qwen2.5-VL's ViT
  attends within windows, its patches in window order, but in its full-attention blocks.
* ``qwen3_vl``, ``qwen3_vl_moe``: Qwen2-VL's layout (a ViT over whole frames; interleaved M-RoPE) plus two things,
  in a dense or a mixture-of-experts language model. DeepStack: the language model also takes
  ``visual_pos_masks`` [B, L] and ``deepstack_visual_embeds`` (one level per early decoder layer, [visual tokens, C],
  from intermediate vision layers), added to the visual tokens' hidden states after those layers, which a reduction
  before them cuts as it cuts the tokens. Timestamps: the processor writes ``<t seconds>`` and vision markers before
  each temporal patch, so a video is one run of placeholders per temporal patch, each its own (t, h, w) grid of one
  frame in M-RoPE.

All keep a Qwen2-style text model at ``model.model.language_model`` (``layers``, ``rotary_emb``).

Adding a family is an entry of :data:`FAMILIES`.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Family:
    """What differs between families, beyond their config.

    vision_tower:       attribute of ``model.model`` that holds the vision tower.
    vision_encoder:     ``siglip`` (layers at ``encoder.layers``, frame features pooled to the grid) or ``qwen_vit``
                        (layers at ``blocks``).
    newlines_per_video: tokens after a video's grid that share its placeholder id.
    mrope:              M-RoPE position ids and ``rope_deltas``; a video's grid is read from its tokens' ids, and
                        positions cannot be renumbered compactly.
    frames_in_pairs:    the vision tower takes frames in temporal patches of two (a video is padded to even).
    takes_video_fps:    the processor places frames in time from the sampled fps (``VideoMetadata``).
    deepstack:          the language model adds DeepStack features to the visual tokens after its first layers.
    frames_apart:       the processor writes text between temporal patches: one run of placeholders per patch.
    pixels_per_video:   the video processor bounds the pixels of all frames together (``size``), not of each one.
    vision_windows:     the ViT attends within windows but in its ``fullatt_block_indexes``, its patches in window
                        order (Qwen2.5-VL).
    """

    vision_tower: str
    vision_encoder: str
    newlines_per_video: int
    mrope: bool
    frames_in_pairs: bool
    takes_video_fps: bool
    deepstack: bool = False
    frames_apart: bool = False
    pixels_per_video: bool = False
    vision_windows: bool = False


QWEN2_VL = Family("visual", "qwen_vit", 0, mrope=True, frames_in_pairs=True, takes_video_fps=True)
QWEN3_VL = dataclasses.replace(QWEN2_VL, deepstack=True, frames_apart=True, pixels_per_video=True)
FAMILIES = {
    "llava_onevision": Family("vision_tower", "siglip", 1, mrope=False, frames_in_pairs=False, takes_video_fps=False),
    "qwen2_vl": QWEN2_VL,
    "qwen2_5_vl": dataclasses.replace(QWEN2_VL, vision_windows=True),
    "qwen3_vl": QWEN3_VL,
    "qwen3_vl_moe": QWEN3_VL,
}


def family_of(model) -> Family:
    """The family of ``model`` (a ``...ForConditionalGeneration``); ValueError for a model type without an entry."""
    model_type = model.config.model_type
    if model_type not in FAMILIES:
        raise ValueError(f"unknown model family {model_type!r}; supported model types: {', '.join(FAMILIES)}")
    return FAMILIES[model_type]


def multimodal_model(model) -> torch.nn.Module:
    """The model under the head, which takes the token ids and the pixels of a request."""
    family_of(model)  # refuses a family without an entry
    return model.model


def vision_tower(model) -> torch.nn.Module:
    return getattr(multimodal_model(model), family_of(model).vision_tower)


def vision_encoder_layers(model) -> torch.nn.ModuleList:
    """The vision tower's encoder layers (SigLIP's: of a bare transformer or of one inside a model)."""
    tower = vision_tower(model)
    if family_of(model).vision_encoder == "qwen_vit":
        return tower.blocks
    return getattr(tower, "vision_model", tower).encoder.layers


def reads_siglip_attention(model) -> bool:
    """Whether the vision tower is SigLIP (the vision reduction point reads its attention at the feature layer;
    otherwise a Qwen ViT's, at its last full-attention block)."""
    return family_of(model).vision_encoder == "siglip"


def attention_read_layer(model) -> int:
    """The vision encoder layer whose input the vision reduction point reads the attention of: SigLIP's that makes
    the features the LLM gets (``vision_feature_layer``); a Qwen ViT's last block that attends over whole frames."""
    layers = vision_encoder_layers(model)
    if not reads_siglip_attention(model):
        vision = model.config.vision_config
        return max(vision.fullatt_block_indexes) if family_of(model).vision_windows else len(layers) - 1
    feature_layer = model.config.vision_feature_layer
    if not isinstance(feature_layer, int):
        raise ValueError(f"the vision reduction point needs one vision_feature_layer, got {feature_layer}")
    # hidden_states[i] is the output of encoder layer i - 1 (hidden_states[0] is the embeddings)
    read = feature_layer % (len(layers) + 1)
    if read == 0:
        raise ValueError(f"vision_feature_layer {feature_layer} is the patch embeddings: no encoder layer made them")
    return read - 1


def merged_patch_values(model, values: torch.Tensor, grid_thw: torch.Tensor) -> torch.Tensor:
    """Per-patch values [S, ...] of a Qwen ViT's block (its videos' patches, ``grid_thw`` [V, 3]) laid out as the
    LLM's tokens: each the mean of the 2x2 patches its merger takes (consecutive in the block), in raster order
    (Qwen2.5-VL's window order undone): [Σ frames, tokens per frame, ...]."""
    vision = model.config.vision_config
    merged = values.unflatten(0, (-1, vision.spatial_merge_size**2)).mean(dim=1)
    if family_of(model).vision_windows:
        from transformers.vision_utils import get_vision_window_index

        window_index, _ = get_vision_window_index(
            grid_thw, vision.spatial_merge_size, vision.window_size, vision.patch_size
        )
        merged = merged[torch.argsort(window_index.to(merged.device))]
    _, height, width = (int(side) for side in grid_thw[0])
    return merged.reshape(-1, height * width // vision.spatial_merge_size**2, *values.shape[1:])


def pool_frame_features(model, values: torch.Tensor) -> torch.Tensor:
    """Per-frame values of the vision tower's patches [F, P, ...] pooled to the grid as LLaVA-OneVision pools its
    features: [F, H·W, ...]."""
    if not reads_siglip_attention(model):
        raise ValueError(f"{model.config.model_type} pools no frame features: its vision tower merges patches")
    return multimodal_model(model).apply_pooling(values)


def text_model(model) -> torch.nn.Module:
    """The language model without its head (embeddings, decoder layers, norm, rotary embedding)."""
    return multimodal_model(model).language_model


def decoder_layers(model) -> torch.nn.ModuleList:
    return text_model(model).layers


def rotary_embedding(model) -> torch.nn.Module:
    """The text model's rotary embedding: ``(states, position_ids)`` → (cos, sin)."""
    return text_model(model).rotary_emb


def rope_deltas(model) -> torch.Tensor | None:
    """The M-RoPE offset [B, 1] of decoding positions after the prompt (None before a prefill, or without M-RoPE)."""
    return multimodal_model(model).rope_deltas if family_of(model).mrope else None


def set_rope_deltas(model, deltas: torch.Tensor | None) -> None:
    """Set the M-RoPE offset; a family without M-RoPE has none, so None is all it takes."""
    if family_of(model).mrope:
        multimodal_model(model).rope_deltas = deltas
    elif deltas is not None:
        raise ValueError(f"{model.config.model_type} has no M-RoPE, so no rope deltas to set")


def video_token_id(model) -> int:
    """The id of the video placeholder tokens, which the processor repeats once per visual token."""
    return model.config.video_token_id


def newlines_per_video(model) -> int:
    """Tokens after a video's grid that share its placeholder id: LLaVA-OneVision's ``image_newline``."""
    return family_of(model).newlines_per_video


def grid_shape(model, placeholders: int, rope_ids: torch.Tensor | None) -> tuple[int, int, int]:
    """(T, H, W) of a video of ``placeholders`` tokens: LLaVA-OneVision's from its config; M-RoPE families' from the
    (t, h, w) ids [3, n] of its first run of tokens, whose h and w ids count the rows and columns."""
    if not family_of(model).mrope:
        vision = model.config.vision_config
        side = math.ceil(vision.image_size // vision.patch_size / 2)
        return (placeholders - newlines_per_video(model)) // side**2, side, side
    if rope_ids is None:
        raise ValueError("Qwen needs its M-RoPE position ids to lay out the video: pass mm_token_type_ids")
    height, width = (int(ids.max() - ids.min()) + 1 for ids in rope_ids[1:])
    return placeholders // (height * width), height, width


def compact_positions_apply(model) -> bool:
    """Whether the reduced prompt may be renumbered 0..N'−1 (M-RoPE ids keep their (t, h, w) meaning instead)."""
    return not family_of(model).mrope


def frames_in_pairs(model) -> bool:
    return family_of(model).frames_in_pairs


def takes_video_fps(model) -> bool:
    return family_of(model).takes_video_fps


def has_deepstack(model) -> bool:
    return family_of(model).deepstack


def frames_apart(model) -> bool:
    return family_of(model).frames_apart


def pixels_per_video(model) -> bool:
    return family_of(model).pixels_per_video


def deepstack_levels(model) -> int:
    """How many first decoder layers DeepStack adds vision features after (0 without DeepStack)."""
    return len(model.config.vision_config.deepstack_visual_indexes) if has_deepstack(model) else 0


def deepstack_process(model):
    """The text model's ``_deepstack_process(states, visual_mask, level)``: a DeepStack level [visual tokens, C] added
    to the states [B, L, C] at the mask's [B, L] visual positions."""
    return text_model(model)._deepstack_process
