"""Random token dropping before the LLM: the floor any informed method should beat.

Keeps ``round(budget · N)`` (at least one) of the video's N visual tokens, chosen uniformly at random without
replacement from a ``torch.Generator`` seeded with ``seed``, in their original order. The choice depends only on
the seed and N, so it is the same on every device.
"""

from __future__ import annotations

import torch

from sttm.api import Reducer, Reduction, Stage, VideoTokens, check_budget, keep_subset, register


def random_slots(num_tokens: int, count: int, seed: int) -> torch.Tensor:
    """[count] distinct indices in [0, num_tokens), uniformly at random from ``seed``, ascending."""
    generator = torch.Generator().manual_seed(seed)
    return torch.randperm(num_tokens, generator=generator)[:count].sort().values


@register("random")
class RandomDrop(Reducer):
    """A uniformly random subset of the visual tokens, of the budget's size."""

    stage = Stage.PRE_LLM
    query_aware = False

    def __init__(self, budget: float = 0.5, seed: int = 0) -> None:
        self.budget = check_budget(budget)
        self.seed = seed

    def reduce(self, video: VideoTokens) -> Reduction:
        count = max(1, round(self.budget * video.num_tokens))
        kept = random_slots(video.num_tokens, count, self.seed).to(video.grid.device)
        return keep_subset(video, kept)
