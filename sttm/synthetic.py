"""Token grids with the redundancy of real video features, for tests and benchmarks (no model needed).

A video is a run of scenes. Each scene is a smooth field over the grid (a few feature directions whose weights
vary bilinearly across the frame), a small object that moves one patch per frame, and fresh per-patch noise in
every frame. Large smooth regions give the quadtree something to merge, static stretches give temporal merging
something to merge, and the object and the noise are details that must survive.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from sttm.api import VideoTokens


def redundant_video(
    frames: int = 16,
    height: int = 14,
    width: int = 14,
    channels: int = 64,
    scene_length: int = 6,
    noise: float = 0.8,
    seed: int = 0,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str = "cpu",
) -> torch.Tensor:
    """[frames, height, width, channels] token grid, generated on the CPU from ``seed`` then moved."""
    generator = torch.Generator().manual_seed(seed)
    directions = 4
    scenes = []
    for start in range(0, frames, scene_length):
        length = min(scene_length, frames - start)
        basis = torch.randn(directions, channels, generator=generator)
        weights = torch.randn(1, directions, 3, 3, generator=generator)
        weights = F.interpolate(weights, size=(height, width), mode="bilinear", align_corners=True)
        field = torch.einsum("dhw,dc->hwc", weights[0], basis)
        scene = field.expand(length, height, width, channels).clone()
        thing = 3 * torch.randn(channels, generator=generator)
        row, col = (int(torch.randint(0, n - 1, (1,), generator=generator)) for n in (height, width))
        for step in range(length):
            left = (col + step) % (width - 1)
            scene[step, row : row + 2, left : left + 2] += thing
        scenes.append(scene)
    video = torch.cat(scenes)
    scale = video.norm(dim=-1, keepdim=True).mean()
    video = video + noise * scale / channels**0.5 * torch.randn(video.shape, generator=generator)
    return video.to(dtype=dtype, device=device)


def benchmark_video(
    frames: int, height: int, width: int, channels: int, dtype: torch.dtype, device: torch.device | str, seed: int = 0
) -> VideoTokens:
    """The benchmark scripts' input: a ``redundant_video`` grid and, for the methods that rank or compare tokens by
    it, random attention evidence drawn from ``seed`` on the CPU (``importance`` [T, H, W] and ``keys`` [T, H, W, 72],
    72 being SigLIP-so400m's head width)."""
    grid = redundant_video(frames, height, width, channels, dtype=dtype, device=device)
    generator = torch.Generator().manual_seed(seed)
    importance = torch.rand(frames, height, width, generator=generator).to(device)
    keys = torch.randn(frames, height, width, 72, generator=generator).to(device)
    return VideoTokens(grid, importance=importance, keys=keys, question="benchmark")
