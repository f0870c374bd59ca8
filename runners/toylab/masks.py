"""Where decoded frames change and where their shapes are, as boolean masks on the patch or token grid."""

from __future__ import annotations

import numpy as np
import torch

from runners.toybench.render import BACKGROUNDS, COLORS
from runners.toylab.model import TOKEN_GRID

CHANGED_PIXEL_LEVEL = 60  # a pixel that moves by more between frames changed; H.264 noise moves it by less
CUT_SHARE = 0.5  # a frame where this share of the patches changes is a cut to another scene, not a local change
# every shape colour has a channel above this level, no background colour has one
SHAPE_LEVEL = (max(map(max, BACKGROUNDS.values())) + min(map(max, COLORS.values()))) / 2


def changed_pixels(frames: np.ndarray) -> np.ndarray:
    """[T − 1, H, W] bool: the pixels of each frame after the first that differ from the previous frame's by more
    than H.264 noise."""
    return np.abs(np.diff(frames.astype(np.int16), axis=0)).max(-1) > CHANGED_PIXEL_LEVEL


def any_in_block(pixels: np.ndarray, grid: tuple[int, int]) -> torch.Tensor:
    """[T, H, W] bool on a ``grid`` of equal blocks of ``pixels`` ([T, rows, columns] bool): any pixel set."""
    frames_count, rows, columns = pixels.shape
    blocks = pixels.reshape(frames_count, grid[0], rows // grid[0], grid[1], columns // grid[1])
    return torch.from_numpy(blocks.any(axis=(2, 4)))


def changed_patches(frames: np.ndarray, grid: tuple[int, int]) -> torch.Tensor:
    """[T, H, W] bool on a ``grid`` of patches: those holding a pixel that differs from the previous frame's by more
    than H.264 noise (none in the first frame)."""
    changed = np.zeros(frames.shape[:3], dtype=bool)
    changed[1:] = changed_pixels(frames)
    return any_in_block(changed, grid)


def shape_tokens(frames: np.ndarray) -> torch.Tensor:
    """[T, H, W] bool on the grid of visual tokens: those holding a pixel of a shape."""
    return any_in_block(frames.max(-1) > SHAPE_LEVEL, TOKEN_GRID)
