"""FastV: drop the visual tokens the last prompt token attends to least, inside the LLM.

Paper: Chen et al., "An Image is Worth 1/2 Tokens After Layer 2: Plug-and-Play Inference Acceleration for Large
Vision-Language Models", ECCV 2024 (reference code: github.com/pkunlp-icler/FastV, the in-place variant of
``LlamaModel.forward`` with ``fastv_config = {K, R}``; as a video baseline: github.com/HYUNJS/STTM,
``--sa_pattern fastv``). At layer K the authors take the attention weights of layer K − 1, the last query's row
averaged over heads, keep the ``int(n · (1 − R))`` most attended of the n visual tokens (``topk``) and drop the
rest, in their original order and with their original positions, for every later layer.

Here the attention of layer k − 1 is recomputed by the ``llm_layer`` reduction point from that layer's own
queries and keys (``importance_lag = 1``), so the model keeps sdpa or flash attention instead of switching to eager.
Budget b maps to R = 1 − b; the kept count is ``max(1, int(b · n))``. Ties go to the lower index.
"""

from __future__ import annotations

import torch

from sttm.api import RankedInLLM, Reduction, VideoTokens, keep_subset, register


def most_attended(importance: torch.Tensor, count: int) -> torch.Tensor:
    """[count] flat indices of the highest ``importance`` [T, H, W] values, ascending; ties to the lower index."""
    flat = importance.flatten().float()
    order = torch.sort(flat, descending=True, stable=True).indices
    return order[:count].sort().values


@register("fastv")
class FastV(RankedInLLM):
    """The ``int(budget · n)`` visual tokens the last prompt token attends to most at layer ``layer − 1``."""

    def __init__(self, budget: float = 0.5, layer: int = 2) -> None:
        super().__init__(budget, layer)

    def reduce(self, video: VideoTokens) -> Reduction:
        count = max(1, int(self.budget * video.num_tokens))
        kept = most_attended(video.importance, count).to(video.grid.device)
        return keep_subset(video, kept, info={"prune_ratio": 1 - self.budget})
