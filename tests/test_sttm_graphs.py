"""STTM's CUDA graphs (``sttm.graphs``): when a layout is captured, and that replaying it changes no output.

The bookkeeping runs anywhere (``capture`` replaced by a recorder); the equality of replayed and eager STTM needs a
GPU and is skipped without one (run it there: ``python -m pytest tests/test_sttm_graphs.py``).
"""

from __future__ import annotations

import pytest
import torch

import sttm.graphs as graphs
from sttm.api import VideoTokens
from sttm.reducer import CAPTURES, STTM
from sttm.synthetic import redundant_video


class Recorded:
    """Stands for a ``Replay``: counts its replays and returns what the call returns."""

    def __init__(self, call, log):
        self.call, self.log = call, log
        log.append("capture")

    def __call__(self, *args):
        self.log.append("replay")
        return self.call(*args)


def test_a_layout_is_captured_the_second_time_it_is_seen_and_the_least_recently_used_is_dropped(monkeypatch):
    log: list[str] = []
    monkeypatch.setattr(graphs, "capture", lambda call, *args: Recorded(call, log))
    captures = graphs.Captures(size=2)
    double = lambda x: 2 * x  # noqa: E731
    layout, out = captures.run("a", double, torch.ones(1))
    assert layout is None and torch.equal(out, torch.full((1,), 2.0))  # first sight: run eagerly
    assert log == []
    layout, out = captures.run("a", double, torch.ones(1))
    assert log == ["capture", "replay"] and torch.equal(out, torch.full((1,), 2.0))
    assert layout.replay_later("pass", double, torch.ones(2)).tolist() == [2.0, 2.0]
    layout.replay_later("pass", double, torch.ones(2))
    assert log == ["capture", "replay", "capture", "replay", "replay"]  # a later call is captured once per layout
    captures.run("b", double, torch.ones(1))
    captures.run("b", double, torch.ones(1))
    captures.run("a", double, torch.ones(1))  # "a" is now the most recently used
    captures.run("c", double, torch.ones(1))
    captures.run("c", double, torch.ones(1))  # capturing "c" drops "b"
    assert list(captures.captured) == ["a", "c"]
    log.clear()
    captures.run("a", double, torch.ones(1))
    assert log == ["replay"]


def test_on_the_cpu_no_layout_is_captured():
    CAPTURES.clear()
    video = VideoTokens(redundant_video(6, 8, 8, 16))
    first, again = STTM(budget=0.4)(video), STTM(budget=0.4)(video)
    assert torch.equal(first.tokens, again.tokens)
    assert not CAPTURES.captured and not CAPTURES.seen


def outputs(reduction):
    return (reduction.tokens, reduction.boxes, reduction.num_patches, reduction.members, reduction.member_weights)


def same(a, b) -> bool:
    return a.info == b.info and all(
        (x is None and y is None) or (x is not None and y is not None and torch.equal(x, y))
        for x, y in zip(outputs(a), outputs(b), strict=True)
    )


SETTINGS = [
    {"budget": 0.5},
    {"budget": 0.3},
    {"budget": 0.15},
    {"budget": 0.3, "variant": "corrected"},
    {"budget": 0.3, "budget_gap": None},
    {"budget": 0.25, "head_dim": 64},
    {"budget": 0.3, "weighted_avg": True},
    {"threshold": 0.85, "temporal_threshold": 0.55},
    {"threshold": 0.8, "temporal_threshold": 0.5, "variant": "corrected"},
    {"threshold": 0.9},
]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a GPU")
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
@pytest.mark.parametrize("settings", SETTINGS, ids=str)
@pytest.mark.parametrize("deterministic", [False, True])
def test_replayed_sttm_equals_eager_sttm_on_every_call(settings, dtype, deterministic):
    """Three videos of one shape, each reduced three times in turn (eager, captured, replayed; in and out of
    inference mode): every output equals the eager reducer's, including a video's after another's replay has
    overwritten the graphs' memory."""
    CAPTURES.clear()
    previous = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(deterministic)
    try:
        videos = [
            VideoTokens(redundant_video(32, 14, 14, 256, seed=seed, dtype=dtype, device="cuda")) for seed in range(3)
        ]
        eager = [STTM(**settings, cuda_graphs=False)(video) for video in videos]
        graphed = STTM(**settings)
        results = []
        for round_index in range(3):  # the second in inference mode, as the reduction points call reducers
            with torch.inference_mode(round_index == 1):
                results.append([graphed(video) for video in videos])
        assert CAPTURES.captured, "the layout was never captured"
        for round_results in results:
            for expected, got in zip(eager, round_results, strict=True):
                assert same(expected, got)
    finally:
        torch.use_deterministic_algorithms(previous)
        CAPTURES.clear()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a GPU")
@pytest.mark.parametrize("seed", range(12))
def test_replayed_budget_search_equals_eager_search_on_many_videos(seed):
    """Videos of one shape and varied redundancy at many budgets, so that searches take one pass or several."""
    CAPTURES.clear()
    generator = torch.Generator().manual_seed(seed)
    scene, noise = int(torch.randint(1, 9, (1,), generator=generator)), float(torch.rand(1, generator=generator))
    shape = (48, 14, 14, 512)
    budgets = [0.05 + 0.9 * float(b) for b in torch.rand(6, generator=generator)]
    videos = [
        VideoTokens(redundant_video(*shape, scene_length=scene, noise=noise, seed=100 * seed + k, device="cuda"))
        for k in range(3)
    ]
    try:
        for budget in budgets:
            for video in videos * 2:
                assert same(STTM(budget=budget, cuda_graphs=False)(video), STTM(budget=budget)(video))
    finally:
        CAPTURES.clear()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a GPU")
@pytest.mark.parametrize(
    "settings", [{"budget": 0.5}, {"budget": 0.15}, {"threshold": 0.9, "temporal_threshold": 0.7}], ids=str
)
def test_a_propagation_that_settles_after_several_looks_replays_its_further_rounds_as_eager_sttm_runs_them(settings):
    """Videos of one long scene: temporal chains across every frame, so the official variant's labels settle only
    after further rounds, which are replayed too."""
    CAPTURES.clear()
    videos = [
        VideoTokens(redundant_video(64, 14, 14, 256, scene_length=64, noise=0.3, seed=seed, device="cuda"))
        for seed in range(2)
    ]
    try:
        eager = [STTM(**settings, cuda_graphs=False)(video) for video in videos]
        graphed = STTM(**settings)
        for _ in range(3):
            for expected, video in zip(eager, videos, strict=True):
                assert same(expected, graphed(video))
        later = [key for captured in CAPTURES.captured.values() for key in captured.later]
        assert any(isinstance(key, tuple) and key[0] == "rounds" for key in later), later
    finally:
        CAPTURES.clear()
