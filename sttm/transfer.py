"""Host values to a device without waiting for the work queued there."""

from __future__ import annotations

import torch


def to_device(values, device: torch.device | str, dtype: torch.dtype | None = None) -> torch.Tensor:
    """Numbers, equal-length lists of them, a numpy array or a CPU tensor -> a tensor on ``device``, of ``dtype``
    (None: the values' own). To a GPU through pinned memory and a non-blocking copy, which the host does not wait
    for; ``torch.tensor(values, device=...)`` would wait for the work queued before it."""
    host = torch.as_tensor(values, dtype=dtype)
    if torch.device(device).type == "cuda":
        return host.pin_memory().to(device, non_blocking=True)
    return host.to(device)
