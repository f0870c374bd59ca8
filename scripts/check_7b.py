"""Reduction at 7B scale on a GPU: a LLaVA-OneVision-7B-sized model with random bf16 weights.

    python scripts/check_7b.py --frames 64 128 --output check_7b.json

Model and request from ``sttm.adapters.real_size``: the published architecture (SigLIP-so400m-384 + Qwen2-7B),
built without a download, and a question about a video of flat-coloured scenes (so that even random vision
weights give redundant tokens) through the family's processor. For each frame count it times full tokens, STTM
at layer 2 (budget mode, and at the fixed thresholds that budget mode chose, as the paper uses fixed thresholds)
and VidCom2 before the LLM, at budgets 0.5 and 0.3: median of ``--repeats`` calls after one warm-up. It also
checks that cached decoding under STTM matches recomputing the reduced forward at every step (bf16 tolerance).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

import torch

from baselines.vidcom2 import VidCom2
from sttm.adapters.points import llm_layer, pre_llm
from sttm.adapters.real_size import random_model, request
from sttm.adapters.timing import timed_generate
from sttm.reducer import STTM

MODEL = "llava_onevision_7b"


def measure(model, inputs, context, repeats: int) -> dict:
    """Median timings of ``repeats`` calls after a warm-up, under ``context()`` (a reduction point or none)."""
    runs, kept = [], []
    for index in range(repeats + 1):
        with context() as log:
            _, timing = timed_generate(model, inputs, max_new_tokens=8, min_new_tokens=8, do_sample=False)
        if index:
            runs.append(timing)
            if log is not None:
                kept.append(log.last.kept_ratio)
    result = {
        name: statistics.median(getattr(t, name) for t in runs)
        for name in ("vision_ms", "prefill_ms", "ttft_ms", "decode_ms_per_token", "peak_memory_mb")
    }
    result["kept_ratio"] = statistics.median(kept) if kept else 1.0
    return result


class NoReduction:
    def __enter__(self):
        return None

    def __exit__(self, *exc):
        return False


def cached_vs_recomputed(model, inputs, context) -> dict:
    """Over 4 greedy steps, cached decoding vs recomputing the whole forward at every step, under ``context()``:
    the largest logit difference, relative to the largest logit, and whether the tokens agree."""
    runs = []
    for use_cache in (True, False):
        with context():
            runs.append(
                model.generate(
                    **inputs, max_new_tokens=4, min_new_tokens=4, do_sample=False, use_cache=use_cache,
                    output_logits=True, return_dict_in_generate=True,
                )
            )  # fmt: skip
    cached, recomputed = (torch.stack(run.logits).float() for run in runs)
    difference = (cached - recomputed).abs().max().item()
    return {
        "max_abs_diff": difference,
        "relative": difference / cached.abs().max().item(),
        "same_tokens": torch.equal(runs[0].sequences, runs[1].sequences),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--frames", nargs="*", type=int, default=[64, 128])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--output", type=Path)
    args = parser.parse_args(argv)
    model = random_model(MODEL, "sdpa")
    print(f"# {torch.cuda.get_device_name()}, torch {torch.__version__}", flush=True)
    rows = []
    for frames in args.frames:
        inputs = request(MODEL, frames)
        full = measure(model, inputs, NoReduction, args.repeats)
        rows.append({"frames": frames, "method": "full tokens", "budget": 1.0, **full})
        for budget in (0.5, 0.3):
            searched = STTM(budget=budget)
            with llm_layer(model, searched, 2) as log:
                model.generate(**inputs, max_new_tokens=1, do_sample=False)
            fixed = STTM(
                threshold=log.last.reductions[0].info["threshold"],
                temporal_threshold=log.last.reductions[0].info["temporal_threshold"],
            )
            settings = {
                "sttm, layer 2, budget search": lambda r=searched: llm_layer(model, r, 2),
                "sttm, layer 2, fixed thresholds": lambda r=fixed: llm_layer(model, r, 2),
                "vidcom2, before the LLM": lambda b=budget: pre_llm(model, VidCom2(budget=b)),
            }
            for method, context in settings.items():
                result = measure(model, inputs, context, args.repeats)
                result["prefill_speedup"] = full["prefill_ms"] / result["prefill_ms"]
                result["ttft_speedup"] = full["ttft_ms"] / result["ttft_ms"]
                rows.append({"frames": frames, "method": method, "budget": budget, **result})
            print(rows[-3:], flush=True)
        for method, context in {
            "full tokens": NoReduction,
            "sttm, layer 2, fixed thresholds (0.3)": lambda r=fixed: llm_layer(model, r, 2),
        }.items():
            check = cached_vs_recomputed(model, inputs, context)
            rows.append({"frames": frames, "method": f"cached vs recomputed: {method}", "check": check})
            print(rows[-1], flush=True)
    print(f"{'frames':>6} {'method':<34} {'budget':>6} {'kept':>6} {'vision':>8} {'prefill':>8} {'ttft':>8} "
          f"{'prefill x':>9} {'ttft x':>7} {'peak GB':>8}")  # fmt: skip
    for row in rows:
        if "check" in row:
            check = row["check"]
            print(
                f"{row['frames']:>6} {row['method']}: max |logit diff| {check['max_abs_diff']:.4f} "
                f"({check['relative']:.2%} of the largest logit), same tokens: {check['same_tokens']}"
            )
            continue
        print(
            f"{row['frames']:>6} {row['method']:<34} {row['budget']:>6} {row['kept_ratio']:>6.3f} "
            f"{row['vision_ms']:>8.1f} {row['prefill_ms']:>8.1f} {row['ttft_ms']:>8.1f} "
            f"{row.get('prefill_speedup', 1.0):>9.2f} {row.get('ttft_speedup', 1.0):>7.2f} "
            f"{row['peak_memory_mb'] / 1024:>8.1f}"
        )
    if args.output:
        args.output.write_text(json.dumps({"command": " ".join(sys.argv), "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
