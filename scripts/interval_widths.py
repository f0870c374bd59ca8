"""How wide the report's intervals are on the first N questions of each benchmark: the half-width (points) of each
reducer's Δ vs full (95% CI), per benchmark and on the average, from the records of a run over every question.

    python scripts/interval_widths.py RESULTS_DIR --limits 20 40 80 all

Each question is answered on its own and deterministically, so the first N questions of a full run hold the answers
a run with ``limit=N`` gives (lmms-eval's limit takes a benchmark's first N documents).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pandas as pd

from runners.records import load_cells
from runners.report import paired_differences


def half_widths(records: pd.DataFrame, limit: int | None) -> pd.DataFrame:
    """``paired_differences`` of the first ``limit`` questions of each benchmark (all with None), with the
    interval's ``half_width``."""
    subset = records if limit is None else records[records["doc_id"] < limit]
    differences = paired_differences(subset)
    half_width = (differences["difference_high"] - differences["difference_low"]) / 2
    return differences.assign(limit="all" if limit is None else str(limit), half_width=half_width)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("results", type=Path, help="a results_dir of runners.evaluate run with limit=null")
    parser.add_argument("--limits", nargs="+", default=["20", "all"], help="questions per benchmark, or all")
    args = parser.parse_args(argv)
    records = load_cells(args.results)
    if records.empty:
        print(f"no records under {args.results}", file=sys.stderr)
        return 1
    limits = [None if limit == "all" else int(limit) for limit in args.limits]
    widths = pd.concat([half_widths(records, limit) for limit in limits], ignore_index=True)
    values = ["half_width", "questions", "videos"]
    table = widths.pivot_table(index=["reducer", "budget", "task"], columns="limit", values=values, sort=False)
    table.columns = [f"{value} (limit {limit})" for value, limit in table.columns]
    print(table.reset_index().to_markdown(index=False, floatfmt=".1f"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
