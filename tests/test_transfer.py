"""``sttm.transfer.to_device``: host values to a device, their dtype kept or given."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from sttm.transfer import to_device


def test_values_keep_their_own_dtype_unless_one_is_given():
    assert to_device([[1, 2], [3, 4]], "cpu").dtype == torch.long
    assert to_device([True, False], "cpu").dtype == torch.bool
    assert to_device(np.arange(3, dtype=np.int32), "cpu", torch.long).dtype == torch.long
    thresholds = to_device([0.1, 0.7], "cpu", torch.float32)
    assert torch.equal(thresholds, torch.tensor([0.1, 0.7], dtype=torch.float32))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_to_a_gpu_the_values_arrive_whole_while_the_device_is_busy():
    busy = torch.randn(4096, 4096, device="cuda")
    for _ in range(8):
        busy = busy @ busy / 64
    values = to_device(np.arange(1000), "cuda", torch.long)
    assert values.is_cuda and torch.equal(values.cpu(), torch.arange(1000))
