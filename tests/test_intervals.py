"""Paired bootstrap intervals over videos: known answers, scipy's own bootstrap, clustering, the average over
benchmarks, and the t-interval across seeds."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.stats

from runners.intervals import interval_across, paired_intervals, video_sums


def benchmark(full, method, videos) -> tuple[np.ndarray, np.ndarray]:
    """Per-video sums [V, 2] and counts [V] of one benchmark from per-question scores and video ids."""
    return video_sums(np.stack([full, method], axis=1), np.asarray(videos))


def difference_interval(full, method, videos, seed: int = 0):
    """The interval of the difference on one benchmark."""
    sums, counts = benchmark(full, method, videos)
    return paired_intervals([sums], [counts], seed=seed)[0][0]


def test_video_sums_add_each_videos_questions():
    sums, counts = benchmark([1, 1, 0, 1], [1, 0, 0, 0], [7, 3, 7, 3])
    assert sums.tolist() == [[2, 0], [1, 1]] and counts.tolist() == [2, 2]  # videos 3 and 7, sorted


def test_identical_answers_give_a_zero_width_interval_at_no_difference():
    sums, counts = benchmark([1, 0, 1, 1, 0, 1], [1, 0, 1, 1, 0, 1], [0, 0, 1, 2, 2, 3])
    differences, relatives = paired_intervals([sums, sums], [counts, counts])
    assert len(differences) == len(relatives) == 3  # two benchmarks and their average
    assert all((d.estimate, d.low, d.high) == (0, 0, 0) for d in differences)
    assert all(r.estimate == pytest.approx(100) and r.high - r.low == pytest.approx(0) for r in relatives)


def test_two_videos_give_the_interval_computed_by_hand():
    # video 0: full right, method wrong (-100 points); video 1: both right. A draw of two videos holds video 0 twice
    # (1/4: -100), once (1/2: -50) or never (1/4: 0), so the 2.5th and 97.5th percentiles are -100 and 0.
    sums, counts = benchmark([1, 1], [0, 1], [0, 1])
    (difference, _), (relative, _) = paired_intervals([sums], [counts])
    assert (difference.estimate, difference.low, difference.high) == (-50, -100, 0)
    assert (relative.estimate, relative.low, relative.high) == (50, 0, 100)
    assert difference.contains(0) and not difference.contains(1)


def test_one_question_per_video_gives_scipys_bootstrap_of_the_paired_differences():
    rng = np.random.default_rng(3)
    full = (rng.random(60) < 0.8).astype(float)
    method = np.where(rng.random(60) < 0.2, 1 - full, full)
    difference = difference_interval(full, method, np.arange(60), seed=11)
    expected = scipy.stats.bootstrap(
        (100 * (method - full),), np.mean, n_resamples=9999, batch=1000, method="percentile",
        rng=np.random.default_rng(11),
    ).confidence_interval  # fmt: skip
    assert difference.estimate == pytest.approx(100 * (method - full).mean())
    assert (difference.low, difference.high) == pytest.approx((expected.low, expected.high))


def test_clustering_by_video_widens_the_interval_when_a_videos_questions_agree():
    rng = np.random.default_rng(0)
    flips = np.repeat(rng.random(20) < 0.3, 4)  # the method misses every question of 30% of the videos
    full, method = np.ones(80), np.where(flips, 0.0, 1.0)
    clustered = difference_interval(full, method, np.repeat(np.arange(20), 4))
    independent = difference_interval(full, method, np.arange(80))
    assert clustered.estimate == independent.estimate
    assert clustered.high - clustered.low > 1.5 * (independent.high - independent.low)


def test_the_average_averages_the_benchmarks():
    first = benchmark([1, 1, 1, 1, 0, 1], [1, 0, 1, 0, 0, 1], [0, 0, 1, 1, 2, 2])
    second = benchmark([1, 1, 1, 0], [1, 1, 1, 1], [0, 0, 1, 1])
    sums, counts = [first[0], second[0]], [first[1], second[1]]
    differences, relatives = paired_intervals(sums, counts)
    assert differences[0].estimate == pytest.approx(-100 * 2 / 6) and differences[1].estimate == 25
    assert differences[2].estimate == pytest.approx((differences[0].estimate + differences[1].estimate) / 2)
    assert relatives[2].estimate == pytest.approx(100 * (100 * 3 / 6 + 100) / (100 * 5 / 6 + 75))


def test_the_seed_fixes_the_draws():
    rng = np.random.default_rng(1)
    sums, counts = benchmark(rng.random(30), rng.random(30), np.arange(30) // 2)  # scores: means over seeds
    assert paired_intervals([sums], [counts], seed=5) == paired_intervals([sums], [counts], seed=5)
    assert paired_intervals([sums], [counts], seed=5) != paired_intervals([sums], [counts], seed=6)


def test_a_benchmark_of_one_video_or_malformed_sums_are_refused():
    sums, counts = benchmark([1, 0], [1, 1], [4, 4])
    with pytest.raises(ValueError, match="benchmark 0 has 1 video"):
        paired_intervals([sums], [counts])
    with pytest.raises(ValueError, match=r"sums must be \[V, 2\]"):
        paired_intervals([np.ones((3, 3))], [np.ones(3)])


def test_the_interval_across_seeds_is_students_t():
    across = interval_across(np.array([1.0, 2.0, 3.0]))
    half_width = scipy.stats.t.ppf(0.975, 2) * 1 / np.sqrt(3)  # sample standard deviation 1
    assert (across.estimate, across.low, across.high) == pytest.approx((2, 2 - half_width, 2 + half_width))
    assert interval_across(np.array([4.0, 4.0])) == interval_across(np.array([4.0, 4.0, 4.0]))
    assert (interval_across(np.array([4.0, 4.0])).low, interval_across(np.array([4.0, 4.0])).high) == (4, 4)
    single = interval_across(np.array([7.0]))
    assert single.estimate == 7 and np.isnan(single.low) and np.isnan(single.high)
