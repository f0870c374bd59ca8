"""Time DivPrune's greedy selection, the torch loop against the Triton kernels, and check they choose alike.

    python -m scripts.bench_divprune                      # from the repository root, on GPU if there is one
    python -m scripts.bench_divprune --budgets 0.5 --scopes video --repeats 20

The input is ``sttm.synthetic.redundant_video`` ([128, 14, 14, 3584] bf16 by default: LLaVA-OneVision-7B's
visual tokens of a 128-frame video before the LLM). For each scope and budget the table gives the median
milliseconds of ``--repeats`` calls after ``--warmup`` (CUDA events on GPU, perf_counter on CPU) of: the cosine
distances (shared by both paths), the selection by the torch loop (``torch_most_diverse``), the selection as
``most_diverse`` makes it on this device (the Triton kernels on CUDA), and the whole ``DivPrune.reduce``; and
whether both selections chose the same indices in the same order.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys

import torch

from baselines.divprune import DivPrune, cosine_distances, most_diverse, torch_most_diverse
from baselines.maxmin import triton
from scripts.bench_reducers import add_timing_arguments, git_commit, time_calls
from sttm.api import VideoTokens
from sttm.synthetic import redundant_video


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--budgets", nargs="*", type=float, default=[0.5, 0.3, 0.15])
    parser.add_argument("--scopes", nargs="*", default=["video", "frame"], choices=["video", "frame"])
    add_timing_arguments(parser, warmup=2, repeats=10)
    args = parser.parse_args(argv)

    t, h, w, c = args.shape
    grid = redundant_video(t, h, w, c, dtype=torch.bfloat16, device=args.device)
    video = VideoTokens(grid)
    device_name = torch.cuda.get_device_name() if grid.is_cuda else "cpu"
    versions = f"torch {torch.__version__}, triton {triton.__version__ if triton else 'absent'}"
    print(f"# {device_name}, {versions}, commit {git_commit()}, input {list(grid.shape)} {grid.dtype}", flush=True)

    def median_ms(call) -> float:
        return statistics.median(time_calls(call, args.warmup, args.repeats, grid.device))

    rows = []
    for scope in args.scopes:
        sets = grid.reshape(1 if scope == "video" else t, -1, c)
        distances = cosine_distances(sets)
        distances_ms = median_ms(lambda s=sets: cosine_distances(s))
        for budget in args.budgets:
            count = max(1, round(budget * sets.shape[1]))
            same = torch.equal(torch_most_diverse(distances, count), most_diverse(distances, count))
            reducer = DivPrune(budget=budget, scope=scope)
            row = {
                "scope": scope,
                "budget": budget,
                "sets": len(sets),
                "kept_per_set": count,
                "distances_ms": distances_ms,
                "torch_loop_ms": median_ms(lambda d=distances, n=count: torch_most_diverse(d, n)),
                "this_device_ms": median_ms(lambda d=distances, n=count: most_diverse(d, n)),
                "reduce_ms": median_ms(lambda r=reducer: r.reduce(video)),
                "same_choices": same,
            }
            rows.append(row)
            print(f"# {row}", flush=True)
        del distances

    print(f"{'scope':<6} {'budget':>6} {'sets x kept':>12} {'distances ms':>13} {'torch loop ms':>14} ", end="")
    print(f"{'most_diverse ms':>16} {'reduce ms':>10} {'same choices':>13}")
    for row in rows:
        print(
            f"{row['scope']:<6} {row['budget']:>6} {row['sets']:>4} x {row['kept_per_set']:<5} "
            f"{row['distances_ms']:>13.2f} {row['torch_loop_ms']:>14.2f} {row['this_device_ms']:>16.2f} "
            f"{row['reduce_ms']:>10.2f} {str(row['same_choices']):>13}"
        )
    if args.output:
        meta = {"device": device_name, "versions": versions, "commit": git_commit(), "shape": list(grid.shape)}
        args.output.write_text(json.dumps({"meta": meta, "command": " ".join(sys.argv), "rows": rows}, indent=1))
    return 0 if all(row["same_choices"] for row in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
