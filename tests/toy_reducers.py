"""Reducers for tests of the model hooks: simple, predictable, and of each kind (merging, dropping)."""

from __future__ import annotations

import torch

from sttm.api import Reducer, Reduction, Stage, VideoTokens


class BlockMean(Reducer):
    """Averages 2x2 blocks (a merging reducer whose tokens are new vectors)."""

    name = "block_mean"
    stage = Stage.LLM_LAYER

    def reduce(self, video: VideoTokens) -> Reduction:
        t, h, w, c = video.grid.shape
        tokens = video.grid.reshape(t, h // 2, 2, w // 2, 2, c).mean(dim=(2, 4)).reshape(-1, c)
        tt, yy, xx = torch.meshgrid(torch.arange(t), torch.arange(0, h, 2), torch.arange(0, w, 2), indexing="ij")
        boxes = torch.stack([tt, yy, xx, yy + 2, xx + 2], dim=-1).reshape(-1, 5)
        frame, y, x = torch.meshgrid(torch.arange(t), torch.arange(h), torch.arange(w), indexing="ij")
        members = (frame * (h // 2) + y // 2) * (w // 2) + x // 2
        return Reduction(tokens, boxes, torch.full((len(boxes),), 4), video.num_tokens, members=members.flatten())
