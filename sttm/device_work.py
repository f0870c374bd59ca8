"""What one call asks of the device, read with ``torch.profiler``: aten ops, host waits, and on CUDA the kernel
launches, device-to-host copies, stream syncs and the kernels' own time.

The host waits are the ops that need the device's values: ``aten::_local_scalar_dense`` (``.item()``, ``bool()``),
``aten::nonzero`` (boolean indexing, ``nonzero``) and a top-level ``aten::resolve_conj`` (``.tolist()``,
``.numpy()``, of host tensors too). A profiled call is slower than a plain one: time with ``sttm.clock``.

And what the host is: its CPU (``host_model``) and how long it takes to queue one small op (``launch_us``), which
sets the time of a call bound by the host's dispatch rather than by its kernels: on machines of one GPU kind such a
call's time follows it. Where a call's host time goes, line by line of the code that asked for it:
``host_time_by_line``.
"""

from __future__ import annotations

import os
import platform
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterable
from pathlib import Path

import torch
from torch.overrides import TorchFunctionMode
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


class _HostTimeByLine(TorchFunctionMode):
    """Each torch call's host time (perf_counter around it), by the innermost frame of its stack in ``folders``."""

    def __init__(self, folders: tuple[Path, ...]) -> None:
        super().__init__()
        self.prefixes = tuple(str(folder) + os.sep for folder in folders)
        self.seconds: Counter[str] = Counter()
        self.calls: Counter[str] = Counter()

    def __torch_function__(self, func, types, args=(), kwargs=None):
        frame = sys._getframe(1)
        while frame is not None and not frame.f_code.co_filename.startswith(self.prefixes):
            frame = frame.f_back
        where = "elsewhere"
        if frame is not None:
            path = Path(frame.f_code.co_filename)
            where = f"{path.parent.name}/{path.name}:{frame.f_lineno} {frame.f_code.co_name}"
        start = time.perf_counter()
        result = func(*args, **(kwargs or {}))
        self.seconds[where] += time.perf_counter() - start
        self.calls[where] += 1
        return result


def host_time_by_line(
    call: Callable[[], object], folders: Iterable[str | Path], top: int, repeats: int = 1
) -> dict[str, object]:
    """Where the host's time in ``call()``'s torch calls goes, per call over ``repeats`` calls: each torch call's wall
    time on the host (its dispatch and launch, and any wait for the device it makes; the torch calls it makes
    itself count in it), attributed to the innermost line of the stack in a file of ``folders`` (e.g.
    ``baselines``, ``sttm``), "elsewhere" if none. Returns ``torch calls``, ``host ms`` (their sum) and ``lines``:
    the ``top`` lines by time, as ``[folder/file:line function, ms, calls]``. The mode that records them adds a few
    microseconds to each torch call; the host's time outside torch calls (Python, numpy) is what a call's wall time
    leaves."""
    recorder = _HostTimeByLine(tuple(Path(folder).resolve() for folder in folders))
    with recorder:
        for _ in range(repeats):
            call()
    return {
        "torch calls": sum(recorder.calls.values()) // repeats,
        "host ms": round(sum(recorder.seconds.values()) * 1e3 / repeats, 3),
        "lines": [[where, round(seconds * 1e3 / repeats, 3), recorder.calls[where] // repeats]
                  for where, seconds in recorder.seconds.most_common(top)],
    }  # fmt: skip


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
