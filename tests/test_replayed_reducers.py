"""Reducers whose fixed-shape work replays from a CUDA graph (``sttm.graphs.replayed``): replayed equals eager.

Needs a GPU and is skipped without one (run it there: ``python -m pytest tests/test_replayed_reducers.py``); STTM's
own graphs are ``tests/test_sttm_graphs.py``'s.
"""

from __future__ import annotations

import pytest
import torch

from baselines.prunevid import FRAME_CLUSTERING, PruneVid
from baselines.vidcom2 import SCORING, VidCom2
from baselines.visionzip import MERGING, VisionZip
from sttm.synthetic import benchmark_video

REPLAYED = [
    (PruneVid, {"budget": 0.3}, FRAME_CLUSTERING),
    (PruneVid, {"budget": 0.3, "variant": "corrected"}, FRAME_CLUSTERING),
    (VidCom2, {"budget": 0.3}, SCORING),
    (VidCom2, {"budget": 0.15}, SCORING),
    (VisionZip, {"budget": 0.3}, MERGING),
    (VisionZip, {"budget": 54 / 196}, MERGING),
]
PARTS = ("tokens", "boxes", "num_patches", "members", "member_weights")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a GPU")
@pytest.mark.parametrize(("reducer", "settings", "captures"), REPLAYED, ids=lambda value: str(value)[:40])
def test_a_replayed_reducer_returns_what_the_eager_one_returns(reducer, settings, captures):
    """Three videos of one shape, each reduced three times in turn (the second in inference mode): every output
    equals the eager reducer's, a video's after another's replay has overwritten the graph's memory too, and
    outputs already returned are not overwritten by later replays."""
    captures.clear()
    videos = [benchmark_video(32, 14, 14, 256, dtype=torch.bfloat16, device="cuda", seed=seed) for seed in range(3)]
    eager = [reducer(**settings, cuda_graphs=False)(video) for video in videos]
    graphed = reducer(**settings)
    try:
        returned = []
        for round_index in range(3):
            with torch.inference_mode(round_index == 1):
                returned += [(expected, graphed(video)) for expected, video in zip(eager, videos, strict=True)]
        assert captures.captured, "the shape was never captured"
        for expected, got in returned:
            for part in PARTS:
                mine, theirs = getattr(got, part), getattr(expected, part)
                assert (mine is None and theirs is None) or torch.equal(mine, theirs), part
            assert got.info == expected.info
    finally:
        captures.clear()
