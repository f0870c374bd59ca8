"""DivPrune: keep the most diverse visual tokens (greedy max-min diversity), before the LLM.

Paper: Alvar et al., "DivPrune: Diversity-based Visual Token Pruning for Large Multimodal Models", CVPR 2025.
Reference code: github.com/vbdi/divprune (the function ``divprune(visual_feature_vectors, image_feature_length,
cosine_matrix, keep_ratio)``, also in TianfanPeng/VLMUniPruneBench ``methods/DivPrune_PreLLM.py``).

With distances 1 − cosine similarity, the first token kept is the one farthest from its nearest neighbour; each
next one is the token whose distance to the kept set (to its nearest kept token) is largest. Kept tokens come
out in their original order. The reference recomputes the minimum over all kept rows at every step; keeping a
running minimum gives the same choices in O(N) per step.

The greedy steps are sequential, one per kept token. On CUDA (with Triton) one program per set runs all of them,
holding the running minimum in registers and reading one row of the distance matrix per step, and a second kernel
finds each token's nearest other in one pass over the matrix; elsewhere torch runs one step after another. Both
choose the same tokens from the same distances: the nearest other is an order statistic, and each step takes the
first maximal index, as ``torch.argmax`` does.

Scope: the reference prunes the visual tokens of one input as one set; ``scope="video"`` does that for all
frames together, ``scope="frame"`` prunes each frame on its own at the same rate.

Budget: ``keep_ratio``, exactly (max(1, round(budget·N)) tokens per set).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from sttm.api import Reducer, Reduction, Stage, VideoTokens, check_budget, keep_subset, register

try:
    import triton
    import triton.language as tl
except ImportError:  # Triton comes with CUDA builds of torch; without it every device takes the torch path
    triton = None

SCOPES = ("video", "frame")

#: the largest set the greedy kernel holds in one program's registers (padded to a power of two); larger sets,
#: and distances other than float32, take the torch path.
MAX_SET_BLOCK = 32768
#: the tile of the distance matrix one step of the nearest-other kernel reads: rows by columns.
NEAREST_ROWS, NEAREST_COLUMNS = 32, 128


def cosine_distances(tokens: torch.Tensor) -> torch.Tensor:
    """[B, N, C] -> [B, N, N] float32 1 − cosine similarity."""
    unit = F.normalize(tokens.float(), dim=-1)
    return 1.0 - unit @ unit.transpose(1, 2)


def most_diverse(distances: torch.Tensor, count: int) -> torch.Tensor:
    """[B, N, N] distances -> [B, count] indices chosen greedily for max-min diversity, in order of choice."""
    if count < 1:
        raise ValueError(f"DivPrune keeps at least one token per set, got count={count}")
    on_kernel = distances.is_cuda and distances.dtype == torch.float32 and triton is not None
    if on_kernel and triton.next_power_of_2(distances.shape[1]) <= MAX_SET_BLOCK:
        return triton_most_diverse(distances, count)
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


def triton_nearest_other(distances: torch.Tensor) -> torch.Tensor:
    """[B, N, N] -> [B, N] the second smallest distance in each column (``topk(2, dim=1)``'s larger value)."""
    sets, size, _ = distances.shape
    nearest = distances.new_empty(sets, size)
    grid = (sets, triton.cdiv(size, NEAREST_COLUMNS))
    _nearest_other_kernel[grid](distances, nearest, size, ROWS=NEAREST_ROWS, COLUMNS=NEAREST_COLUMNS)
    return nearest


def triton_most_diverse(distances: torch.Tensor, count: int) -> torch.Tensor:
    distances = distances.contiguous()
    sets, size, _ = distances.shape
    nearest = triton_nearest_other(distances)
    chosen = torch.empty(sets, count, dtype=torch.int64, device=distances.device)
    block = triton.next_power_of_2(size)
    _greedy_kernel[(sets,)](distances, nearest, chosen, size, count, BLOCK=block, num_warps=greedy_warps(block))
    return chosen


def greedy_warps(block: int) -> int:
    """Warps of the greedy program for a set padded to ``block``: at least 4, at most 32 values a thread."""
    return max(4, min(32, block // 1024))


if triton is not None:

    @triton.jit
    def _nearest_other_kernel(distances, nearest, size, ROWS: tl.constexpr, COLUMNS: tl.constexpr):
        which = tl.program_id(0).to(tl.int64)
        columns = tl.program_id(1) * COLUMNS + tl.arange(0, COLUMNS)
        matrix = distances + which * size * size
        smallest = tl.full([COLUMNS], float("inf"), tl.float32)
        second = tl.full([COLUMNS], float("inf"), tl.float32)
        for start in range(0, size, ROWS):
            rows = start + tl.arange(0, ROWS)
            inside = (rows[:, None] < size) & (columns[None, :] < size)
            tile = tl.load(
                matrix + rows[:, None].to(tl.int64) * size + columns[None, :], mask=inside, other=float("inf")
            )
            low = tl.min(tile, axis=0)
            at_low = tile == low[None, :]
            above_low = tl.min(tl.where(at_low, float("inf"), tile), axis=0)
            next_low = tl.where(tl.sum(at_low.to(tl.int32), axis=0) > 1, low, above_low)
            second = tl.minimum(tl.maximum(smallest, low), tl.minimum(second, next_low))
            smallest = tl.minimum(smallest, low)
        tl.store(nearest + which * size + columns, second, mask=columns < size)

    @triton.jit
    def _first_maximum(values, columns, BLOCK: tl.constexpr):
        """The first column holding the largest of ``values`` (a float max, then an int min: cheaper than argmax)."""
        return tl.min(tl.where(values == tl.max(values, axis=0), columns, BLOCK), axis=0)

    @triton.jit
    def _greedy_kernel(distances, nearest, chosen, size, count, BLOCK: tl.constexpr):
        which = tl.program_id(0).to(tl.int64)
        columns = tl.arange(0, BLOCK)
        inside = columns < size
        matrix = distances + which * size * size
        scores = tl.load(nearest + which * size + columns, mask=inside, other=float("-inf"))
        pick = _first_maximum(scores, columns, BLOCK)
        to_kept = tl.full([BLOCK], float("inf"), tl.float32)
        for step in range(count):
            tl.store(chosen + which * count + step, pick.to(tl.int64))
            row = tl.load(matrix + pick.to(tl.int64) * size + columns, mask=inside, other=float("-inf"))
            to_kept = tl.minimum(to_kept, row)
            pick = _first_maximum(to_kept, columns, BLOCK)


@register("divprune")
class DivPrune(Reducer):
    """DivPrune (Alvar et al., CVPR 2025): the most diverse tokens of the video (or of each frame)."""

    stage = Stage.PRE_LLM
    query_aware = False

    def __init__(self, budget: float = 0.25, scope: str = "video") -> None:
        if scope not in SCOPES:
            raise ValueError(f"unknown DivPrune scope {scope!r}; choose one of: {', '.join(SCOPES)}")
        self.budget = check_budget(budget)
        self.scope = scope

    def reduce(self, video: VideoTokens) -> Reduction:
        t, _, _, c = video.grid.shape
        sets = video.grid.reshape(1 if self.scope == "video" else t, -1, c)
        count = max(1, round(self.budget * sets.shape[1]))
        chosen = most_diverse(cosine_distances(sets), count).sort(dim=1).values
        kept = (chosen + torch.arange(len(sets), device=chosen.device)[:, None] * sets.shape[1]).flatten()
        return keep_subset(video, kept)
