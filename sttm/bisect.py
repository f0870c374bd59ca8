"""Bisection on a threshold in [-1, 1] down to adjacent float32 values, counting several levels at once.

``count(thresholds) -> counts`` is monotone: a higher threshold keeps at least as many tokens. The search wants the
highest threshold whose count stays within ``target``. One level at a time, it would count the midpoint of
(low, high), stop on an exact hit and move one end otherwise. Here the midpoints of the next ``depth`` levels, every
branch of them, are counted in one call, and the same walk is then read off those counts: the same thresholds are
visited and the same one is returned, with one call per ``depth`` levels.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

MOST, LEAST = -1.0, 1.0  # the thresholds of the most and the least merging


def midpoint(low: float, high: float) -> float | None:
    """The float32 halfway between ``low`` and ``high``, or None where they are adjacent float32 values."""
    middle = float(np.float32((low + high) / 2))
    return None if middle in (low, high) else middle


def lookahead(low: float, high: float, depth: int) -> list[float]:
    """The midpoints of the next ``depth`` bisection levels from (low, high), every branch, breadth first."""
    found, frontier = [], [(low, high)]
    for _ in range(depth):
        following = []
        for a, b in frontier:
            middle = midpoint(a, b)
            if middle is not None:
                found.append(middle)
                following += [(a, middle), (middle, b)]
        frontier = following
    return found


def walk(low: float, high: float, counts: dict[float, int], target: int) -> tuple[float, float, float | None]:
    """Follow the bisection from (low, high) while ``counts`` knows the midpoints: (low, high, the result or None)."""
    while (middle := midpoint(low, high)) is not None:
        if middle not in counts:
            return low, high, None
        if counts[middle] == target:  # no threshold can do better
            return low, high, middle
        low, high = (middle, high) if counts[middle] < target else (low, middle)
    return low, high, low


def bisect(count: Callable[[list[float]], list[int]], target: int, depth: int) -> tuple[float, bool]:
    """(the highest threshold whose count is within ``target`` as bisection finds it, whether any is): the least
    merging if it is within the target, the most merging (and False) if even that is over it."""
    asked = [LEAST, MOST, *lookahead(MOST, LEAST, depth)]
    counts = dict(zip(asked, count(asked), strict=True))
    if counts[LEAST] <= target:
        return LEAST, True
    if counts[MOST] > target:
        return MOST, False
    low, high = MOST, LEAST  # count(low) <= target < count(high)
    while True:
        low, high, found = walk(low, high, counts, target)
        if found is not None:
            return found, True
        asked = [t for t in lookahead(low, high, depth) if t not in counts]
        counts.update(zip(asked, count(asked), strict=True))
