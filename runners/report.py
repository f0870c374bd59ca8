"""Tables and plots from evaluation cells, in the layout of the STTM paper's tables.

    python -m runners.report RESULTS_DIR [--out DIR] [--seed 0] [--resamples 9999]

Rows are method × budget for each model (in a folder holding runs of different settings, each run's model is named
by the settings that tell it apart: ``tiny [limit=20]``); columns are the benchmarks' accuracies as lmms-eval
scores them (a question that failed, e.g. on an unreadable video, is wrong), their average, the average over the
answered questions alone, the average relative to the full-token run of the same model, prefill and TTFT speed-ups
over that run, the achieved ratio of visual tokens, the numbers of failed and of all questions, and the cells'
status (a cell not done shows as unfinished, running or failed). Each method is compared with full tokens on the
same questions: the difference of the average (points) and the relative accuracy, with 95% intervals from a paired
bootstrap over videos (``runners.intervals``); ``~`` marks an interval that holds no difference, i.e. within
noise. A stochastic reducer run over several seeds is one row: its accuracies are the means over seeds, with the
interval across them. Writes ``table.md`` (the table, its legend, the differences per benchmark and what produced
the numbers), ``table.csv``, ``table.tex``, ``intervals.csv`` (every interval, as numbers), and three plots:
accuracy against budget per benchmark and average accuracy against prefill speed-up and prefill FLOPs with their
Pareto fronts, each with the intervals as error bars, and the TTFT breakdown (``runners.plots``); each file whole
or not at all (a failed write leaves the previous one).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import numpy as np
import pandas as pd

from runners.files import write_atomically
from runners.intervals import (
    CONFIDENCE,
    RESAMPLES,
    SEED,
    Interval,
    interval_across,
    paired_intervals,
    video_sums,
)
from runners.plots import (
    EFFICIENCY_AXES,
    plot_accuracy_vs_budget,
    plot_accuracy_vs_cost,
    plot_ttft_breakdown,
)
from runners.provenance import describe, environment
from runners.records import AVERAGE, CELLS, FULL_TOKENS, load_cells

DIFFERENCE = "Δ vs full (95% CI)"
RELATIVE = "relative % (95% CI)"
ACROSS_SEEDS = "average over seeds (95% CI)"
WITHIN_NOISE = "~"
LATEX_ESCAPES = {"%": r"\%", "&": r"\&", "_": r"\_", "#": r"\#", "$": r"\$", "~": r"\textasciitilde{}"}
POOLED = {"seed"}  # parameters whose values are repeated runs of one setting, not settings of their own


def dotted(settings: dict, prefix: str = "") -> dict:
    """Nested settings as one level of dotted keys: ``{"model": {"dtype": ...}}`` → ``{"model.dtype": ...}``."""
    flat = {}
    for key, value in settings.items():
        if isinstance(value, dict):
            flat |= dotted(value, f"{prefix}{key}.")
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def differences(values: dict[str, dict], ignored: set[str] = frozenset()) -> dict[str, str]:
    """For each cell of ``values`` (its settings, by cell), ``key=value`` of the settings (but the ``ignored``) in
    which the cells differ; empty where none do."""
    keys = sorted({key for settings in values.values() for key in settings} - ignored)
    differing = [key for key in keys if len({repr(settings.get(key)) for settings in values.values()}) > 1]
    return {cell: ", ".join(f"{key}={settings.get(key)}" for key in differing) for cell, settings in values.items()}


def run_names(cells: pd.DataFrame) -> pd.Series:
    """Each cell's model for the tables (``cells``: one row per cell, by cell): its name, and where cells of one
    model ran with different settings (a folder holding several runs), the settings that tell them apart,
    ``tiny [limit=20]``, so that each run is compared with full tokens of its own settings. A benchmark's own
    settings (``benchmark.*``) are told apart among the cells of that benchmark; a cell that recorded no settings
    (evaluated before they were recorded) is ``[settings not recorded]`` beside cells that did."""
    parts = pd.Series([[] for _ in cells.index], index=cells.index)
    for _, group in cells.groupby("model"):
        settings = {cell: json.loads(text) for cell, text in group["settings"].items() if text != "null"}
        runs = {cell: dotted({key: value for key, value in values.items() if key != "benchmark"})
                for cell, values in settings.items()}  # fmt: skip
        for cell, text in differences(runs).items():
            parts[cell].append(text)
        for _, benchmark in group.loc[list(settings)].groupby("benchmark"):
            own = {cell: dotted({"benchmark": settings[cell].get("benchmark", {})}) for cell in benchmark.index}
            for cell, text in differences(own).items():
                parts[cell].append(text)
        if settings:
            for cell in group.index.difference(list(settings)):
                parts[cell].append("settings not recorded")
    suffixes = parts.map(lambda texts: ", ".join(text for text in texts if text))
    return cells["model"].where(suffixes == "", cells["model"] + " [" + suffixes + "]")


def setting_names(cells: pd.DataFrame) -> pd.Series:
    """Each cell's reducer for the tables (``cells``: one row per cell, by cell): its setting's key under
    ``reducers``, and where cells of one key (at one model, benchmark and budget) hold different parameters, as from
    a sweep over one, the parameters that tell them apart: ``sttm (variant=corrected)``; cells that differ only in
    their ``seed`` are seeds of one setting."""
    names = cells["reducer"].copy()
    for _, group in cells.groupby(["model", "benchmark", "reducer", "budget"], dropna=False):
        values = {cell: json.loads(text) or {} for cell, text in group["params"].items()}
        for cell, text in differences(values, POOLED).items():
            if text:
                names[cell] = f"{names[cell]} ({text})"
    return names


def named(records: pd.DataFrame) -> pd.DataFrame:
    """``records`` with their model named by ``run_names`` and their reducer by ``setting_names``."""
    cells = records.drop_duplicates("cell").set_index("cell")
    cells = cells.assign(model=run_names(cells))
    return records.assign(model=records["cell"].map(cells["model"]), reducer=records["cell"].map(setting_names(cells)))


def scores(records: pd.DataFrame) -> pd.Series:
    """Each record's score as lmms-eval's accuracy counts it: 1 for a right answer, 0 for a wrong one or a failed
    question (an unreadable video); NaN for a question not scored yet and for a cell's row without a question."""
    unscored = records["doc_id"].isna() | (records["correct"].isna() & records["error"].isna())
    return records["correct"].eq(True).astype(float).mask(unscored)


def cells_status(status: pd.Series) -> str:
    """One status for the cells of a row from theirs (``runners.records.cell_status``, or such lists): ``done`` when
    all are, else those that are not, e.g. ``unfinished, running``."""
    pending = {part for text in status for part in text.split(", ")} - {"done"}
    return ", ".join(sorted(pending)) or "done"


def summarize(records: pd.DataFrame) -> pd.DataFrame:
    """One row per (model, reducer, budget, task): ``accuracy`` as lmms-eval scores it (a failed question is wrong;
    none while a question is unscored), over the answers of every seed of a stochastic reducer (their mean),
    ``answered_accuracy`` over the answered questions alone, mean costs over those, the number of ``questions`` and
    of ``failed`` ones, and the cells' ``status`` (a cell without records yet keeps its rows, without questions).
    Models and reducers are named by ``named``."""
    keys = ["model", "reducer", "budget", "task"]
    records = named(records).assign(score=scores(records))
    questions = records[records["doc_id"].notna()]
    questions = questions.assign(failed=questions["error"].notna())
    answered = questions[~questions["failed"]]
    counts = questions.groupby(keys).agg(
        accuracy=("score", lambda score: 100 * score.mean(skipna=False)),
        questions=("doc_id", "nunique"),
        failed=("failed", "sum"),
    )
    costs = answered.groupby(keys).agg(
        answered_accuracy=("score", lambda score: 100 * score.mean(skipna=False)),
        achieved_ratio=("achieved_ratio", "mean"),
        prefill_ms=("prefill_ms", "mean"),
        ttft_ms=("ttft_ms", "mean"),
        vision_ms=("vision_ms", "mean"),
        reducer_ms=("reducer_ms", "mean"),
        prefill_tokens=("prefill_tokens", "mean"),
        prefill_flops=("prefill_flops", "mean"),
    )
    cells = records.groupby(keys).agg(cell=("cell", "first"), wall_s=("wall_s", "first"),
                                      status=("status", cells_status))  # fmt: skip
    summary = cells.join(counts).join(costs)
    summary["questions"] = summary["questions"].fillna(0).astype(int)
    summary["failed"] = summary["failed"].fillna(0).astype(int)
    return summary.reset_index()


def paper_table(summary: pd.DataFrame) -> pd.DataFrame:
    """Method × budget rows per model, benchmarks as columns (accuracy as lmms-eval scores it), plus their average
    (none where one of the cell's benchmarks has no accuracy), the average over answered questions alone, relative
    accuracy, speed-ups, the prefill's FLOPs as a share of full tokens' (``sttm.adapters.flops``), prefill tokens
    per question, the evaluation's wall time, the number of failed questions and of all questions, and the cells'
    status."""
    cells = CELLS
    accuracy = summary.pivot(index=cells, columns="task", values="accuracy")
    unanswered = summary["accuracy"].isna().groupby([summary[key] for key in cells]).any().reindex(accuracy.index)
    table = accuracy.assign(average=accuracy.mean(axis=1).mask(unanswered))
    answered = summary.pivot(index=cells, columns="task", values="answered_accuracy")
    table["answered_average"] = answered.mean(axis=1).mask(answered.isna().any(axis=1))
    costs = summary.groupby(cells)[["prefill_ms", "ttft_ms", "prefill_flops", "achieved_ratio"]].mean()
    costs = costs.reindex(table.index)
    is_full = table.index.get_level_values("reducer") == FULL_TOKENS
    if is_full.any():
        per_model = pd.concat([table["average"], costs], axis=1)[is_full].groupby(level="model").first()
        full = per_model.reindex(table.index.get_level_values("model")).set_index(table.index)
        table["relative_%"] = 100 * table["average"] / full["average"]
        table["prefill_speedup"] = full["prefill_ms"] / costs["prefill_ms"]
        table["ttft_speedup"] = full["ttft_ms"] / costs["ttft_ms"]
        table["flops_%"] = 100 * costs["prefill_flops"] / full["prefill_flops"]  # sttm.adapters.flops
    table["achieved_ratio"] = costs["achieved_ratio"]
    table["prefill_tokens_per_question"] = summary.groupby(cells)["prefill_tokens"].mean().reindex(table.index)
    per_cell = summary.dropna(subset=["cell"]).drop_duplicates([*cells, "cell"])
    table["wall_s"] = per_cell.groupby(cells)["wall_s"].sum(min_count=1).reindex(table.index)
    table["failed"] = summary.groupby(cells)["failed"].sum().reindex(table.index)
    table["questions"] = summary.groupby(cells)["questions"].sum().reindex(table.index)
    table["status"] = summary.groupby(cells)["status"].agg(cells_status).reindex(table.index)
    return table.sort_index(level=["model", "budget", "reducer"], ascending=[True, False, True]).round(2)


def record_seeds(records: pd.DataFrame) -> pd.Series:
    """Each record's reducer seed (None for reducers without one), from its cell's parameters."""
    return records["params"].map(lambda text: (json.loads(text) or {}).get("seed"))


def question_scores(records: pd.DataFrame) -> pd.DataFrame:
    """One row per (model, reducer, budget, task, doc_id) scored: its ``score``, the mean over the reducer's seeds of
    its ``scores`` (0 or 1 with one seed; a failed question is wrong), and its ``video``, the cluster it is
    resampled with (the question itself where its record names no video)."""
    records = named(records).assign(score=scores(records))
    scored = records[records["score"].notna()]
    question = scored["task"] + "/" + scored["doc_id"].astype(int).astype(str)
    video = scored["video"].fillna(question)
    questions = scored.assign(video=video).groupby([*CELLS, "task", "doc_id"], as_index=False)
    return questions.agg(score=("score", "mean"), video=("video", "first"))


def paired_differences(records: pd.DataFrame, seed: int = SEED, resamples: int = RESAMPLES) -> pd.DataFrame:
    """Every reducer row against full tokens of its model on the questions both answered (joined on task and
    doc_id), per benchmark and for their average (task ``AVERAGE``, given where every benchmark of the full-token
    run pairs at least two videos): the difference (points) and relative accuracy (%), each with its interval
    (``_low``, ``_high``) from ``runners.intervals.paired_intervals``, and the videos and questions it rests on. A
    benchmark with fewer than two paired videos has no row."""
    per_question = question_scores(records)
    full = per_question[per_question["reducer"] == FULL_TOKENS]
    rows = []
    for (model, reducer, budget), method in per_question[per_question["reducer"] != FULL_TOKENS].groupby(CELLS):
        reference = full[full["model"] == model]
        paired = reference.merge(method, on=["task", "doc_id"], suffixes=("_full", ""))
        sums = {
            task: video_sums(questions[["score_full", "score"]].to_numpy(), questions["video"].to_numpy())
            for task, questions in paired.groupby("task")
        }
        tasks = [task for task, (_, counts) in sums.items() if len(counts) >= 2]
        if not tasks:
            continue
        differences, relatives = paired_intervals([sums[t][0] for t in tasks], [sums[t][1] for t in tasks], seed,
                                                  resamples)  # fmt: skip
        names = [*tasks, AVERAGE] if tasks == sorted(reference["task"].unique()) else tasks
        # without the average, its intervals (the last) go unused
        for task, difference, relative in zip(names, differences, relatives, strict=False):
            counts = np.concatenate([sums[t][1] for t in tasks]) if task == AVERAGE else sums[task][1]
            rows.append({
                "model": model, "reducer": reducer, "budget": budget, "task": task,
                "difference": difference.estimate, "difference_low": difference.low,
                "difference_high": difference.high, "relative": relative.estimate, "relative_low": relative.low,
                "relative_high": relative.high, "videos": len(counts), "questions": int(counts.sum()),
            })  # fmt: skip
    columns = [*CELLS, "task", "difference", "difference_low", "difference_high", "relative", "relative_low",
               "relative_high", "videos", "questions"]  # fmt: skip
    return pd.DataFrame(rows, columns=columns)


def seed_spread(records: pd.DataFrame) -> pd.DataFrame:
    """Per (model, reducer, budget): the number of ``seeds`` of its cells and, with several, the mean over seeds of
    the average accuracy over benchmarks (lmms-eval's, ``scores``) with its t-interval across seeds (``across``,
    ``across_low``, ``across_high``)."""
    records = named(records).assign(score=scores(records))
    scored = records[records["score"].notna()]
    scored = scored.assign(seed=record_seeds(scored))
    per_task = scored.groupby([*CELLS, "seed", "task"], dropna=False)["score"].mean()
    per_seed = 100 * per_task.groupby(level=[*CELLS, "seed"], dropna=False).mean()
    rows = []
    for key, averages in per_seed.groupby(level=CELLS, dropna=False):
        across = interval_across(averages.to_numpy())
        rows.append(dict(zip(CELLS, key, strict=True)) | {"seeds": len(averages), "across": across.estimate,
                    "across_low": across.low, "across_high": across.high})  # fmt: skip
    return pd.DataFrame(rows, columns=[*CELLS, "seeds", "across", "across_low", "across_high"]).set_index(CELLS)


def format_interval(estimate: float, low: float, high: float, null: float) -> str:
    """``-0.5 [-2.1, 1.0]~``: an estimate and its interval, ``WITHIN_NOISE`` where the interval holds ``null`` (no
    difference); the estimate alone where there is no interval, nothing where there is no estimate."""
    if pd.isna(estimate):
        return ""
    if pd.isna(low):
        return f"{estimate:.1f}"
    noise = WITHIN_NOISE if Interval(estimate, low, high).contains(null) else ""
    return f"{estimate:.1f} [{low:.1f}, {high:.1f}]{noise}"


def formatted(differences: pd.DataFrame, statistic: str, null: float) -> pd.Series:
    """The rows of ``paired_differences`` as ``format_interval`` strings of ``statistic``."""
    values = differences[[statistic, f"{statistic}_low", f"{statistic}_high"]].itertuples(index=False)
    return pd.Series([format_interval(*row, null) for row in values], index=differences.index, dtype=object)


def with_intervals(table: pd.DataFrame, differences: pd.DataFrame, spread: pd.DataFrame) -> pd.DataFrame:
    """``paper_table`` with the average's difference and relative accuracy and their intervals as text
    (``DIFFERENCE``, ``RELATIVE``; empty for full tokens), and where a row ran several seeds, their number and the
    interval across them (``seeds``, ``ACROSS_SEEDS``)."""
    average = differences[differences["task"] == AVERAGE].set_index(CELLS).reindex(table.index)
    table = table.assign(**{DIFFERENCE: formatted(average, "difference", 0.0).fillna(""),
                            RELATIVE: formatted(average, "relative", 100.0).fillna("")})  # fmt: skip
    spread = spread.reindex(table.index)
    if (spread["seeds"] > 1).any():
        table["seeds"] = spread["seeds"].fillna(1).astype(int)
        table[ACROSS_SEEDS] = formatted(spread, "across", math.nan).where(spread["seeds"] > 1, "")
    return table


def difference_table(differences: pd.DataFrame) -> pd.DataFrame:
    """The difference to full tokens with its interval, as text: method × budget rows, benchmarks (and their
    average) as columns."""
    text = differences.assign(text=formatted(differences, "difference", 0.0))
    table = text.pivot(index=CELLS, columns="task", values="text").fillna("")
    averaged = [AVERAGE] if AVERAGE in table else []
    return table[sorted(set(table) - {AVERAGE}) + averaged]


def legend(seed: int, resamples: int) -> str:
    return (
        f"Δ vs full: average accuracy minus that of full tokens on the same questions, in points; relative: % of full "
        f"tokens' average accuracy. {100 * CONFIDENCE:g}% intervals from a paired bootstrap over videos (each "
        f"benchmark's videos resampled on their own; {resamples} draws, seed {seed}). {WITHIN_NOISE}: the interval "
        "contains 0 (Δ) or 100 (relative): within noise on these questions."
    )


def latex_text(text: str) -> str:
    """``text`` with LaTeX's special characters escaped (the table's cells and headers pandas escapes itself)."""
    return "".join(LATEX_ESCAPES.get(character, character) for character in text)


def provenance(records: pd.DataFrame) -> list[str]:
    """What produced the numbers: the environments the cells recorded (``runners.provenance``), each with its
    number of cells, and the report's own where cells recorded none."""
    cells = records.drop_duplicates("cell")
    recorded = cells["environment"] if "environment" in cells else pd.Series(None, index=cells.index, dtype=object)
    lines = [
        f"evaluated with {describe(json.loads(text))} ({count} cells)"
        for text, count in sorted(recorded.dropna().value_counts().items())
    ]
    if recorded.isna().any():
        lines.append(f"reported with {describe(environment())} ({int(recorded.isna().sum())} cells recorded none)")
    return lines


def write_report(records: pd.DataFrame, out: Path, seed: int = SEED, resamples: int = RESAMPLES) -> dict[str, Path]:
    """Write the tables and plots for ``records`` under ``out``; return their paths by kind. ``seed`` and
    ``resamples`` drive the bootstrap: the same seed writes the same intervals."""
    out.mkdir(parents=True, exist_ok=True)
    summary = summarize(records)
    differences = paired_differences(records, seed, resamples)
    table = with_intervals(paper_table(summary), differences, seed_spread(records))
    paths = {
        "markdown": out / "table.md",
        "csv": out / "table.csv",
        "latex": out / "table.tex",
        "intervals": out / "intervals.csv",
        "accuracy_vs_budget": out / "accuracy_vs_budget.png",
        "accuracy_vs_cost": out / "accuracy_vs_cost.png",
        "ttft_breakdown": out / "ttft_breakdown.png",
    }
    notes = [legend(seed, resamples), *provenance(records)]
    sections = [table.reset_index().to_markdown(index=False), "\n\n".join(notes)]
    if not differences.empty:
        per_benchmark = difference_table(differences).reset_index().to_markdown(index=False)
        sections += ["Δ vs full per benchmark (95% CI):", per_benchmark]
    write_atomically(paths["markdown"], "\n\n".join(sections) + "\n")
    write_atomically(paths["csv"], table.to_csv())
    write_atomically(paths["intervals"], differences.to_csv(index=False))
    latex = table.to_latex(float_format="%.2f", escape=True, caption=latex_text(legend(seed, resamples)))
    comments = "".join(f"% {line}\n" for line in provenance(records))
    write_atomically(paths["latex"], comments + latex.replace("Δ", r"$\Delta$"))
    plot_accuracy_vs_budget(summary, differences, paths["accuracy_vs_budget"])
    if any(column in table and table[column].notna().any() for column, _, _ in EFFICIENCY_AXES):
        plot_accuracy_vs_cost(table, differences, paths["accuracy_vs_cost"])
    else:
        del paths["accuracy_vs_cost"]
    plot_ttft_breakdown(summary, paths["ttft_breakdown"])
    return paths


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("results", type=Path, help="folder holding evaluation cells")
    parser.add_argument("--out", type=Path, help="where to write (default: RESULTS/report)")
    parser.add_argument("--seed", type=int, default=SEED, help="of the bootstrap's draws")
    parser.add_argument("--resamples", type=int, default=RESAMPLES, help="bootstrap draws per interval")
    args = parser.parse_args(argv)
    records = load_cells(args.results)
    if records.empty:
        print(f"no records under {args.results}", file=sys.stderr)
        return 1
    paths = write_report(records, args.out or args.results / "report", args.seed, args.resamples)
    print(paths["markdown"].read_text())
    for kind, path in paths.items():
        print(f"{kind}: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
