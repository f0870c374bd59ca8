"""Count what one STTM call asks of the device: aten ops, host syncs, and on CUDA kernel launches.

    python scripts/profile_sttm_search.py                                   # [128, 14, 14, 3584] bf16, GPU if any
    python scripts/profile_sttm_search.py --shape 32 14 14 3584 --dtype float32 --device cpu
    python scripts/profile_sttm_search.py --model qwen3_vl_8b --frames 128 --budgets 0.5 0.3 0.15  # a model's grid

The input is ``sttm.synthetic.redundant_video`` of ``--shape``, or with ``--model`` the video that
``runners.latency``'s request hands an LLM-layer reducer at the model's ``llm_layer`` (its published size, random
bf16 weights: ``sttm.adapters.real_size``), which is what STTM searches in the latency runs; the bench's synthetic
video is not a stand-in for it: the passes the search counts depend on the grid.

For STTM at the paper's fixed thresholds and in budget mode, each variant, one warmed-up ``reduce()`` is profiled
with ``torch.profiler``. Printed per setting: what ``sttm.device_work`` counts (aten ops, the host waits, and on
CUDA launches, copies, syncs and the kernels' time). Timing is left to ``scripts/bench_reducers.py``: a profiled
call is slower than a plain one.

For budget mode two more columns: how many thresholds each of the search's passes on the device counted (``-``:
none, the bounds told every sign), and whether the search chose the thresholds of a plain bisection on the same
device, one midpoint at a time, each counted by a merge of its own (``sttm.bisect.bisect`` one threshold a pass).
"""

from __future__ import annotations

import argparse
import math
import sys

import torch

from runners.latency import llm_layer_of
from sttm.adapters.points import reduction_point
from sttm.adapters.real_size import ARCHITECTURES, random_model, request
from sttm.api import Reducer, Reduction, Stage, VideoTokens, build_reducer, keep_everything
from sttm.bisect import bisect
from sttm.device_work import device_work
from sttm.merge import merge_video
from sttm.paper import BENCHMARK_THRESHOLDS
from sttm.quadtree import build_quadtree
from sttm.reducer import STTM
from sttm.synthetic import redundant_video


class Handed(Reducer):
    """Keeps every token at decoder ``layer`` and holds on to the videos it is handed there."""

    name = "handed"
    stage = Stage.LLM_LAYER

    def __init__(self, layer: int) -> None:
        self.layer, self.videos = layer, []

    def reduce(self, video: VideoTokens) -> Reduction:
        self.videos.append(video)
        return keep_everything(video)


def model_video(name: str, frames: int, device: str) -> VideoTokens:
    """The video an LLM-layer reducer is handed at the model ``name``'s ``llm_layer`` on ``runners.latency``'s
    request of ``frames`` frames, the model at its published size with random bf16 weights."""
    model = random_model(name, "sdpa", device)
    handed = Handed(llm_layer_of(name))
    with torch.inference_mode(), reduction_point(model, handed):
        model.generate(**request(name, frames, device), max_new_tokens=1, do_sample=False)
    return handed.videos[0]


def plain_search(reducer: STTM, video: VideoTokens) -> tuple[float, float]:
    """The thresholds a one-at-a-time bisection chooses for ``reducer``'s budget, each midpoint merged alone."""
    tree = build_quadtree(video.grid, reducer.root_level, reducer.variant, reducer.weighted_avg, reducer.head_dim)

    def count(spatials: list[float]) -> list[int]:
        return [len(merge_video(tree, *reducer._thresholds_at(s), reducer.variant).tokens) for s in spatials]

    spatial, _ = bisect(count, math.floor(reducer.budget * video.num_tokens + 1e-9), 1)
    return reducer._thresholds_at(spatial)


def pass_widths(reducer: STTM, video: VideoTokens) -> str:
    """The thresholds each pass of ``reducer``'s budget search counts on the device, joined by '+' ('-': none)."""
    widths, group = [], reducer._group

    def counting_group(tree, table, spatials, *replayed):
        widths.append(len(spatials))
        return group(tree, table, spatials, *replayed)

    reducer._group = counting_group
    try:
        reducer.reduce(video)
    finally:
        del reducer._group
    return "+".join(map(str, widths)) or "-"


def settings(budgets: list[float], variants: list[str]) -> list[tuple[str, dict]]:
    runs = []
    for variant in variants:
        for spatial, temporal in BENCHMARK_THRESHOLDS.values():
            runs.append((f"{variant} tau={spatial}/{temporal}", {"threshold": spatial, "temporal_threshold": temporal}))
        runs += [(f"{variant} budget={budget}", {"budget": budget}) for budget in budgets]
    return [(label, {**params, "variant": label.split()[0]}) for label, params in runs]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--budgets", nargs="*", type=float, default=[0.5, 0.3])
    parser.add_argument("--variants", nargs="*", default=["official", "corrected"])
    parser.add_argument("--shape", nargs=4, type=int, default=[128, 14, 14, 3584], metavar=("T", "H", "W", "C"))
    parser.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16", "float32"])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--model", choices=sorted(ARCHITECTURES), help="search the grid this model hands STTM")
    parser.add_argument("--frames", type=int, default=128, help="with --model: the request's frames")
    args = parser.parse_args(argv)

    if args.model:
        video = model_video(args.model, args.frames, args.device)
    else:
        video = VideoTokens(redundant_video(*args.shape, dtype=getattr(torch, args.dtype), device=args.device))
    grid = video.grid
    cuda = grid.is_cuda
    source = f"{args.model}'s layer {llm_layer_of(args.model)} at {args.frames} frames" if args.model else "synthetic"
    print(f"# torch {torch.__version__}, input {list(grid.shape)} {grid.dtype} on {grid.device} ({source})")
    rows = []
    for label, params in settings(args.budgets, args.variants):
        reducer = build_reducer("sttm", **params)
        result = reducer.reduce(video)  # warm-up: layouts cached, kernels compiled
        counts = device_work(lambda r=reducer: r.reduce(video), cuda)
        if reducer.budget is not None:
            chosen = (result.info["threshold"], result.info["temporal_threshold"])
            counts["passes"] = pass_widths(reducer, video)
            counts["as plain bisection"] = "yes" if chosen == plain_search(reducer, video) else "NO"
        rows.append((label, result.kept_ratio, counts))
    keys = list(rows[-1][2])
    print(f"{'setting':<32} {'kept':>6} " + " ".join(f"{key:>{max(len(key), 6)}}" for key in keys))
    for label, kept, counts in rows:
        cells = [f"{counts.get(key, ''):>{max(len(key), 6)}}" for key in keys]
        print(f"{label:<32} {kept:>6.3f} " + " ".join(cells))
    return 0


if __name__ == "__main__":
    sys.exit(main())
