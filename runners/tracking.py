"""Log an evaluation cell to Weights & Biases: its config, summary metrics, per-question table and plots.

Offline unless the caller asks otherwise (``mode="online"``); an offline run can be uploaded later with
``wandb sync``.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import wandb

from runners.report import summarize


def cell_metrics(records: pd.DataFrame) -> dict[str, float]:
    """Flat summary numbers of one cell: accuracy per task and the means of its costs."""
    metrics = {}
    for _, row in summarize(records).iterrows():
        task = row["task"]
        metrics[f"{task}/accuracy"] = row["accuracy"]
        metrics[f"{task}/questions"] = row["questions"]
        metrics[f"{task}/failed"] = row["failed"]
        for cost in ("achieved_ratio", "prefill_ms", "ttft_ms", "vision_ms", "reducer_ms"):
            metrics[f"{task}/{cost}"] = row[cost]
    return metrics


def log_cell(
    name: str,
    config: dict,
    records: pd.DataFrame,
    plots: list[Path] = (),
    project: str = "sttm-bench",
    mode: str = "offline",
    directory: Path | None = None,
) -> Path:
    """Log one cell as one wandb run; return the run's folder."""
    run = wandb.init(project=project, name=name, config=config, mode=mode, dir=directory, reinit="create_new")
    try:
        run.summary.update(cell_metrics(records))
        run.log({"questions": wandb.Table(dataframe=records.astype({"extra": str}, errors="ignore"))})
        for plot in plots:
            run.log({plot.stem: wandb.Image(str(plot))})
        return Path(run.dir).parent
    finally:
        run.finish()
