"""Compare evaluation results with a committed baseline and fail on regressions.

A baseline is a JSON file: ``{"tolerance": {"accuracy": points, "achieved_ratio": fraction},
"cells": [{"model", "reducer", "budget", "task", "accuracy", "achieved_ratio"}, ...]}``. A cell regresses when
its accuracy falls more than the tolerance below the baseline, or its achieved ratio moves by more than its
tolerance either way (a reducer that keeps more or fewer tokens than before has changed). A baseline cell with
no result is a failure too.
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

KEYS = ["model", "reducer", "budget", "task"]


def load_baseline(path: Path) -> tuple[pd.DataFrame, dict[str, float]]:
    baseline = json.loads(path.read_text())
    return pd.DataFrame(baseline["cells"]), baseline["tolerance"]


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
    """A baseline file's content from the current results (to commit after an intended change)."""
    cells = summary[[*KEYS, "accuracy", "achieved_ratio"]].round(4).to_dict(orient="records")
    return {"tolerance": tolerance, "cells": cells}
