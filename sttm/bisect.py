"""Bisection on a threshold in [-1, 1] down to adjacent float32 values, counting as few thresholds as it can.

``count(thresholds) -> counts`` is monotone: a higher threshold keeps at least as many tokens. The search wants the
highest threshold whose count stays within ``target``. One level at a time, it would count the midpoint of
(low, high), stop on an exact hit and move one end otherwise. Here a midpoint is counted only where ``known`` cannot
tell how its count compares with the target, thresholds of one ``region`` (where the count cannot differ) are
counted once, and up to ``width`` of those the walk may reach next are counted in one call: the walk is the same, it
visits the same thresholds and returns the same one.

Which ones a call counts is a guess at the walk's path: below a midpoint left to count, each branch is as likely as
``below`` says its count is to fall below the target (one half without a guess), and the likeliest are counted, so
that a good guess lets one call reach many levels down; without one, a call counts the next log2(width + 1) levels,
every branch of them. The guess decides only what is counted, never where the walk goes.

``region``, ``known`` and ``below`` take arrays, one entry per threshold (region) asked about.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable
from typing import NamedTuple

import numpy as np

MOST, LEAST = -1.0, 1.0  # the thresholds of the most and the least merging
UNKNOWN = 2  # a sign ``known`` cannot tell

Regions = Callable[[np.ndarray], np.ndarray]  # thresholds -> the regions they lie in (one count per region)
Signs = Callable[[np.ndarray], np.ndarray]  # regions -> how their counts compare with the target (-1, 0, 1, UNKNOWN)
Chances = Callable[[np.ndarray], np.ndarray]  # regions -> the guessed chance that their counts fall below the target


def midpoint(low: float, high: float) -> float | None:
    """The float32 halfway between ``low`` and ``high``, or None where they are adjacent float32 values."""
    middle = float(np.float32((low + high) / 2))
    return None if middle in (low, high) else middle


def walk(low: float, high: float, sign: Callable[[float], int]) -> tuple[float, float, float | None]:
    """Follow the bisection from (low, high) while ``sign`` knows the midpoints: (low, high, the result or None)."""
    while (middle := midpoint(low, high)) is not None:
        side = sign(middle)
        if side == UNKNOWN:
            return low, high, None
        if side == 0:  # no threshold can do better
            return low, high, middle
        low, high = (middle, high) if side < 0 else (low, middle)
    return low, high, low


class Branch(NamedTuple):
    """A branch of ``frontier``'s walk: its chance of being on the walk's path, its ends, and their regions and
    signs."""

    chance: float
    low: float
    high: float
    low_region: Hashable
    high_region: Hashable
    low_sign: int
    high_sign: int


def frontier(
    low: float,
    high: float,
    look: Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]],
    below: Chances,
    width: int,
) -> list[float]:
    """At most ``width`` midpoints below (low, high) that ``look`` (thresholds -> their regions and signs) does not
    know, one per region, the likeliest to be on the walk's path first, level by level: below an unknown midpoint
    both branches, each as likely as ``below`` guesses, below a known one the branch it takes; a branch less likely
    than 2 / (width + 1) is dropped (at one half a branch, the next log2(width + 1) unknown levels are kept).

    A branch whose ends lie in one region is dropped too where that region's sign is known or the region has been
    found: every midpoint below it lies in that region, so it could add nothing.
    """
    (low_region, high_region), (low_sign, high_sign) = (part.tolist() for part in look(np.array([low, high])))
    level, least = [Branch(1.0, low, high, low_region, high_region, low_sign, high_sign)], 2 / (width + 1)
    found: dict[Hashable, float] = {}

    def barren(branch: Branch) -> bool:
        same = branch.low_region == branch.high_region
        return same and (branch.low_sign != UNKNOWN or branch.low_region in found)

    while len(found) < width:
        level = [
            (branch, middle)
            for branch in level
            if not barren(branch) and (middle := midpoint(branch.low, branch.high)) is not None
        ]
        if not level:
            break
        regions, sides = (part.tolist() for part in look(np.array([middle for _, middle in level])))
        unknown = [index for index, side in enumerate(sides) if side == UNKNOWN]
        guesses = below(np.array([regions[index] for index in unknown])).tolist() if unknown else []
        up = [float(side < 0) for side in sides]  # the chance of each midpoint's upper branch
        for index, guess in zip(unknown, guesses, strict=True):
            up[index] = guess
        for index in sorted(unknown, key=lambda index: -level[index][0].chance):
            found.setdefault(regions[index], level[index][1])
            if len(found) == width:
                break
        following = []
        for (branch, middle), region, side, rise in zip(level, regions, sides, up, strict=True):
            fall = 1 - rise if side == UNKNOWN else float(side == 1)
            if branch.chance * rise >= least:
                following.append(branch._replace(chance=branch.chance * rise, low=middle, low_region=region,
                                                 low_sign=side))  # fmt: skip
            if branch.chance * fall >= least:
                following.append(branch._replace(chance=branch.chance * fall, high=middle, high_region=region,
                                                 high_sign=side))  # fmt: skip
        level = following
    return list(found.values())


def bisect(
    count: Callable[[list[float]], list[int]],
    target: int,
    width: int,
    region: Regions = lambda thresholds: thresholds,
    known: Signs = lambda regions: np.full(len(regions), UNKNOWN),
    below: Chances = lambda regions: np.full(len(regions), 0.5),
) -> tuple[float, bool]:
    """(the highest threshold whose count is within ``target`` as bisection finds it, whether any is): the least
    merging if it is within the target, the most merging (and False) if even that is over it.

    Thresholds of one region must have one count; ``known`` tells how it compares with the target where it can
    without counting; ``below`` guesses, where it cannot, the chance that the count falls below the target.
    """
    if width < 1:
        raise ValueError(f"width must be at least 1 (the thresholds counted in one call), got {width}")
    counted: dict[Hashable, int] = {}

    def look(thresholds: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        regions = region(thresholds)
        signs = np.array(known(regions))
        for index in np.flatnonzero(signs == UNKNOWN).tolist():
            signs[index] = counted.get(regions[index].item(), UNKNOWN)
        return regions, signs

    def sign(threshold: float) -> int:
        key = region(np.array([threshold]))
        side = int(known(key)[0])
        return counted.get(key[0].item(), UNKNOWN) if side == UNKNOWN else side

    def settle(thresholds: list[float]) -> None:
        regions, signs = look(np.array(thresholds))
        asked: dict[Hashable, float] = {}
        for key, side, threshold in zip(regions.tolist(), signs.tolist(), thresholds, strict=True):
            if side == UNKNOWN:
                asked.setdefault(key, threshold)
        if asked:
            for key, kept in zip(asked, count(list(asked.values())), strict=True):
                counted[key] = (kept > target) - (kept < target)

    if UNKNOWN in (sign(LEAST), sign(MOST)):
        settle([LEAST, MOST, *frontier(MOST, LEAST, look, below, width)])
    if sign(LEAST) <= 0:
        return LEAST, True
    if sign(MOST) > 0:
        return MOST, False
    low, high = MOST, LEAST  # count(low) <= target < count(high)
    while True:
        low, high, found = walk(low, high, sign)
        if found is not None:
            return found, True
        settle(frontier(low, high, look, below, width))
