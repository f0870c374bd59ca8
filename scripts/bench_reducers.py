"""Time token reducers on one video-sized token grid and print the median per call.

    python scripts/bench_reducers.py                      # every registered reducer, on GPU if there is one
    python scripts/bench_reducers.py --reducers sttm --authors-code PATH/TO/STTM-checkout

The input is ``sttm.synthetic.benchmark_video`` ([128, 14, 14, 3584] bf16 by default: a LLaVA-Video-7B video at
decoder layer 2), with scene changes every few frames; the paper's LLaVA-Video thresholds keep about 30-50% of it.
``--model NAME --frames N`` takes instead the video tokens that model's vision stage hands a reducer (pooled
features, the vision tower's attention and keys) for ``runners.latency``'s request of N frames, with the random
weights at the published size that runner uses (``sttm.adapters.real_size``): what the vision-stage and pre-LLM
reducers of the latency tables receive. Each reducer runs ``--warmup`` times, then ``--repeats`` timed calls (CUDA
events on GPU, perf_counter on CPU); the table gives median and spread, and whether the call after the timed ones
returned the same tokens and boxes, bit for bit, as the first. ``--sttm-eager`` adds each STTM setting without its
CUDA graphs (the eager calls they replay, ``sttm.graphs``), in the same run. ``--profile N`` also profiles one call
of each row (``sttm.device_work``: launches, host waits, the kernels' own time and the N ops whose kernels took
longest), which tells a call bound by its kernels from one bound by the host's dispatch; the header (and the JSON's
meta) gives the host's CPU and the microseconds it takes to queue a small op (``sttm.device_work.launch_us``), which
the time of a call bound by the host follows from machine to machine. ``--host-lines N`` also tells, over 5 calls of
each row, the N lines of the project whose torch calls took the host longest
(``sttm.device_work.host_time_by_line``). ``--authors-code`` also times the authors' ``quadtree_build_video`` from a
checkout of github.com/HYUNJS/STTM on the same input, and checks that both keep the same boxes.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

import torch

from sttm.api import Reducer, Reduction, Stage, VideoTokens, available_reducers, build_reducer, keep_everything
from sttm.clock import timed
from sttm.device_work import device_work, host_model, host_time_by_line, launch_us
from sttm.paper import BENCHMARK_THRESHOLDS
from sttm.synthetic import benchmark_video

REPEATABLE = {True: "yes", False: "NO", None: ""}  # None: not checked (the authors' code)
#: the project's packages whose lines ``--host-lines`` tells apart
PACKAGES = tuple(Path(__file__).resolve().parents[1] / name for name in ("baselines", "sttm"))


def settings_to_time(
    names: list[str], budgets: list[float], sttm_eager: bool = False
) -> list[tuple[str, str, Reducer | str]]:
    """(reducer, setting label, instance) for every reducer and budget, or the reason a reducer refuses the budget
    in place of the instance; STTM also at the paper's thresholds, and with ``sttm_eager`` each STTM setting again
    without its CUDA graphs (``cuda_graphs=False``)."""
    runs = []
    for name in names:
        sttm_settings = []
        if name == "sttm":
            for budget, (spatial, temporal) in BENCHMARK_THRESHOLDS.items():
                for variant in ("official", "corrected"):
                    params = {"threshold": spatial, "temporal_threshold": temporal, "variant": variant}
                    sttm_settings.append((f"{variant} tau={spatial}/{temporal} (paper {budget})", params))
            sttm_settings += [(f"budget={budget}", {"budget": budget}) for budget in budgets]
            if sttm_eager:
                sttm_settings += [
                    (f"{label}, eager", {**params, "cuda_graphs": False}) for label, params in sttm_settings
                ]
            runs += [(name, label, build_reducer(name, **params)) for label, params in sttm_settings]
            continue
        for budget in budgets:
            try:
                reducer = build_reducer(name, budget=budget)
            except ValueError as refusal:
                runs.append((name, f"budget={budget}", str(refusal)))
                continue
            if reducer.stage is Stage.DECODE:
                continue
            runs.append((name, f"budget={budget}", reducer))
    return runs


def time_calls(call, warmup: int, repeats: int, device: torch.device) -> list[float]:
    """Milliseconds of each of ``repeats`` calls of ``call()`` on ``device``'s clock, after ``warmup`` untimed ones."""
    for _ in range(warmup):
        call()
    return [timed(call, device)[1] for _ in range(repeats)]


class VisionStageInput(Reducer):
    """Keeps every token and records the video tokens the vision stage gave it, with its attention and keys."""

    stage = Stage.VISION
    needs = frozenset({"importance", "keys"})

    def __init__(self) -> None:
        self.seen: list[VideoTokens] = []

    def reduce(self, video: VideoTokens) -> Reduction:
        self.seen.append(video)
        return keep_everything(video)


def model_video(name: str, frames: int, device: str) -> VideoTokens:
    """The video tokens the vision stage of ``name`` (random bf16 weights at its published size) hands a reducer for
    ``runners.latency``'s request of ``frames`` frames: one prefill, then the model is freed."""
    from sttm.adapters.points import reduction_point  # transformers and PyAV, for this input only
    from sttm.adapters.real_size import random_model, request

    model = random_model(name, "sdpa", device)
    capture = VisionStageInput()
    with torch.inference_mode(), reduction_point(model, capture):
        model(**request(name, frames, device))
    del model
    torch.cuda.empty_cache()
    return capture.seen[0]


def authors_quadtree(checkout: Path):
    """The authors' ``quadtree_build_video`` imported from a checkout of their repository."""
    sys.path.insert(0, str(checkout))
    from token_merging_utils.quadtree_builder import quadtree_build_video

    return quadtree_build_video


def add_timing_arguments(parser: argparse.ArgumentParser, warmup: int, repeats: int) -> None:
    """The options the timing scripts share: the grid's ``--shape``, ``--device``, ``--warmup`` and ``--repeats``
    calls, and ``--output``."""
    parser.add_argument("--shape", nargs=4, type=int, default=[128, 14, 14, 3584], metavar=("T", "H", "W", "C"))
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--warmup", type=int, default=warmup)
    parser.add_argument("--repeats", type=int, default=repeats)
    parser.add_argument("--output", type=Path, help="also write the results as JSON here")


def git_commit() -> str:
    """$GIT_COMMIT where given (a tree copied to a remote GPU machine), else the checkout's commit."""
    if os.environ.get("GIT_COMMIT"):
        return os.environ["GIT_COMMIT"]
    try:
        found = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    except OSError:
        found = ""
    return found or "unknown"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--reducers", nargs="*", help="registered names (default: all)")
    parser.add_argument("--budgets", nargs="*", type=float, default=[0.5, 0.3])
    add_timing_arguments(parser, warmup=3, repeats=50)
    parser.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16", "float32"])
    parser.add_argument("--model", help="time on this model's video tokens instead (a runners.latency --model)")
    parser.add_argument("--frames", type=int, default=128, help="frames of --model's video (default 128)")
    parser.add_argument("--authors-code", type=Path, help="checkout of HYUNJS/STTM to time its quadtree too")
    parser.add_argument("--profile", type=int, default=0, metavar="N", help="profile one call per row, N top ops")
    parser.add_argument("--host-lines", type=int, default=0, metavar="N", help="the N lines taking most host time")
    parser.add_argument(
        "--sttm-eager",
        action="store_true",
        help="time each STTM setting again without its CUDA graphs (a GPU's baseline)",
    )
    args = parser.parse_args(argv)

    names = args.reducers or available_reducers()
    if args.model:
        video = model_video(args.model, args.frames, args.device)
    else:
        video = benchmark_video(*args.shape, dtype=getattr(torch, args.dtype), device=args.device)
    grid = video.grid
    device_name = torch.cuda.get_device_name() if grid.is_cuda else host_model()
    host = {"host": host_model(), "launch_us": round(launch_us(grid.device), 2)}
    print(f"# {device_name}, torch {torch.__version__}, commit {git_commit()}, input {list(grid.shape)} {grid.dtype}")
    print(f"# host {host['host']}: {host['launch_us']} us to queue a small op")

    runs = settings_to_time(names, args.budgets, args.sttm_eager and grid.is_cuda)
    first = next(reducer for _, _, reducer in runs if isinstance(reducer, Reducer))
    time_calls(lambda: first.reduce(video), args.warmup * 10, 0, grid.device)  # clocks and allocator settle
    rows = []
    for name, setting, reducer in runs:
        try:
            if isinstance(reducer, str):
                raise ValueError(reducer)
            first = reducer(video)
        except ValueError as refusal:
            rows.append({"reducer": name, "setting": setting, "note": str(refusal)})
            continue
        times = time_calls(lambda r=reducer: r.reduce(video), args.warmup, args.repeats, grid.device)
        again = reducer.reduce(video)
        repeatable = torch.equal(first.tokens, again.tokens) and torch.equal(first.boxes, again.boxes)
        rows.append(
            {"reducer": name, "setting": setting, "kept": first.kept_ratio, "times_ms": times, "repeatable": repeatable}
        )
        if args.profile:
            rows[-1]["work"] = device_work(lambda r=reducer: r.reduce(video), grid.is_cuda, top=args.profile)
        if args.host_lines:
            rows[-1]["host"] = host_time_by_line(
                lambda r=reducer: r.reduce(video), PACKAGES, args.host_lines, repeats=5
            )

    if args.authors_code:
        quadtree_build_video = authors_quadtree(args.authors_code)
        channels_first = grid.permute(0, 3, 1, 2)
        for budget, (spatial, temporal) in BENCHMARK_THRESHOLDS.items():

            def authors_call(s=spatial, tt=temporal):
                return quadtree_build_video(channels_first, s, tt, root_level=1)

            _, _, their_boxes = authors_call()
            ours = build_reducer("sttm", threshold=spatial, temporal_threshold=temporal).reduce(video)
            same = torch.equal(their_boxes.long().cpu(), ours.boxes.cpu())
            times = time_calls(authors_call, args.warmup, args.repeats, grid.device)
            rows.append(
                {
                    "reducer": "authors' STTM code",
                    "setting": f"tau={spatial}/{temporal} (paper {budget}); same boxes as ours: {same}",
                    "kept": len(their_boxes) / video.num_tokens,
                    "times_ms": times,
                }
            )

    print(f"{'reducer':<20} {'setting':<58} {'kept':>6} {'median ms':>10} {'p10-p90 ms':>14} {'repeatable':>10}")
    for row in rows:
        if "note" in row:
            print(f"{row['reducer']:<20} {row['setting']:<58} not run: {row['note']}")
            continue
        ordered = sorted(row["times_ms"])
        p10, p90 = ordered[len(ordered) // 10], ordered[(len(ordered) * 9) // 10]
        row["median_ms"] = statistics.median(ordered)
        print(
            f"{row['reducer']:<20} {row['setting']:<58} {row['kept']:>6.3f} {row['median_ms']:>10.2f} "
            f"{p10:>6.2f}-{p90:<7.2f} {REPEATABLE[row.get('repeatable')]:>10}"
        )
        if "work" in row:
            print("    " + "; ".join(f"{key}: {value}" for key, value in row["work"].items()))
        if "host" in row:
            print(f"    host time in torch calls: {row['host']['host ms']} ms, {row['host']['torch calls']} calls")
            for where, ms, calls in row["host"]["lines"]:
                print(f"      {ms:7.3f} ms {calls:4d}  {where}")
    if args.output:
        meta = {
            "device": device_name,
            "torch": torch.__version__,
            "commit": git_commit(),
            "shape": list(grid.shape),
            "dtype": str(grid.dtype),
            "input": f"{args.model}, {args.frames} frames" if args.model else "benchmark_video",
            **host,
            "command": " ".join(sys.argv),
        }
        args.output.write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
