"""95% confidence intervals for the accuracy of a method against a reference that answered the same questions.

Questions about one video are not independent draws: a model that misreads a video tends to miss all of its
questions. So the bootstrap resamples videos, not questions (a cluster bootstrap, as lmms-eval's clustered standard
error groups questions by a ``cluster_key``), and it is paired: one draw of videos scores both methods. Each
benchmark's videos are drawn on their own; a statistic over benchmarks averages the per-benchmark accuracies of
one draw, as the tables average benchmarks.

``scipy.stats.bootstrap`` draws: each benchmark is one of its samples, holding the indices of that benchmark's
videos, and the statistic turns the drawn indices into accuracies through per-video sums. Percentile intervals, as
BCa's jackknife is undefined where every draw gives the same value (identical answers give [0, 0]).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import scipy.stats

SEED = 0
RESAMPLES = 9999
CONFIDENCE = 0.95


@dataclass(frozen=True)
class Interval:
    """A point estimate and its confidence interval [low, high]; NaN where undefined."""

    estimate: float
    low: float
    high: float

    def contains(self, value: float) -> bool:
        return bool(self.low <= value <= self.high)


def video_sums(scores: np.ndarray, videos: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-video sums of per-question scores.

    scores: [Q, M] float, each question's score (0 or 1, or a mean over seeds) under each of M methods.
    videos: [Q], each question's video id (any sortable values).
    Returns sums [V, M] and counts [V] (questions per video), over the V distinct videos in sorted order.
    """
    scores = np.asarray(scores, dtype=float)
    if scores.ndim != 2 or len(scores) != len(videos):
        raise ValueError(f"scores must be [Q, M] with one row per video id, got {scores.shape} for {len(videos)}")
    _, inverse = np.unique(np.asarray(videos), return_inverse=True)
    sums = np.zeros((inverse.max() + 1 if len(inverse) else 0, scores.shape[1]))
    np.add.at(sums, inverse, scores)
    return sums, np.bincount(inverse, minlength=len(sums))


def accuracies(sums: Sequence[np.ndarray], counts: Sequence[np.ndarray], draws: Sequence[np.ndarray]) -> np.ndarray:
    """Accuracies (%) of each benchmark's drawn videos.

    sums[b]: [V_b, M] per-video score sums; counts[b]: [V_b]; draws[b]: [..., V_b] drawn video indices.
    Returns [..., B, M].
    """
    per_benchmark = [
        100 * s[d].sum(axis=-2) / c[d].sum(axis=-1)[..., None] for s, c, d in zip(sums, counts, draws, strict=True)
    ]
    return np.stack(per_benchmark, axis=-2)


def paired_statistics(accuracy: np.ndarray) -> np.ndarray:
    """The method's difference (points) and relative accuracy (% of the reference) from accuracies.

    accuracy: [..., B, 2], the reference's (column 0) and the method's (column 1) accuracy on each benchmark.
    Returns [2, ..., B + 1]: difference then relative accuracy, for each benchmark then for their average.
    """
    accuracy = np.concatenate([accuracy, accuracy.mean(axis=-2, keepdims=True)], axis=-2)
    reference, method = accuracy[..., 0], accuracy[..., 1]
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.stack([method - reference, 100 * method / reference])


def paired_intervals(
    sums: Sequence[np.ndarray],
    counts: Sequence[np.ndarray],
    seed: int = SEED,
    resamples: int = RESAMPLES,
    confidence: float = CONFIDENCE,
) -> tuple[list[Interval], list[Interval]]:
    """Intervals of a method against a reference from a paired bootstrap over each benchmark's videos.

    sums[b]: [V_b, 2] per-video score sums of the reference (column 0) and the method (column 1) on benchmark b
    (``video_sums``); counts[b]: [V_b] questions per video. Returns the intervals of the difference (points, method
    minus reference) and of the relative accuracy (% of the reference), each a list of B + 1: the benchmarks', then
    their average's; a relative accuracy has no interval (NaN) where a draw leaves the reference no right answer.
    The same seed gives the same intervals.
    """
    if not sums or len(sums) != len(counts):
        raise ValueError(f"need per-video sums and counts for each benchmark, got {len(sums)} and {len(counts)}")
    for index, (s, c) in enumerate(zip(sums, counts, strict=True)):
        if s.ndim != 2 or s.shape[1] != 2 or s.shape[0] != len(c):
            raise ValueError(f"benchmark {index}: sums must be [V, 2] and counts [V], got {s.shape} and {c.shape}")
        if len(c) < 2:
            raise ValueError(f"benchmark {index} has {len(c)} video(s): resampling videos needs at least two")
    sums = [np.asarray(s, dtype=float) for s in sums]
    counts = [np.asarray(c, dtype=float) for c in counts]

    def statistic(*draws: np.ndarray, axis: int = -1) -> np.ndarray:
        values = paired_statistics(accuracies(sums, counts, draws))  # [2, ..., B + 1]
        return np.moveaxis(values, -1, 1).reshape(-1, *values.shape[1:-1])

    estimate = statistic(*[np.arange(len(c)) for c in counts])
    result = scipy.stats.bootstrap(
        [np.arange(len(c)) for c in counts], statistic, n_resamples=resamples, vectorized=True, batch=1000,
        confidence_level=confidence, method="percentile", rng=np.random.default_rng(seed),
    )  # fmt: skip
    low, high = result.confidence_interval
    intervals = [Interval(*map(float, values)) for values in zip(estimate, low, high, strict=True)]
    return intervals[: len(sums) + 1], intervals[len(sums) + 1 :]


def interval_across(values: np.ndarray, confidence: float = CONFIDENCE) -> Interval:
    """The mean of a few repeated measurements (e.g. one accuracy per seed) and its t-interval.

    values: [S]. With one value the interval is undefined (NaN); with identical values it has zero width.
    """
    values = np.asarray(values, dtype=float)
    mean = float(values.mean())
    if len(values) < 2:
        return Interval(mean, np.nan, np.nan)
    sem = scipy.stats.sem(values)
    if sem == 0:
        return Interval(mean, mean, mean)
    low, high = scipy.stats.t.interval(confidence, len(values) - 1, loc=mean, scale=sem)
    return Interval(mean, float(low), float(high))
