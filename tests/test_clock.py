"""The one clock: marks and the milliseconds between them, and the time of one call (host clock on the CPU)."""

from __future__ import annotations

import math
import time

import torch

from sttm.clock import Clock, timed


class SteppedClock:
    """A perf_counter that moves by the seconds a test sets, and only then."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_between_reads_the_milliseconds_from_one_mark_to_another(monkeypatch):
    seconds = SteppedClock()
    monkeypatch.setattr(time, "perf_counter", seconds)
    clock = Clock(torch.device("cpu"))
    clock.mark("start")
    seconds.now += 0.25
    clock.mark("end")
    assert clock.between("start", "end") == 250.0
    assert math.isnan(clock.between("start", "never marked"))


def test_timed_gives_the_result_and_the_time_of_the_call(monkeypatch):
    seconds = SteppedClock()
    monkeypatch.setattr(time, "perf_counter", seconds)

    def call():
        seconds.now += 1.5
        return "done"

    assert timed(call, "cpu") == ("done", 1500.0)
