"""Bisection on a threshold in [-1, 1] down to adjacent float32 values, counting as few thresholds as it can.

``count(thresholds) -> counts`` is monotone: a higher threshold keeps at least as many tokens. The search wants the
highest threshold whose count stays within ``target``. One level at a time, it would count the midpoint of
(low, high), stop on an exact hit and move one end otherwise. Here a midpoint is counted only where ``known`` cannot
tell how its count compares with the target, thresholds of one ``region`` (where the count cannot differ) are
counted once, and those left to count in the next ``depth`` levels below the walk's position, every branch of
them, are counted in one call: the walk is the same, it visits the same thresholds and returns the same one.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable

import numpy as np

MOST, LEAST = -1.0, 1.0  # the thresholds of the most and the least merging


def midpoint(low: float, high: float) -> float | None:
    """The float32 halfway between ``low`` and ``high``, or None where they are adjacent float32 values."""
    middle = float(np.float32((low + high) / 2))
    return None if middle in (low, high) else middle


Sign = Callable[[float], int | None]  # how a threshold's count compares with the target: -1, 0, 1, or None: unknown


def walk(low: float, high: float, sign: Sign) -> tuple[float, float, float | None]:
    """Follow the bisection from (low, high) while ``sign`` knows the midpoints: (low, high, the result or None)."""
    while (middle := midpoint(low, high)) is not None:
        side = sign(middle)
        if side is None:
            return low, high, None
        if side == 0:  # no threshold can do better
            return low, high, middle
        low, high = (middle, high) if side < 0 else (low, middle)
    return low, high, low


def frontier(low: float, high: float, sign: Sign, region: Callable[[float], Hashable], depth: int) -> list[float]:
    """The midpoints below (low, high) that ``sign`` does not know and that the walk can reach through fewer than
    ``depth`` others it does not know, breadth first, one per region: below an unknown midpoint both branches,
    below a known one the branch it takes."""
    found, regions, level = [], set(), [(low, high, 0)]  # (low, high, unknown midpoints above)
    while level:
        following = []
        for a, b, unknown in level:
            if (middle := midpoint(a, b)) is None:
                continue
            side = sign(middle)
            if side is None:
                if region(middle) not in regions:
                    regions.add(region(middle))
                    found.append(middle)
                if unknown + 1 < depth:
                    following += [(a, middle, unknown + 1), (middle, b, unknown + 1)]
            elif side != 0:
                following.append((middle, b, unknown) if side < 0 else (a, middle, unknown))
        level = following
    return found


def bisect(
    count: Callable[[list[float]], list[int]],
    target: int,
    depth: int,
    known: Callable[[Hashable], int | None] = lambda region: None,
    region: Callable[[float], Hashable] = lambda threshold: threshold,
) -> tuple[float, bool]:
    """(the highest threshold whose count is within ``target`` as bisection finds it, whether any is): the least
    merging if it is within the target, the most merging (and False) if even that is over it.

    Thresholds of one ``region(threshold)`` must have one count; ``known(region)`` tells how it compares with the
    target (-1 below, 0 on it, 1 above) where it can without counting, else None.
    """
    signs: dict[Hashable, int] = {}

    def sign(threshold: float) -> int | None:
        key = region(threshold)
        return signs[key] if key in signs else known(key)

    def settle(thresholds: list[float]) -> None:
        asked: dict[Hashable, float] = {}
        for threshold in thresholds:
            if sign(threshold) is None:
                asked.setdefault(region(threshold), threshold)
        if asked:
            for key, kept in zip(asked, count(list(asked.values())), strict=True):
                signs[key] = (kept > target) - (kept < target)

    if sign(LEAST) is None or sign(MOST) is None:
        settle([LEAST, MOST, *frontier(MOST, LEAST, sign, region, depth)])
    if sign(LEAST) <= 0:
        return LEAST, True
    if sign(MOST) > 0:
        return MOST, False
    low, high = MOST, LEAST  # count(low) <= target < count(high)
    while True:
        low, high, found = walk(low, high, sign)
        if found is not None:
            return found, True
        settle(frontier(low, high, sign, region, depth))
