"""Uniform spatial average pooling of each frame, before the LLM: the simplest merging baseline.

Each frame's H×W grid is averaged down to an h×w grid. Rows are split into h bands of ⌊H/h⌋ or ⌈H/h⌉ rows (row y
goes to band ⌊y·h/H⌋), columns likewise, so the blocks tile the frame without overlap; each pooled token is the
mean of its block. Tokens come out frame by frame in raster order.

Budget: the pooled grid with the most tokens T·h·w not above budget·T·H·W (at least one token a frame); among
grids with as many tokens, the one whose aspect ratio is closest to H:W, then the taller one.
"""

from __future__ import annotations

import math

import torch

from sttm.api import Reducer, Reduction, Stage, VideoTokens, check_budget, register


def pooled_grid_size(height: int, width: int, budget: float) -> tuple[int, int]:
    """(rows, cols) of the pooled grid: the most cells within budget·height·width (at least one), then the
    aspect ratio closest to height:width, then the taller grid."""
    allowed = max(1, math.floor(budget * height * width + 1e-9))
    sizes = [(rows, min(width, allowed // rows)) for rows in range(1, min(height, allowed) + 1)]

    def preference(size: tuple[int, int]) -> tuple[int, float, int]:
        rows, cols = size
        return -rows * cols, abs(math.log(rows * width / (cols * height))), -rows

    return min(sizes, key=preference)


def band_starts(length: int, bands: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """[bands + 1] first position of each band when ``length`` positions are split into ``bands``, then the end."""
    return (torch.arange(bands + 1, device=device) * length + bands - 1) // bands


def pooled_blocks(t: int, h: int, w: int, rows: int, cols: int, device: torch.device) -> torch.Tensor:
    """[T·H·W] the pooled token (frame by frame in raster order) of each patch of a [T, H, W] grid."""
    row_band = torch.arange(h, device=device) * rows // h
    col_band = torch.arange(w, device=device) * cols // w
    frame_start = torch.arange(t, device=device) * (rows * cols)
    return (frame_start[:, None, None] + row_band[None, :, None] * cols + col_band[None, None, :]).flatten()


def average_pool(grid: torch.Tensor, rows: int, cols: int) -> torch.Tensor:
    """[T, H, W, C] -> [T·rows·cols, C] float32 block means, frame by frame in raster order."""
    t, h, w, c = grid.shape
    block = pooled_blocks(t, h, w, rows, cols, grid.device)
    sums = torch.zeros(t * rows * cols, c, device=grid.device).index_add_(0, block, grid.reshape(-1, c).float())
    return sums / torch.bincount(block, minlength=t * rows * cols)[:, None]


@register("pool")
class Pooling(Reducer):
    """Uniform spatial average pooling of every frame to the grid that fits the budget."""

    stage = Stage.PRE_LLM
    query_aware = False

    def __init__(self, budget: float = 0.5) -> None:
        self.budget = check_budget(budget)

    def reduce(self, video: VideoTokens) -> Reduction:
        t, h, w, _ = video.grid.shape
        rows, cols = pooled_grid_size(h, w, self.budget)
        tokens = average_pool(video.grid, rows, cols).to(video.grid.dtype)
        device = video.grid.device
        y, x = band_starts(h, rows, device), band_starts(w, cols, device)
        frame, row, col = torch.meshgrid(*(torch.arange(n, device=device) for n in (t, rows, cols)), indexing="ij")
        boxes = torch.stack([frame, y[row], x[col], y[row + 1], x[col + 1]], dim=-1).reshape(-1, 5)
        areas = (boxes[:, 3] - boxes[:, 1]) * (boxes[:, 4] - boxes[:, 2])
        members = pooled_blocks(t, h, w, rows, cols, device)
        return Reduction(tokens, boxes, areas, video.num_tokens, info={"pooled_grid": (rows, cols)}, members=members)
