"""Tables and plots from evaluation cells, in the layout of the STTM paper's tables.

    python -m runners.report RESULTS_DIR [--out DIR]

Rows are method × budget for each model; columns are the benchmarks' accuracies, their average, the average
relative to the full-token run of the same model, prefill and TTFT speed-ups over that run, and the achieved
ratio of visual tokens. Writes ``table.md``, ``table.csv`` and ``table.tex``, and three plots: accuracy against
budget per benchmark, average accuracy against prefill speed-up with its Pareto front, and the TTFT breakdown.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

from runners.records import FULL_TOKENS, load_cells  # noqa: E402


def setting_names(records: pd.DataFrame) -> pd.Series:
    """Each record's reducer for the tables: its setting's key under ``reducers``, and where cells of one key (at one
    model, benchmark and budget) hold different parameters, as from a sweep over one, the parameters that tell them
    apart: ``sttm (variant=corrected)``."""
    cells = records.drop_duplicates("cell").set_index("cell")
    names = cells["reducer"].copy()
    for _, group in cells.groupby(["model", "benchmark", "reducer", "budget"], dropna=False):
        if group["params"].nunique() < 2:
            continue
        values = {cell: json.loads(text) or {} for cell, text in group["params"].items()}
        keys = sorted({key for params in values.values() for key in params})
        differing = [key for key in keys if len({repr(params.get(key)) for params in values.values()}) > 1]
        for cell, params in values.items():
            names[cell] = f"{names[cell]} ({', '.join(f'{key}={params.get(key)}' for key in differing)})"
    return records["cell"].map(names)


def summarize(records: pd.DataFrame) -> pd.DataFrame:
    """One row per (model, reducer, budget, task): accuracy over answered questions, mean costs, and the number of
    failed questions (a task whose questions all failed keeps its row, without accuracy). Reducers are named by
    ``setting_names``."""
    keys = ["model", "reducer", "budget", "task"]
    records = records.assign(reducer=setting_names(records))
    answered = records[records["error"].isna()]
    summary = answered.groupby(keys).agg(
        accuracy=("correct", lambda c: 100 * c.astype(float).mean()),
        questions=("doc_id", "size"),
        achieved_ratio=("achieved_ratio", "mean"),
        prefill_ms=("prefill_ms", "mean"),
        ttft_ms=("ttft_ms", "mean"),
        vision_ms=("vision_ms", "mean"),
        reducer_ms=("reducer_ms", "mean"),
        prefill_tokens=("prefill_tokens", "mean"),
        cell=("cell", "first"),
        wall_s=("wall_s", "first"),
    )
    failed = records[records["error"].notna()].groupby(keys).size()
    summary = summary.reindex(summary.index.union(failed.index))
    summary["questions"] = summary["questions"].fillna(0).astype(int)
    summary["failed"] = failed.reindex(summary.index, fill_value=0)
    return summary.reset_index()


def paper_table(summary: pd.DataFrame) -> pd.DataFrame:
    """Method × budget rows per model, benchmarks as columns, plus their average (none where one of the cell's
    benchmarks has no answered question), relative accuracy, speed-ups, prefill tokens per question, the
    evaluation's wall time and the number of failed questions."""
    cells = ["model", "reducer", "budget"]
    accuracy = summary.pivot(index=cells, columns="task", values="accuracy")
    unanswered = summary["accuracy"].isna().groupby([summary[key] for key in cells]).any().reindex(accuracy.index)
    table = accuracy.assign(average=accuracy.mean(axis=1).mask(unanswered))
    costs = summary.groupby(cells)[["prefill_ms", "ttft_ms", "achieved_ratio"]].mean().reindex(table.index)
    is_full = table.index.get_level_values("reducer") == FULL_TOKENS
    if is_full.any():
        per_model = pd.concat([table["average"], costs], axis=1)[is_full].groupby(level="model").first()
        full = per_model.reindex(table.index.get_level_values("model")).set_index(table.index)
        table["relative_%"] = 100 * table["average"] / full["average"]
        table["prefill_speedup"] = full["prefill_ms"] / costs["prefill_ms"]
        table["ttft_speedup"] = full["ttft_ms"] / costs["ttft_ms"]
    table["achieved_ratio"] = costs["achieved_ratio"]
    table["prefill_tokens_per_question"] = summary.groupby(cells)["prefill_tokens"].mean().reindex(table.index)
    per_cell = summary.dropna(subset=["cell"]).drop_duplicates([*cells, "cell"])
    table["wall_s"] = per_cell.groupby(cells)["wall_s"].sum(min_count=1).reindex(table.index)
    table["failed"] = summary.groupby(cells)["failed"].sum().reindex(table.index)
    return table.sort_index(level=["model", "budget", "reducer"], ascending=[True, False, True]).round(2)


def plot_accuracy_vs_budget(summary: pd.DataFrame, path: Path) -> None:
    tasks = sorted(summary["task"].unique())
    figure, axes = plt.subplots(1, len(tasks), figsize=(4 * len(tasks), 3.5), squeeze=False)
    for axis, task in zip(axes[0], tasks, strict=True):
        rows = summary[summary["task"] == task]
        for (model, reducer), points in rows[rows["reducer"] != FULL_TOKENS].groupby(["model", "reducer"]):
            points = points.sort_values("achieved_ratio")
            axis.plot(points["achieved_ratio"], points["accuracy"], marker="o", label=f"{model}: {reducer}")
        for model, full in rows[rows["reducer"] == FULL_TOKENS].groupby("model"):
            axis.axhline(full["accuracy"].mean(), color="black", linestyle="--", label=f"{model}: full tokens")
        axis.set(title=task, xlabel="achieved ratio of visual tokens", ylabel="accuracy (%)")
    axes[0][-1].legend(fontsize="small")
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def pareto_front(points: pd.DataFrame) -> pd.DataFrame:
    """The points no other point beats on both prefill speed-up and average accuracy."""
    ordered = points.sort_values(["prefill_speedup", "average"], ascending=[False, False])
    front, best = [], -float("inf")
    for index, row in ordered.iterrows():
        if row["average"] > best:
            front.append(index)
            best = row["average"]
    return ordered.loc[front].sort_values("prefill_speedup")


def plot_accuracy_vs_speedup(table: pd.DataFrame, path: Path) -> None:
    figure, axis = plt.subplots(figsize=(6, 4.5))
    points = table.reset_index()
    for (model, reducer), rows in points.groupby(["model", "reducer"]):
        axis.scatter(rows["prefill_speedup"], rows["average"], label=f"{model}: {reducer}")
        for _, row in rows.iterrows():
            axis.annotate(f"{row['budget']:g}", (row["prefill_speedup"], row["average"]), fontsize="x-small")
    front = pareto_front(points)
    axis.plot(front["prefill_speedup"], front["average"], color="gray", linestyle=":", label="Pareto front")
    axis.set(xlabel="LLM prefill speed-up over full tokens", ylabel="average accuracy (%)")
    axis.legend(fontsize="small")
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def plot_ttft_breakdown(summary: pd.DataFrame, path: Path) -> None:
    parts = summary.groupby(["model", "reducer", "budget"])[["vision_ms", "reducer_ms", "prefill_ms"]].mean()
    figure, axis = plt.subplots(figsize=(max(6, 0.6 * len(parts)), 4))
    parts.rename(index=lambda b: f"{b:g}" if isinstance(b, float) else b).plot.bar(stacked=True, ax=axis)
    axis.set(ylabel="ms per question", xlabel="model, reducer, budget", title="time to first token, by part")
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def write_report(records: pd.DataFrame, out: Path) -> dict[str, Path]:
    """Write the tables and plots for ``records`` under ``out``; return their paths by kind."""
    out.mkdir(parents=True, exist_ok=True)
    summary = summarize(records)
    table = paper_table(summary)
    paths = {
        "markdown": out / "table.md",
        "csv": out / "table.csv",
        "latex": out / "table.tex",
        "accuracy_vs_budget": out / "accuracy_vs_budget.png",
        "accuracy_vs_speedup": out / "accuracy_vs_speedup.png",
        "ttft_breakdown": out / "ttft_breakdown.png",
    }
    paths["markdown"].write_text(table.reset_index().to_markdown(index=False) + "\n")
    table.to_csv(paths["csv"])
    paths["latex"].write_text(table.to_latex(float_format="%.2f"))
    plot_accuracy_vs_budget(summary, paths["accuracy_vs_budget"])
    if "prefill_speedup" in table:
        plot_accuracy_vs_speedup(table, paths["accuracy_vs_speedup"])
    else:
        del paths["accuracy_vs_speedup"]
    plot_ttft_breakdown(summary, paths["ttft_breakdown"])
    return paths


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("results", type=Path, help="folder holding evaluation cells")
    parser.add_argument("--out", type=Path, help="where to write (default: RESULTS/report)")
    args = parser.parse_args(argv)
    records = load_cells(args.results)
    if records.empty:
        print(f"no records under {args.results}", file=sys.stderr)
        return 1
    paths = write_report(records, args.out or args.results / "report")
    print(paths["markdown"].read_text())
    for kind, path in paths.items():
        print(f"{kind}: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
