"""What one call asks of the device, read with ``torch.profiler``: aten ops, host waits, and on CUDA the kernel
launches, device-to-host copies, stream syncs and the kernels' own time.

The host waits are the ops that need the device's values: ``aten::_local_scalar_dense`` (``.item()``, ``bool()``),
``aten::nonzero`` (boolean indexing, ``nonzero``) and a top-level ``aten::resolve_conj`` (``.tolist()``,
``.numpy()``, of host tensors too). A profiled call is slower than a plain one: time with ``sttm.clock``.

And what the host is: its CPU (``host_model``) and how long it takes to queue one small op (``launch_us``), which
sets the time of a call bound by the host's dispatch rather than by its kernels: on machines of one GPU kind such a
call's time follows it.
"""

from __future__ import annotations

import platform
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

#: host waits as the CPU profiler names them, and whether only top-level calls count (``bmm`` calls
#: ``resolve_conj`` too, without waiting).
SYNC_OPS = {"item/bool": ("aten::_local_scalar_dense", False), "nonzero": ("aten::nonzero", False),
            "tolist": ("aten::resolve_conj", True)}  # fmt: skip
#: the CUDA runtime calls that launch a kernel, copy to the host or wait for a stream.
RUNTIME_CALLS = {
    "launches": ("cudaLaunchKernel", "cuLaunchKernel", "cudaLaunchKernelExC", "cuLaunchKernelEx"),
    "copies": ("cudaMemcpyAsync",),
    "syncs": ("cudaStreamSynchronize", "cudaDeviceSynchronize"),
}


def device_work(call: Callable[[], object], cuda: bool, top: int = 0) -> dict[str, object]:
    """Counts of what one ``call()`` runs (see the module docstring); on CUDA also ``kernel ms``, the kernels'
    summed time, and with ``top`` > 0 ``top ops``: the ``top`` aten ops whose kernels took longest, as
    ``name ms×calls``."""
    activities = [ProfilerActivity.CPU, *([ProfilerActivity.CUDA] if cuda else [])]
    with profile(activities=activities) as prof:
        call()
        if cuda:
            torch.cuda.synchronize()
    events = prof.events()
    names = Counter(event.name for event in events)
    aten = [event for event in events if event.name.startswith("aten::")]
    counts: dict[str, object] = {
        "aten ops": len(aten),
        "top-level aten ops": sum(1 for event in aten if event.cpu_parent is None),
        **{
            key: sum(1 for event in aten if event.name == name and not (top_level and event.cpu_parent is not None))
            for key, (name, top_level) in SYNC_OPS.items()
        },
    }
    if cuda:
        counts.update({key: sum(names[name] for name in calls) for key, calls in RUNTIME_CALLS.items()})
        averages = [avg for avg in prof.key_averages() if avg.key.startswith("aten::")]
        counts["kernel ms"] = round(sum(avg.self_device_time_total for avg in averages) / 1e3, 3)
        if top:
            slowest = sorted(averages, key=lambda avg: avg.self_device_time_total, reverse=True)[:top]
            counts["top ops"] = ", ".join(
                f"{avg.key[6:]} {avg.self_device_time_total / 1e3:.2f}×{avg.count}" for avg in slowest
            )
    return counts


def host_model() -> str:
    """The host CPU's model name (``/proc/cpuinfo``), or what ``platform`` knows of it."""
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def launch_us(device: torch.device | str, launches: int = 2000) -> float:
    """Microseconds the host takes to queue one small op on ``device`` (median of 5 runs of ``launches`` in-place
    adds on a one-element tensor, the device left to catch up between runs): the cost that sets the time of a
    reducer the host, not the device, keeps waiting; it differs between machines of one GPU kind."""
    value = torch.zeros(1, device=device)
    runs = []
    for _ in range(5):
        if value.is_cuda:
            torch.cuda.synchronize(value.device)
        start = time.perf_counter()
        for _ in range(launches):
            value.add_(1)
        runs.append((time.perf_counter() - start) / launches * 1e6)
    if value.is_cuda:
        torch.cuda.synchronize(value.device)
    return sorted(runs)[len(runs) // 2]
