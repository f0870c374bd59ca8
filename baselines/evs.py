"""EVS (Efficient Video Sampling): keep the tokens that change most from the same patch of the previous frame.

Paper: Bagrov et al. (NVIDIA), "Efficient Video Sampling: Pruning Temporally Redundant Tokens for Faster VLM
Inference", arXiv 2510.14624. Reference code: vLLM's ``video_pruning_rate`` option, github.com/vllm-project/vllm at
commit 094f117823287790739d3022162a3f30f13d758b, ``vllm/multimodal/evs.py`` (``compute_retention_mask``,
``compute_retained_tokens_count``), which the model files call on the vision encoder's merged video embeddings
before the language model. The paper also describes a variant on raw pixels; this is vLLM's, on the embeddings.

What vLLM does, for a video of T frames of P = H·W tokens and pruning rate q: each token after the first frame
scores its dissimilarity ``1 − cosine`` (``torch.nn.functional.cosine_similarity``) with the token at the same
position one frame earlier; the first frame's tokens score above any dissimilarity (vLLM: 255), so that they are
always kept. The ``max(P, int(T·P·(1 − q)))`` highest scores are kept (a stable descending sort: of equal scores,
the lower flat index), in their original order; the others are dropped, not merged.

Layout. vLLM takes ``video_embeds`` [T·(H/m)·(W/m), C] with ``video_size_thw`` = (T, H, W) in patches before the
vision merger's m×m merge (``spatial_merge_size``, 2 for Qwen2-VL). The harness's grid [T, H', W', C] is the
merged grid, in the same frame-major raster order: it is vLLM's input with ``video_size_thw = (T, H'·m, W'·m)`` for
any m, e.g. (T, H', W') and m = 1.

Budget: the kept fraction ``1 − q`` (vLLM: ``video_pruning_rate = 1 − budget``), reached up to the truncation,
and never below one frame's tokens: with T frames the achieved ratio is at least 1/T. Budget 1.0 keeps every
token. There is no stage inside the LLM: EVS runs once, on the grid before the first decoder layer.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from sttm.api import Reducer, Reduction, Stage, VideoTokens, check_budget, keep_subset, register

#: the first frame's score: above any dissimilarity 1 − cosine (at most 2), as vLLM's 255
FIRST_FRAME_SCORE = 255.0


def retained_count(tokens_per_frame: int, frames: int, pruning_rate: float) -> int:
    """Tokens EVS keeps: ``max(P, int(T·P·(1 − q)))``, never fewer than one frame's."""
    return max(tokens_per_frame, int(tokens_per_frame * frames * (1 - pruning_rate)))


def temporal_dissimilarity(grid: torch.Tensor) -> torch.Tensor:
    """[T, H, W, C] -> [T, H, W] ``1 − cosine`` of each token with the same patch one frame earlier (grid dtype);
    the first frame scores ``FIRST_FRAME_SCORE``."""
    changed = 1 - F.cosine_similarity(grid[1:], grid[:-1], dim=-1)
    return torch.cat([torch.full_like(grid[:1, ..., 0], FIRST_FRAME_SCORE), changed])


def retention_mask(grid: torch.Tensor, pruning_rate: float) -> torch.Tensor:
    """[T, H, W, C] -> [T, H, W] bool: the ``retained_count`` most dissimilar tokens (ties to the lower index)."""
    if not 0.0 <= pruning_rate < 1.0:
        raise ValueError(f"pruning_rate must lie in [0, 1) (the fraction of tokens dropped), got {pruning_rate}")
    if grid.dim() != 4:
        raise ValueError(f"grid must have shape [T, H, W, C], got {tuple(grid.shape)}")
    t, h, w, _ = grid.shape
    scores = temporal_dissimilarity(grid).flatten()
    order = torch.argsort(scores, descending=True, stable=True)
    keep = torch.zeros_like(scores, dtype=torch.bool)
    keep[order[: retained_count(h * w, t, pruning_rate)]] = True
    return keep.reshape(t, h, w)


@register("evs")
class EVS(Reducer):
    """EVS (NVIDIA, vLLM's ``video_pruning_rate``): drop the tokens least changed since the previous frame."""

    stage = Stage.PRE_LLM

    def __init__(self, budget: float = 0.25) -> None:
        self.budget = check_budget(budget)
        self.pruning_rate = 1 - self.budget

    def reduce(self, video: VideoTokens) -> Reduction:
        kept = retention_mask(video.grid, self.pruning_rate).flatten().nonzero().squeeze(1)
        return keep_subset(video, kept, info={"video_pruning_rate": self.pruning_rate})
