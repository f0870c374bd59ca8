import math

import torch

from baselines.evs import EVS
from sttm.api import VideoTokens
from sttm.device_work import device_work, host_model, host_time_by_line, launch_us


def test_device_work_counts_the_host_waits_of_a_call():
    values = torch.arange(10.0)
    work = device_work(lambda: (values.sum().item(), values.nonzero(), values.tolist()), cuda=False)
    assert (work["item/bool"], work["nonzero"], work["tolist"]) == (1, 1, 1)


def test_the_host_is_named_and_its_launch_cost_measured():
    assert host_model().strip()
    cost = launch_us("cpu", launches=200)
    assert math.isfinite(cost) and cost > 0


def test_the_host_time_of_a_call_is_told_by_line_of_the_code_that_asked_for_it():
    video = VideoTokens(torch.randn(4, 3, 3, 8, generator=torch.Generator().manual_seed(0)))
    account = host_time_by_line(lambda: EVS(budget=0.5).reduce(video), ["baselines"], top=100)
    lines = account["lines"]
    assert lines and all(where.startswith("baselines/evs.py:") for where, _, _ in lines)
    assert sum(calls for _, _, calls in lines) == account["torch calls"]
    assert 0 < sum(ms for _, ms, _ in lines) <= account["host ms"] + 1e-3
    outside = host_time_by_line(lambda: torch.ones(3).sum(), ["baselines"], top=5, repeats=3)
    assert [where for where, _, _ in outside["lines"]] == ["elsewhere"] and outside["torch calls"] == 2
    assert outside["lines"][0][2] == 2  # per call, over the three
