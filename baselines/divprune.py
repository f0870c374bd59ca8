"""DivPrune: keep the most diverse visual tokens (greedy max-min diversity), before the LLM.

Paper: Alvar et al., "DivPrune: Diversity-based Visual Token Pruning for Large Multimodal Models", CVPR 2025.
Reference code: github.com/vbdi/divprune (the function ``divprune(visual_feature_vectors, image_feature_length,
cosine_matrix, keep_ratio)``, also in TianfanPeng/VLMUniPruneBench ``methods/DivPrune_PreLLM.py``).

With distances 1 − cosine similarity, the first token kept is the one farthest from its nearest neighbour; each
next one is the token whose distance to the kept set (to its nearest kept token) is largest. Kept tokens come
out in their original order. The reference recomputes the minimum over all kept rows at every step; keeping a
running minimum gives the same choices in O(N) per step.

The greedy steps are sequential, one per kept token. On CUDA (with Triton) they run as the kernels of
``baselines.maxmin`` (one program per set runs all of them); elsewhere torch runs one step after another. Both
choose the same tokens from the same distances: the nearest other is an order statistic, and each step takes the
first maximal index, as ``torch.argmax`` does.

Scope: the reference prunes the visual tokens of one input as one set; ``scope="video"`` does that for all
frames together, ``scope="frame"`` prunes each frame on its own at the same rate.

Budget: ``keep_ratio``, exactly (max(1, round(budget·N)) tokens per set).

The reference's float32 cosines of the cast tokens run, for half-precision tokens on a GPU, on tensor cores
(``tensor_cores``; :mod:`baselines.products`), as exactly against float64, in one kernel that writes each distance
once.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from baselines import maxmin, products
from sttm.api import Reducer, Reduction, Stage, VideoTokens, check_budget, keep_subset, register

SCOPES = ("video", "frame")
#: ``F.normalize``'s floor for a norm
NORM_EPS = 1e-12


def cosine_distances(tokens: torch.Tensor, tensor_cores: bool = True) -> torch.Tensor:
    """[B, N, C] -> [B, N, N] float32 1 − cosine similarity: of the unit vectors (``F.normalize``), as the
    reference; of half-precision tokens on a GPU (unless ``tensor_cores`` is off), their tensor-core products
    over the same norms, in one kernel (:func:`baselines.products.cosine_distances`)."""
    if products.on_tensor_cores(tokens, tensor_cores):
        return products.cosine_distances(tokens, NORM_EPS)
    unit = F.normalize(tokens.float(), dim=-1, eps=NORM_EPS)
    return 1.0 - unit @ unit.transpose(1, 2)


def most_diverse(distances: torch.Tensor, count: int) -> torch.Tensor:
    """[B, N, N] distances -> [B, count] indices chosen greedily for max-min diversity, in order of choice."""
    if count < 1:
        raise ValueError(f"DivPrune keeps at least one token per set, got count={count}")
    if maxmin.runs_on_kernels(distances):
        return maxmin.most_diverse(distances, count)
    return torch_most_diverse(distances, count)


def torch_most_diverse(distances: torch.Tensor, count: int) -> torch.Tensor:
    batch = torch.arange(len(distances), device=distances.device)
    nearest_other = distances.topk(2, dim=1, largest=False).values[:, 1]  # [B, N]; the smallest is the token itself
    chosen = [nearest_other.argmax(dim=1)]
    to_kept = distances[batch, chosen[0]]
    for _ in range(count - 1):
        chosen.append(to_kept.argmax(dim=1))
        to_kept = torch.minimum(to_kept, distances[batch, chosen[-1]])
    return torch.stack(chosen, dim=1)


@register("divprune")
class DivPrune(Reducer):
    """DivPrune (Alvar et al., CVPR 2025): the most diverse tokens of the video (or of each frame)."""

    stage = Stage.PRE_LLM
    query_aware = False

    def __init__(self, budget: float = 0.25, scope: str = "video", tensor_cores: bool = True) -> None:
        if scope not in SCOPES:
            raise ValueError(f"unknown DivPrune scope {scope!r}; choose one of: {', '.join(SCOPES)}")
        self.budget = check_budget(budget)
        self.scope, self.tensor_cores = scope, bool(tensor_cores)

    def reduce(self, video: VideoTokens) -> Reduction:
        t, _, _, c = video.grid.shape
        sets = video.grid.reshape(1 if self.scope == "video" else t, -1, c)
        count = max(1, round(self.budget * sets.shape[1]))
        chosen = most_diverse(cosine_distances(sets, self.tensor_cores), count).sort(dim=1).values
        kept = (chosen + torch.arange(len(sets), device=chosen.device)[:, None] * sets.shape[1]).flatten()
        return keep_subset(video, kept)
