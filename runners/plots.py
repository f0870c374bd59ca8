"""The report's plots: accuracy against the achieved ratio per benchmark, average accuracy against each efficiency
measure (prefill speed-up, prefill FLOPs) with its Pareto front, both with the 95% intervals of the difference to
full tokens as error bars, and the TTFT breakdown; each PNG written whole or not at all."""

from __future__ import annotations

import io
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

from runners.files import write_atomically  # noqa: E402
from runners.records import AVERAGE, CELLS, FULL_TOKENS  # noqa: E402


def error_bars(points: pd.DataFrame, differences: pd.DataFrame, keys: list[str]) -> list[pd.Series]:
    """The [below, above] extents of each point's interval of its difference to full tokens (NaN where none), matched
    on ``keys``; plotted around the point, as its accuracy is full tokens' plus its difference."""
    matched = points[keys].merge(differences, on=keys, how="left")
    return [matched["difference"] - matched["difference_low"], matched["difference_high"] - matched["difference"]]


def save_figure(figure, path: Path) -> None:
    """Write ``figure`` as a PNG to ``path``, whole or not at all, and close it."""
    png = io.BytesIO()
    figure.savefig(png, format="png", dpi=120)
    plt.close(figure)
    write_atomically(path, png.getvalue())


def plot_accuracy_vs_budget(summary: pd.DataFrame, differences: pd.DataFrame, path: Path) -> None:
    tasks = sorted(summary["task"].unique())
    figure, axes = plt.subplots(1, len(tasks), figsize=(4 * len(tasks), 3.5), squeeze=False)
    for axis, task in zip(axes[0], tasks, strict=True):
        rows = summary[summary["task"] == task]
        for (model, reducer), points in rows[rows["reducer"] != FULL_TOKENS].groupby(["model", "reducer"]):
            points = points.sort_values("achieved_ratio")
            axis.errorbar(
                points["achieved_ratio"], points["accuracy"], yerr=error_bars(points, differences, [*CELLS, "task"]),
                marker="o", capsize=3, label=f"{model}: {reducer}",
            )  # fmt: skip
        for model, full in rows[rows["reducer"] == FULL_TOKENS].groupby("model"):
            axis.axhline(full["accuracy"].mean(), color="black", linestyle="--", label=f"{model}: full tokens")
        axis.set(title=task, xlabel="achieved ratio of visual tokens", ylabel="accuracy (%), 95% CI vs full")
    axes[0][-1].legend(fontsize="small")
    figure.tight_layout()
    save_figure(figure, path)


def pareto_front(points: pd.DataFrame, cost: str = "prefill_speedup", higher_is_better: bool = True) -> pd.DataFrame:
    """The points no other point beats on both ``cost`` (a speed-up: higher is better; a share of FLOPs: lower) and
    average accuracy, ordered by ``cost``."""
    ordered = points.dropna(subset=[cost]).sort_values([cost, "average"], ascending=[not higher_is_better, False])
    front, best = [], -float("inf")
    for index, row in ordered.iterrows():
        if row["average"] > best:
            front.append(index)
            best = row["average"]
    return ordered.loc[front].sort_values(cost)


#: the accuracy–efficiency plot's panels: a column of the paper table, its axis label, and whether higher is better
EFFICIENCY_AXES = (
    ("prefill_speedup", "LLM prefill speed-up over full tokens", True),
    ("flops_%", "prefill FLOPs, % of full tokens'", False),
)


def plot_accuracy_vs_cost(table: pd.DataFrame, differences: pd.DataFrame, path: Path) -> None:
    """Average accuracy against each efficiency column of ``table`` that holds a value (one panel each)."""
    points = table.reset_index()
    axes_shown = [axis for axis in EFFICIENCY_AXES if axis[0] in points and points[axis[0]].notna().any()]
    figure, panels = plt.subplots(1, len(axes_shown), figsize=(6 * len(axes_shown), 4.5), squeeze=False)
    averages = differences[differences["task"] == AVERAGE]
    for axis, (column, label, higher_is_better) in zip(panels[0], axes_shown, strict=True):
        for (model, reducer), rows in points.groupby(["model", "reducer"]):
            axis.errorbar(
                rows[column], rows["average"], yerr=error_bars(rows, averages, CELLS), fmt="o", capsize=3,
                label=f"{model}: {reducer}",
            )  # fmt: skip
            for _, row in rows.iterrows():
                axis.annotate(f"{row['budget']:g}", (row[column], row["average"]), fontsize="x-small")
        front = pareto_front(points, column, higher_is_better)
        axis.plot(front[column], front["average"], color="gray", linestyle=":", label="Pareto front")
        axis.set(xlabel=label, ylabel="average accuracy (%), 95% CI vs full")
    panels[0][-1].legend(fontsize="small")
    figure.tight_layout()
    save_figure(figure, path)


def plot_ttft_breakdown(summary: pd.DataFrame, path: Path) -> None:
    parts = summary.groupby(["model", "reducer", "budget"])[["vision_ms", "reducer_ms", "prefill_ms"]].mean()
    figure, axis = plt.subplots(figsize=(max(6, 0.6 * len(parts)), 4))
    parts.rename(index=lambda b: f"{b:g}" if isinstance(b, float) else b).plot.bar(stacked=True, ax=axis)
    axis.set(ylabel="ms per question", xlabel="model, reducer, budget", title="time to first token, by part")
    figure.tight_layout()
    save_figure(figure, path)
