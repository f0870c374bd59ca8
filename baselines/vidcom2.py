"""VidCom2: frame-adaptive token dropping by uniqueness, before the LLM.

Paper: Liu et al., "Video Compression Commander: Plug-and-Play Inference Acceleration for Video Large Language
Models", EMNLP 2025 (arXiv 2505.14454). Reference code: github.com/xuyang-liu16/VidCom2,
``token_compressor/vidcom2/vidcom2.py::vidcom2_compression`` (its ``linear`` mapping, used for LLaVA-OneVision
and Qwen2-VL).

On the half of the channels with the lowest variance over the video, each L2-normalised token is scored by
its multi-scale Gaussian similarity to the video's mean token and to its frame's mean token. Frames whose
tokens are least like the video mean get a larger share of the budget (a softmax at temperature 0.01 around
the base rate), and each frame keeps its least typical tokens, in their original order. Dropped tokens are
discarded, not merged.

On a GPU the scoring (everything up to the kept tokens, on a grid of one shape) replays from a CUDA graph once
that shape has been seen twice (``sttm.graphs``: the same kernels, so the same tokens); ``cuda_graphs=False``
launches it op by op.

Budget: the base rate itself (the reference's ``base_scale``); per-frame rates are clamped to 1 and each frame
keeps at least one token, so the achieved ratio can differ from the budget by rounding. Budget 1.0 keeps every
token (the clamp would otherwise drop the least distinct frames' last tokens).
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F

from sttm.api import Reducer, Reduction, Stage, VideoTokens, check_budget, keep_everything, keep_subset, register
from sttm.graphs import Captures, replayed

GAUSSIAN_WIDTHS = (1 / 8, 1 / 4, 1 / 2, 1.0, 2.0)


def low_variance_channels(tokens: torch.Tensor, fraction: float = 0.5) -> torch.Tensor:
    """[N, C] -> [N, ⌊fraction·C⌋]: the channels that vary least over the tokens."""
    variances = tokens.var(dim=0, unbiased=False)
    channels = torch.topk(variances, k=int(tokens.shape[-1] * fraction), largest=False).indices
    return tokens[:, channels]


def gaussian_similarity(x: torch.Tensor, center: torch.Tensor) -> torch.Tensor:
    """[..., C] vs a broadcastable center -> [...]: Σ over widths a of exp(-|x - center|² / 2a)."""
    squared = (x - center).pow(2).sum(dim=-1)
    return sum(torch.exp(-squared / (2 * width)) for width in GAUSSIAN_WIDTHS)


def typicality(frames: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """[T, P, C] -> ([T, P] similarity to the video's mean token, [T, P] to the frame's mean token)."""
    unit = F.normalize(frames, dim=-1)
    video_center = unit.mean(dim=(0, 1), keepdim=True)
    frame_center = unit.mean(dim=1, keepdim=True)
    return gaussian_similarity(unit, video_center), gaussian_similarity(unit, frame_center)


def frame_rates(video_typicality: torch.Tensor, base: float, temperature: float = 0.01) -> torch.Tensor:
    """[T, P] -> [T] kept fraction per frame: base · (1 + p − mean p), p = softmax(−typicality / temperature)."""
    distinct = -video_typicality.mean(dim=-1)
    share = F.softmax((distinct - distinct.max()) / temperature, dim=0)
    return (base * (1 + share - share.mean())).clamp(max=1.0)


def keep_least_typical(scores: torch.Tensor, rates: torch.Tensor) -> torch.Tensor:
    """[T, P] scores, [T] rates -> [T, P] bool: each frame's round(rate·P) (at least 1) lowest scores."""
    per_frame = scores.shape[1]
    counts = (rates * per_frame).round().long().clamp(min=1)
    rank = scores.argsort(dim=1, stable=True).argsort(dim=1)
    return rank < counts[:, None]


def kept_tokens(budget: float, channel_fraction: float, temperature: float, grid: torch.Tensor):
    """[T, H, W, C] grid -> ([T·H·W] bool the tokens VidCom2 keeps, [T] the kept fraction of each frame)."""
    t, h, w, c = grid.shape
    tokens = grid.reshape(t * h * w, c).float()
    frames = low_variance_channels(tokens, channel_fraction).view(t, h * w, -1)
    video_typicality, frame_typicality = typicality(frames)
    rates = frame_rates(video_typicality, budget, temperature)
    return keep_least_typical(video_typicality + frame_typicality, rates).flatten(), rates


#: CUDA graphs of :func:`kept_tokens` (some eighty short ops on a grid of one shape per model; ``sttm.graphs``)
SCORING = Captures(size=2)


@register("vidcom2")
class VidCom2(Reducer):
    """VidCom2 (Liu et al., EMNLP 2025): per-frame budgets by distinctiveness, least typical tokens kept."""

    stage = Stage.PRE_LLM
    query_aware = False

    def __init__(
        self, budget: float = 0.25, channel_fraction: float = 0.5, temperature: float = 0.01, cuda_graphs: bool = True
    ) -> None:
        self.budget = check_budget(budget)
        self.channel_fraction = channel_fraction
        self.temperature = temperature
        self.cuda_graphs = bool(cuda_graphs)

    def reduce(self, video: VideoTokens) -> Reduction:
        if self.budget == 1.0:
            return keep_everything(video)
        settings = (self.budget, self.channel_fraction, self.temperature)
        call = functools.partial(kept_tokens, *settings)
        keep, rates = replayed(SCORING, settings, call, video.grid, enabled=self.cuda_graphs)
        kept = keep.nonzero().squeeze(1)
        return keep_subset(video, kept, info={"frame_rates": rates.tolist()})
