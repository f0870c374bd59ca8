"""Wall time on the host or the device, in milliseconds: CUDA events on GPU, ``perf_counter`` on CPU.

On GPU a mark is an event recorded on the current stream, so marking does not wait for the device; reading the
time between two marks waits once, for the later one.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import TypeVar

import torch

Result = TypeVar("Result")


class Clock:
    """Named points in time on ``device``'s clock; ``between`` reads the milliseconds from one to another."""

    def __init__(self, device: torch.device | str) -> None:
        self.cuda = torch.device(device).type == "cuda"
        self.marks: dict[str, object] = {}

    def mark(self, name: str) -> None:
        if self.cuda:
            event = torch.cuda.Event(enable_timing=True)
            event.record()
            self.marks[name] = event
        else:
            self.marks[name] = time.perf_counter()

    def between(self, start: str, end: str) -> float:
        """Milliseconds from mark ``start`` to mark ``end``; NaN unless both were marked."""
        if start not in self.marks or end not in self.marks:
            return math.nan
        first, last = self.marks[start], self.marks[end]
        if self.cuda:
            last.synchronize()
            return first.elapsed_time(last)
        return (last - first) * 1e3


def timed(call: Callable[[], Result], device: torch.device | str) -> tuple[Result, float]:
    """``call()``'s result and the milliseconds it took on ``device``'s clock."""
    clock = Clock(device)
    clock.mark("start")
    result = call()
    clock.mark("end")
    return result, clock.between("start", "end")
