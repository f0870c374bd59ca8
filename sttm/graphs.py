"""CUDA graphs of the work a reducer queues on a GPU without the host waiting: replayed as one launch each.

On a GPU, a reducer's kernels are often short and many (STTM's quadtree, the kept count's bounds, a grouping at a
batch of thresholds: several hundred launches per video; PruneVid's frame clustering, VidCom2's scoring,
VisionZip's selection through ``replayed``), so the host's launching, not the device, sets its time. A
``Replay`` captures one such call once, for the shapes and parameters it was captured with, and replays it: the same
kernels on the same data (static copies of its tensor arguments), hence the same values; its outputs live in the
graph's own memory and are overwritten by the next replay.

``Captures`` keeps the replays of a few input layouts, least recently used dropped first, and captures a layout
only the second time it sees it: a run whose every video has a shape of its own (native-resolution models)
pays no capture and runs eagerly as before.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field
from typing import Any

import torch


@dataclass
class Replay:
    """A captured call: ``graph`` reads ``inputs`` (static copies of the call's tensor arguments) and writes
    ``output``. Calling it copies the arguments into ``inputs``, replays the graph and returns ``output``."""

    graph: torch.cuda.CUDAGraph
    inputs: tuple[torch.Tensor, ...]
    output: Any

    def __call__(self, *args: torch.Tensor) -> Any:
        for static, arg in zip(self.inputs, args, strict=True):
            static.copy_(arg)
        self.graph.replay()
        return self.output


def capture(call: Callable[..., Any], *args: torch.Tensor) -> Replay:
    """Capture ``call(*args)`` (tensors on one CUDA device; ``call`` must not wait on the device or depend on the
    arguments' values on the host). It runs once on a side stream first, so that lazy set-up (library handles,
    compiled kernels) happens outside the capture."""
    with torch.inference_mode(False):  # ordinary tensors, which a later call may write in or out of inference mode
        inputs = tuple(torch.empty_like(arg) for arg in args)
    for static, arg in zip(inputs, args, strict=True):
        static.copy_(arg)
    side = torch.cuda.Stream(inputs[0].device)
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        call(*inputs)
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph, capture_error_mode="thread_local"):  # other threads may use CUDA meanwhile
        output = call(*inputs)
    return Replay(graph, inputs, output)


@dataclass
class Captured:
    """What is captured for one input layout: ``main``, the call the layout was seen with, and ``later``, replays
    that read ``main``'s outputs (valid only while it is alive, so kept with it), by a key of their own."""

    main: Replay
    later: dict[Hashable, Replay] = field(default_factory=dict)

    def replay_later(self, key: Hashable, call: Callable[..., Any], *args: torch.Tensor) -> Any:
        """``call(*args)`` replayed, captured under ``key`` the first time."""
        if key not in self.later:
            self.later[key] = capture(call, *args)
        return self.later[key](*args)


class Captures:
    """At most ``size`` ``Captured`` layouts by key, least recently used dropped first (with their graphs' memory);
    a key is captured the second time it is run (``run``)."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.captured: OrderedDict[Hashable, Captured] = OrderedDict()
        self.seen: OrderedDict[Hashable, None] = OrderedDict()

    def run(self, key: Hashable, call: Callable[..., Any], *args: torch.Tensor) -> tuple[Captured | None, Any]:
        """The layout of ``key`` and ``call(*args)`` replayed in it; the first time ``key`` is run, None and the call
        run eagerly."""
        if key in self.captured:
            self.captured.move_to_end(key)
            captured = self.captured[key]
            return captured, captured.main(*args)
        if key not in self.seen:
            self.seen[key] = None
            while len(self.seen) > 4 * self.size:
                self.seen.popitem(last=False)
            return None, call(*args)
        while len(self.captured) >= self.size:
            self.captured.popitem(last=False)
        captured = self.captured[key] = Captured(capture(call, *args))
        return captured, captured.main(*args)

    def clear(self) -> None:
        self.captured.clear()
        self.seen.clear()


def replayed(
    captures: Captures, key: Hashable, call: Callable[..., Any], *args: torch.Tensor, enabled: bool = True
) -> Any:
    """``call(*args)``, through ``captures`` (``Captures.run``) where ``enabled`` and the arguments are on a GPU,
    else run eagerly. ``key`` holds what the call's work depends on besides its arguments' values; their shapes,
    strides, dtypes and device, and whether deterministic algorithms are on, are added to it here."""
    if not (enabled and args[0].is_cuda):
        return call(*args)
    layout = tuple((tuple(arg.shape), arg.stride(), arg.dtype, arg.device) for arg in args)
    return captures.run((key, layout, torch.are_deterministic_algorithms_enabled()), call, *args)[1]
