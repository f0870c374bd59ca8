"""Compare evaluation results with a committed baseline and fail on regressions.

    python -m runners.regress RESULTS_DIR BASELINE.json            # exit 1 on a regression, with the table
    python -m runners.regress RESULTS_DIR BASELINE.json --write    # (re)write the baseline from the results

A baseline is a JSON file: ``{"tolerance": {"accuracy": points, "achieved_ratio": fraction},
"cells": [{"model", "reducer", "budget", "task", "accuracy", "achieved_ratio"}, ...], "environment": {...}}``
(the package versions and commit that wrote it, ``runners.provenance``). A cell regresses when its accuracy falls
more than the tolerance below the baseline, or its achieved ratio moves by more than its tolerance either way (a
reducer that keeps more or fewer tokens than before has changed). A baseline cell with no result is a failure too.

The accuracy tolerance is fixed, not taken from the baseline's confidence interval. The check answers the same
questions with the same seeds as the baseline, so the noise that interval measures (which questions were drawn) is
absent; and its width follows the accuracy and the number of videos, not anything a code change does: with full
tokens on `make regress`'s 40 questions the 95% interval over videos spans 57.5-100 on toy VNBench (82.5%, 10
videos) and 100-100 on toy NExT-QA (100%), so a tolerance from it would let a 25-point regression pass on one and
fail a single flipped answer on the other. What moves the same questions without a change of code is numerics
(another CPU, BLAS or library version tipping a near tie): a question or two, which the default of 5 points
(2 of 40 questions) allows.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import pandas as pd

from runners.provenance import describe, environment
from runners.records import load_cells, write_atomically
from runners.report import summarize

KEYS = ["model", "reducer", "budget", "task"]


def load_baseline(path: Path) -> tuple[pd.DataFrame, dict[str, float]]:
    baseline = json.loads(path.read_text())
    return pd.DataFrame(baseline["cells"]), baseline["tolerance"]


def baseline_environment(path: Path) -> dict[str, str] | None:
    """What wrote the baseline (None for a baseline written before it was recorded)."""
    return json.loads(path.read_text()).get("environment")


def compare(current: pd.DataFrame, baseline: pd.DataFrame, tolerance: dict[str, float]) -> pd.DataFrame:
    """One row per baseline cell: both values of each measure, the change, and whether it regressed.

    ``current`` has the columns of ``runners.report.summarize``.
    """
    merged = baseline.merge(current[[*KEYS, "accuracy", "achieved_ratio"]], on=KEYS, how="left", suffixes=("", "_now"))
    merged["accuracy_change"] = merged["accuracy_now"] - merged["accuracy"]
    merged["ratio_change"] = merged["achieved_ratio_now"] - merged["achieved_ratio"]
    missing = merged["accuracy_now"].isna()
    dropped = merged["accuracy_change"] < -tolerance["accuracy"]
    ratio_moved = merged["ratio_change"].abs() > tolerance["achieved_ratio"]
    merged["regressed"] = missing | dropped | ratio_moved
    merged["why"] = [
        "no result" if m else ", ".join(w for w, flag in (("accuracy", d), ("achieved ratio", r)) if flag)
        for m, d, r in zip(missing, dropped, ratio_moved, strict=True)
    ]
    return merged


def baseline_from(summary: pd.DataFrame, tolerance: dict[str, float]) -> dict:
    """A baseline file's content from the current results (to commit after an intended change), with the
    environment writing it."""
    cells = summary[[*KEYS, "accuracy", "achieved_ratio"]].round(4).to_dict(orient="records")
    return {"tolerance": tolerance, "cells": cells, "environment": environment()}


def check(results: Path, baseline_path: Path) -> pd.DataFrame:
    """The comparison (see ``compare``) of the cells under ``results`` with the baseline file."""
    baseline, tolerance = load_baseline(baseline_path)
    return compare(summarize(load_cells(results)), baseline, tolerance)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Compare evaluation cells with a baseline; exit 1 on a regression.")
    parser.add_argument("results", type=Path, help="a results_dir of runners.evaluate")
    parser.add_argument("baseline", type=Path, help="the baseline JSON file")
    parser.add_argument("--write", action="store_true", help="write the baseline from the results instead")
    parser.add_argument("--accuracy-tolerance", type=float, default=5.0, help="points (with --write)")
    parser.add_argument("--ratio-tolerance", type=float, default=0.02, help="achieved ratio (with --write)")
    args = parser.parse_args(argv)
    if args.write:
        tolerance = {"accuracy": args.accuracy_tolerance, "achieved_ratio": args.ratio_tolerance}
        content = baseline_from(summarize(load_cells(args.results)), tolerance)
        write_atomically(args.baseline, json.dumps(content, indent=1) + "\n")
        print(f"wrote {args.baseline}: {len(content['cells'])} cells, tolerance {tolerance}")
        return 0
    table = check(args.results, args.baseline)
    columns = [*KEYS, "accuracy", "accuracy_now", "achieved_ratio", "achieved_ratio_now", "regressed", "why"]
    print(table[columns].to_markdown(index=False, floatfmt=".4g"))
    written = baseline_environment(args.baseline)
    print(f"\nbaseline: {describe(written) if written else 'environment not recorded'}; now: {describe(environment())}")
    regressed = int(table["regressed"].sum())
    if regressed:
        print(f"\nREGRESSION: {regressed} of {len(table)} cells moved beyond the tolerance of {args.baseline}")
        return 1
    print(f"\nno regression against {args.baseline}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
