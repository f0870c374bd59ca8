"""Greedy max-min diversity selection on CUDA, as Triton kernels: DivPrune's and FlashVID's ADTS's selection.

Given distances [B, N, N] (float32), the first token chosen in each set is the one whose column has the largest
second-smallest value (``topk(2, dim=1)``'s larger value: a token's nearest other, where the diagonal holds its
distance to itself); each next one is the token whose distance to the chosen ones (its smallest over their rows)
is largest, the first index on ties, as ``torch.argmax`` takes it. One program per set runs every step, holding
the running minimum in registers and reading one row of the matrix a step, and a second kernel finds each column's
second-smallest value in one pass over the matrix. Only comparisons, no arithmetic: on distances without NaN the
choices are those of the torch loops they replace, bit for bit. (With a NaN they may differ, as ``torch.argmax``
picks a NaN; a step still never reads outside its set.)
"""

from __future__ import annotations

import torch

try:
    import triton
    import triton.language as tl
except ImportError:  # Triton comes with CUDA builds of torch; without it every caller takes its torch path
    triton = None

#: the largest set the greedy kernel holds in one program's registers (padded to a power of two).
MAX_SET_BLOCK = 32768
#: the tile of the distance matrix one step of the nearest-other kernel reads: rows by columns.
NEAREST_ROWS, NEAREST_COLUMNS = 32, 128


def runs_on_kernels(distances: torch.Tensor) -> bool:
    """Whether ``distances`` [B, N, N] can take the kernels: float32 on CUDA with Triton, N at most
    ``MAX_SET_BLOCK``."""
    return (
        triton is not None
        and distances.is_cuda
        and distances.dtype == torch.float32
        and triton.next_power_of_2(distances.shape[1]) <= MAX_SET_BLOCK
    )


def nearest_other(distances: torch.Tensor) -> torch.Tensor:
    """[B, N, N] -> [B, N] the second smallest distance in each column (``topk(2, dim=1)``'s larger value)."""
    sets, size, _ = distances.shape
    nearest = distances.new_empty(sets, size)
    grid = (sets, triton.cdiv(size, NEAREST_COLUMNS))
    _nearest_other_kernel[grid](distances, nearest, size, ROWS=NEAREST_ROWS, COLUMNS=NEAREST_COLUMNS)
    return nearest


def most_diverse(distances: torch.Tensor, count: int, exclude_chosen: bool = False) -> torch.Tensor:
    """[B, N, N] float32 CUDA distances -> [B, count] int64 indices chosen greedily, in order of choice.

    ``exclude_chosen``: a chosen token's own running minimum becomes −inf, so it is never chosen again (what a
    diagonal of −inf does to the torch loop); without it a token may be chosen again where no other is farther.
    """
    distances = distances.contiguous()
    sets, size, _ = distances.shape
    nearest = nearest_other(distances)
    chosen = torch.empty(sets, count, dtype=torch.int64, device=distances.device)
    block = triton.next_power_of_2(size)
    _greedy_kernel[(sets,)](
        distances, nearest, chosen, size, count, BLOCK=block, EXCLUDE=exclude_chosen, num_warps=greedy_warps(block)
    )
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
        start = 0
        while start < size:  # not range(): Triton 3.6's interpreter cannot range over an argument (numpy 2)
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
            start += ROWS
        tl.store(nearest + which * size + columns, second, mask=columns < size)

    @triton.jit
    def _first_maximum(values, columns, size, BLOCK: tl.constexpr):
        """The first column holding the largest of ``values`` (a float max, then an int min: cheaper than argmax),
        within the set's ``size`` columns whatever ``values`` hold."""
        return tl.minimum(tl.min(tl.where(values == tl.max(values, axis=0), columns, BLOCK), axis=0), size - 1)

    @triton.jit
    def _greedy_kernel(distances, nearest, chosen, size, count, BLOCK: tl.constexpr, EXCLUDE: tl.constexpr):
        which = tl.program_id(0).to(tl.int64)
        columns = tl.arange(0, BLOCK)
        inside = columns < size
        matrix = distances + which * size * size
        scores = tl.load(nearest + which * size + columns, mask=inside, other=float("-inf"))
        pick = _first_maximum(scores, columns, size, BLOCK)
        to_kept = tl.full([BLOCK], float("inf"), tl.float32)
        step = 0
        while step < count:
            tl.store(chosen + which * count + step, pick.to(tl.int64))
            row = tl.load(matrix + pick.to(tl.int64) * size + columns, mask=inside, other=float("-inf"))
            to_kept = tl.minimum(to_kept, row)
            if EXCLUDE:
                to_kept = tl.where(columns == pick, float("-inf"), to_kept)
            pick = _first_maximum(to_kept, columns, size, BLOCK)
            step += 1
