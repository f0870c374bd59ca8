import math

import torch

from sttm.device_work import device_work, host_model, launch_us


def test_device_work_counts_the_host_waits_of_a_call():
    values = torch.arange(10.0)
    work = device_work(lambda: (values.sum().item(), values.nonzero(), values.tolist()), cuda=False)
    assert (work["item/bool"], work["nonzero"], work["tolist"]) == (1, 1, 1)


def test_the_host_is_named_and_its_launch_cost_measured():
    assert host_model().strip()
    cost = launch_us("cpu", launches=200)
    assert math.isfinite(cost) and cost > 0
