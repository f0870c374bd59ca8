"""Attention scores that reducers rank tokens by, recomputed from a layer's own projections.

The model keeps its attention implementation (sdpa or flash): only the scores a reducer asks for are computed here,
from the layer's input, its query and key projections and its rotary embedding, for the queries that matter.
"""

from __future__ import annotations

import torch


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    first, second = x.chunk(2, dim=-1)
    return torch.cat([-second, first], dim=-1)


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotary embedding of x [B, heads, L, d] with cos, sin [B, L, d]."""
    return x * cos[:, None] + rotate_half(x) * sin[:, None]


def decoder_queries_and_keys(
    layer, hidden: torch.Tensor, position_embeddings: tuple[torch.Tensor, torch.Tensor] | None, query_positions: slice
) -> tuple[torch.Tensor, torch.Tensor]:
    """Queries [B, heads, q, d] at ``query_positions`` and keys [B, heads, L, d] (repeated to the query heads) of a
    Qwen2-style decoder ``layer`` whose input is ``hidden`` [B, L, D], rotated by ``position_embeddings`` (cos, sin)
    or, for None, as projected (Qwen3's: queries and keys normalised per head, where the layer has ``q_norm`` and
    ``k_norm``)."""
    attention = layer.self_attn
    normed = layer.input_layernorm(hidden)
    batch, length, head_dim = hidden.shape[0], hidden.shape[1], attention.head_dim
    queries = attention.q_proj(normed[:, query_positions]).view(batch, -1, attention.q_proj.out_features // head_dim,
                                                                head_dim)  # fmt: skip
    keys = attention.k_proj(normed).view(batch, length, -1, head_dim)
    if hasattr(attention, "q_norm"):
        queries, keys = attention.q_norm(queries), attention.k_norm(keys)
    queries, keys = queries.transpose(1, 2), keys.transpose(1, 2)
    if position_embeddings is not None:
        cos, sin = (table.to(hidden.device) for table in position_embeddings)
        queries = apply_rotary(queries, cos[:, query_positions], sin[:, query_positions])
        keys = apply_rotary(keys, cos, sin)
    return queries, keys.repeat_interleave(queries.shape[1] // keys.shape[1], dim=1)


def last_token_attention(
    layer,
    hidden: torch.Tensor,
    position_embeddings: tuple[torch.Tensor, torch.Tensor],
    key_mask: torch.Tensor | None,
    after: int = 0,
) -> torch.Tensor:
    """[B, L] attention the last prompt token pays each token at decoder ``layer`` (softmax over the keys up to it, in
    float32, mean over heads; 0 for the ``after`` tokens that follow it), as FastV ranks visual tokens. ``key_mask``
    [B, L] is 0 for padding, which gets none. ``after``: tokens generated after the prompt that a forward without a
    cache runs along (the last token of the sequence is the prompt's when it is 0)."""
    length = hidden.shape[1] - after
    prompt_rotary = tuple(table[:, :length] for table in position_embeddings)
    queries, keys = decoder_queries_and_keys(layer, hidden[:, :length], prompt_rotary, slice(length - 1, length))
    scores = (queries.float() @ keys.float().transpose(-1, -2))[:, :, 0] * layer.self_attn.scaling
    if key_mask is not None:
        scores = scores.masked_fill(~key_mask[:, :length].bool()[:, None], -torch.inf)
    return torch.nn.functional.pad(scores.softmax(dim=-1).mean(dim=1), (0, after))


def after_video_attention(
    layer, hidden: torch.Tensor, key_mask: torch.Tensor | None, video_ends: list[int], after: int = 0
) -> torch.Tensor:
    """[B, L] the most attention any prompt token after row b's video (from ``video_ends[b]`` on) pays each token at
    decoder ``layer``, over heads and those tokens, as PruneVid ranks video tokens: queries and keys without the
    rotary embedding, softmax over every key of the prompt (no causal mask) in float32. ``key_mask`` [B, L] is 0 for
    padding, which is no key; ``after``: tokens generated after the prompt that a forward without a cache runs along,
    neither queries nor keys (0 for them)."""
    length = hidden.shape[1] - after
    if max(video_ends) >= length:
        raise ValueError("the attention of the tokens after the video needs a prompt token after each row's video")
    first = min(video_ends)
    queries, keys = decoder_queries_and_keys(layer, hidden[:, :length], None, slice(first, length))
    scores = (queries.float() @ keys.float().transpose(-1, -2)) * layer.self_attn.scaling  # [B, heads, q, L]
    if key_mask is not None:
        scores = scores.masked_fill(~key_mask[:, :length].bool()[:, None, None], -torch.inf)
    ends = torch.tensor(video_ends, device=hidden.device)
    after_video = torch.arange(first, length, device=hidden.device) >= ends[:, None]  # [B, q]
    weights = scores.softmax(dim=-1).masked_fill(~after_video[:, None, :, None], 0)
    return torch.nn.functional.pad(weights.amax(dim=(1, 2)), (0, after))


def received_attention_and_keys(layer, hidden: torch.Tensor, frames_per_chunk: int = 8):
    """For a SigLIP encoder ``layer`` with input ``hidden`` [F, P, D] (frames, patches): the attention each patch
    receives (softmax per query in float32, mean over heads and queries) [F, P], and the keys averaged over heads
    [F, P, d], as VisionZip ranks and compares patches without a CLS token. Frames go in chunks to bound memory."""
    attention = layer.self_attn
    heads, head_dim = attention.num_heads, attention.head_dim
    importance, mean_keys = [], []
    for chunk in hidden.split(frames_per_chunk):
        normed = layer.layer_norm1(chunk)
        frames, patches = chunk.shape[:2]
        queries = attention.q_proj(normed).view(frames, patches, heads, head_dim).transpose(1, 2).float()
        keys = attention.k_proj(normed).view(frames, patches, heads, head_dim).transpose(1, 2).float()
        weights = (queries @ keys.transpose(-1, -2) * attention.scale).softmax(dim=-1)
        importance.append(weights.mean(dim=(1, 2)))
        mean_keys.append(keys.mean(dim=1))
    return torch.cat(importance), torch.cat(mean_keys)


def vit_received_attention_and_keys(
    block, hidden: torch.Tensor, position_embeddings: tuple[torch.Tensor, torch.Tensor], cu_seqlens: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """For a Qwen ViT ``block`` (Qwen2-VL, Qwen2.5-VL, Qwen3-VL) with input ``hidden`` [S, D], the patches of
    sequences bounded by ``cu_seqlens`` [n + 1] (a full-attention block: each frame one sequence), rotated by
    ``position_embeddings`` (cos, sin) [S, d]: the attention each patch receives within its sequence (softmax per
    query in float32, mean over heads and queries) [S], and its keys before the rotation averaged over heads [S, d],
    as VisionZip compares them by content."""
    attention = block.attn
    queries, keys, _ = attention.qkv(block.norm1(hidden)).reshape(len(hidden), 3, attention.num_heads, -1).unbind(1)
    cos, sin = (table.to(hidden.device).float()[:, None] for table in position_embeddings)
    rotated_queries, rotated_keys = (x.float() * cos + rotate_half(x.float()) * sin for x in (queries, keys))
    bounds = cu_seqlens.tolist()
    importance = []
    for start, end in zip(bounds[:-1], bounds[1:], strict=True):
        q, k = rotated_queries[start:end].transpose(0, 1), rotated_keys[start:end].transpose(0, 1)
        weights = (q @ k.transpose(-1, -2) * attention.scaling).softmax(dim=-1)
        importance.append(weights.mean(dim=(0, 1)))
    return torch.cat(importance), keys.float().mean(dim=1)
