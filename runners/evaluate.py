"""Evaluate reducers on a model and a benchmark or a suite of them through lmms-eval, one resumable cell per
benchmark × reducer setting.

    python -m runners.evaluate budget=0.3 'reducers=[sttm,vidcom2]' limit=20
    python -m runners.evaluate 'reducers=[sttm]' reducers.sttm.params.variant=corrected
    python -m runners.evaluate -m reducers.sttm.params.variant=official,corrected   # a job per variant
    python -m runners.evaluate -m experiment=paper_llava_video_7b   # a table of the STTM paper, a job per budget

Reducer settings are Hydra's ``reducers`` config group: each chosen config of ``configs/reducers`` is composed under
``reducers.<its name>`` (``name``: a registered reducer, ``params``: its parameters, every one overridable), and
``+reducers.NAME={name: ..., params: {...}}`` adds one; ``seeds=[0,1,2]`` runs each stochastic reducer (one that
takes a ``seed``) once per seed, each seed a cell. Benchmarks: ``runners.benchmarks``. Every setting is checked
before any data is written or a model loads (``runners.checks``), and the run is offline unless ``offline=false``
(``runners.offline``).

Each cell (model × benchmark × reducer setting × budget) is a folder under ``results_dir`` keyed by everything its
answers depend on (``runners.cells``), so that a run with another ``limit``, seed, model or any other setting gets
cells of its own, never the old answers. A cell holds ``cell.json`` (its keys and settings), ``records.jsonl``
(one line per question of the run, see ``runners.records``; correctness joined from lmms-eval's per-sample
scores), ``lmms_eval_results.json`` and ``DONE``. A finished cell is skipped; an unfinished one resumes from its
answers, asking its failed questions again unless ``retry_failed=false``; parallel jobs of a multirun never
evaluate one cell at once. A cell where lmms-eval raises stays unfinished (``FAILED``): the other cells run,
the report is written, then the run fails naming it; Ctrl-C stops with one line naming the cell to resume. Full
tokens always run, as every comparison needs them. The paper-layout table and the plots over the cells of the
run's settings (every reducer setting and budget run with them) go to ``results_dir/<model>/<benchmark>/report``.
"""

from __future__ import annotations

from runners.offline import use_network  # first: the offline defaults, before anything imports the hub libraries

# isort: split
import inspect
import json
import logging
import os
import random
import sys
import time
from pathlib import Path

import hydra
import numpy as np
import pandas as pd
import torch
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf
from tqdm import tqdm

from runners.benchmarks import benchmark_parts, index_tasks, prepare
from runners.cells import Cell, cell_dir, claimed, run_settings
from runners.checks import check_model, check_reducers_choice, check_settings
from runners.files import locked, write_atomically
from runners.provenance import environment
from runners.records import (
    ENVIRONMENT,
    FULL_TOKENS,
    add_session,
    canonical,
    drop_failed,
    load_cells,
    mark_done,
    mark_failed,
    read_records,
    write_cell_keys,
    write_records,
)
from runners.report import write_report
from runners.settings import CONFIGS, reducer_settings, setting_reducer
from runners.video_cache import VideoCache, sweep_store
from sttm.adapters.reuse import check_kv_reuse
from sttm.api import check_budget, reducer_class

log = logging.getLogger(__name__)


class Interrupted(KeyboardInterrupt):
    """Ctrl-C during a run, with the cell being evaluated then (None outside one)."""

    def __init__(self, cell: Path | None) -> None:
        super().__init__(cell)
        self.cell = cell


def plan_cells(cfg: DictConfig) -> list[Cell]:
    """Full tokens and every reducer setting for each of the run's benchmarks, a cell per seed of ``seeds`` for a
    stochastic reducer; fails on a bad config (a bad run setting, an unknown reducer, bad parameters, a reducer
    without a setting for one of the benchmarks, bad seeds), before any work."""
    check_settings(cfg)
    budget = check_budget(cfg.budget)
    settings = reducer_settings(cfg)
    seeds = run_seeds(cfg, settings)
    cells = []
    for benchmark in benchmark_parts(cfg.benchmark):
        shared = run_settings(cfg, benchmark)
        cells.append(Cell(benchmark, FULL_TOKENS, None, {}, 1.0, cell_dir(cfg, FULL_TOKENS, None, {}, 1.0, shared),
                          shared))  # fmt: skip
        for key, setting in settings.items():
            for seed in setting_seeds(setting.name, seeds):
                try:
                    params, reducer = setting_reducer(setting, cfg.model, budget, benchmark.name, seed)
                except (TypeError, ValueError) as error:
                    raise ValueError(f"reducers.{key} on {benchmark.name}: {error}") from error
                check_kv_reuse(cfg.kv_reuse, reducer)
                path = cell_dir(cfg, key, setting.name, params, budget, shared)
                cells.append(Cell(benchmark, key, setting.name, params, budget, path, shared))
    return cells


def run_seeds(cfg: DictConfig, settings: dict[str, DictConfig]) -> list[int] | None:
    """The run's ``seeds`` (None: each setting runs once, with its own ``seed``): distinct integers, for a run with
    at least one stochastic reducer (one that takes a ``seed``)."""
    seeds = cfg.get("seeds")
    if seeds is None:
        return None
    seeds = list(seeds) if not isinstance(seeds, (int, str)) else [seeds]
    if not seeds or any(isinstance(s, bool) or not isinstance(s, int) for s in seeds) or len(set(seeds)) < len(seeds):
        raise ValueError(f"seeds must be a list of distinct integers, got {seeds!r}")
    if not any(takes_seed(setting.name) for setting in settings.values()):
        raise ValueError(f"seeds={seeds}: none of the run's reducers ({', '.join(settings) or 'none'}) takes a seed")
    return seeds


def takes_seed(method: str) -> bool:
    """Whether the registered reducer ``method`` is stochastic: it takes a ``seed``."""
    return "seed" in inspect.signature(reducer_class(method)).parameters


def setting_seeds(method: str, seeds: list[int] | None) -> list[dict]:
    """What each cell of a setting of ``method`` adds to its parameters: ``{"seed": s}`` for each of the run's
    ``seeds`` where the reducer takes a seed (replacing the setting's own), else nothing, once."""
    if seeds is None or not takes_seed(method):
        return [{}]
    return [{"seed": seed} for seed in seeds]


def join_correctness(cell: Path, samples: dict) -> int:
    """Write the cell's ``records.jsonl``: the answers to the questions lmms-eval scored in this run (``samples``,
    its per-sample logs by task), each with its correctness, a failed one as it is; return how many. Records of
    other questions (left in the folder by another session) are left out."""
    from runners.tasks.builtin import is_correct

    correct = {(task, s["doc_id"]): is_correct(task, s) for task, rows in samples.items() for s in rows}
    rows = {(row["task"], row["doc_id"]): row for row in read_records(cell)}
    unanswered = correct.keys() - rows.keys()
    if unanswered:
        raise RuntimeError(f"lmms-eval scored {len(unanswered)} question(s) without a record, e.g. {min(unanswered)}")
    write_records(cell, [rows[key] | ({} if rows[key]["error"] else {"correct": correct[key]}) for key in correct])
    return len(correct)


def make_reproducible(seed: int, deterministic: bool) -> None:
    """Seed every generator; with ``deterministic``, also ask for deterministic kernels (the STTM authors'
    ``--reproduce``: cuDNN deterministic, ``torch.use_deterministic_algorithms``, a fixed cuBLAS workspace)."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.backends.cudnn.deterministic = True
        torch.backends.cudnn.benchmark = False
        torch.use_deterministic_algorithms(True)


def log_cell(cfg: DictConfig, cell: Cell) -> None:
    if cfg.logger.name != "wandb":
        return
    from runners.tracking import log_cell as log_to_wandb

    records = load_cells(cell.path)
    name = f"{cfg.model.name}-{cell.benchmark.name}-{cell.reducer}-{cell.budget:g}"
    keys = cell.keys(cfg.model.name)
    Path(cfg.logger.dir).mkdir(parents=True, exist_ok=True)
    log_to_wandb(
        name, OmegaConf.to_container(cfg, resolve=True) | keys, records, project=cfg.logger.project,
        mode=cfg.logger.mode, directory=Path(cfg.logger.dir),
    )  # fmt: skip


def evaluate_cell(cfg: DictConfig, cell: Cell, model, task_manager, accelerator) -> None:
    """Run the cell's tasks through lmms-eval (its failed questions asked again first, unless ``retry_failed`` is
    false); the main process writes the records with their correctness and the results, logs the cell and marks it
    done, with the wall time of every session it took. Raises where lmms-eval raised or returned a task without
    results."""
    from lmms_eval.evaluator import simple_evaluate

    started = time.perf_counter()
    main = accelerator.is_main_process
    if main:
        write_cell_keys(cell.path, **cell.keys(cfg.model.name))
        write_atomically(cell.path / "config.yaml", OmegaConf.to_yaml(cfg))
        write_atomically(cell.path / ENVIRONMENT, json.dumps(environment(), indent=1))
        if cfg.retry_failed and (retried := drop_failed(cell.path)):
            log.info("%s: asking its %d failed question(s) again", cell.path, retried)
    accelerator.wait_for_everyone()  # every process reads the answers the main process left
    model.record_dir = cell.path
    try:
        output = simple_evaluate(
            model=model, tasks=list(cell.benchmark.tasks), task_manager=task_manager, limit=cfg.limit,
            log_samples=True, process_docs_parallel=1, random_seed=cfg.seed, datetime_str=cell.path.name,
        )  # fmt: skip
        if not main:
            return
        missing = [task for task in cell.benchmark.tasks if task not in output["results"]]
        if missing:
            raise RuntimeError(f"lmms-eval returned no results for {', '.join(missing)}")
        questions = join_correctness(cell.path, output["samples"])
        write_atomically(cell.path / "lmms_eval_results.json", json.dumps(output["results"], indent=1, default=str))
        log_cell(cfg, cell)
    finally:
        if main:
            sessions = add_session(cell.path, time.perf_counter() - started)
    mark_done(cell.path, {"questions": questions} | sessions)


def write_run_report(cfg: DictConfig, benchmarks: list[DictConfig], report: Path) -> None:
    """Write to ``report`` the report over the cells of the run's settings (``run_settings``) of every benchmark of
    the run, every reducer setting and budget there, under a lock as parallel jobs may finish together."""
    root = Path(cfg.results_dir) / cfg.model.name
    frames = [load_cells(root / benchmark.name) for benchmark in benchmarks]
    settings = [canonical(run_settings(cfg, benchmark)) for benchmark in benchmarks]
    records = [frame[frame["settings"] == ours] for frame, ours in zip(frames, settings, strict=True)]
    records = [frame for frame in records if not frame.empty]
    if not records:
        log.warning("no cells of this run's settings under %s: no report", root)
        return
    with locked(root / ".report.lock"):
        paths = write_report(pd.concat(records, ignore_index=True), report)
    print(paths["markdown"].read_text())
    for kind, path in paths.items():
        print(f"{kind}: {path}")


def record_failure(cell: Path, error: BaseException) -> None:
    """Mark the cell failed (``FAILED``), or log why it cannot be (a full disk may fail the cell and this too)."""
    try:
        mark_failed(cell, f"{type(error).__name__}: {error}")
    except OSError:
        log.exception("%s: cannot mark the cell failed", cell)


def run(cfg: DictConfig) -> Path:
    """Evaluate every cell that is not done; write the report; return the report folder. Raises after the report,
    naming them, where cells failed (logging them even where the report cannot be written); raises
    ``Interrupted``, naming the cell, on Ctrl-C.

    Under ``torchrun --nproc_per_node N`` every process runs this with one model copy: the main process prepares
    the data, lmms-eval gives each process its share of the questions, each appends to its own answers file, and
    the main process joins them and writes the cell's files and the report.
    """
    cells = plan_cells(cfg)
    use_network(not cfg.offline)
    check_model(cfg.model, cfg.offline)
    store = sweep_store(cfg)
    benchmarks = benchmark_parts(cfg.benchmark)
    make_reproducible(cfg.seed, cfg.reproduce)
    from accelerate import Accelerator

    accelerator = Accelerator(cpu=cfg.model.device == "cpu")
    model, failed, cell = None, [], None
    try:
        if accelerator.is_main_process:
            with locked(Path(cfg.results_dir) / ".prepare.lock"):
                prepare(cfg)
        accelerator.wait_for_everyone()
        task_manager = index_tasks(benchmarks)
        from runners.lmms_model import ReducedVideoLLM, max_frames

        quiet = not accelerator.is_main_process
        for cell in tqdm(claimed(cells, accelerator), desc="cells", unit="cell", disable=quiet):
            if model is None:
                model = ReducedVideoLLM.from_model_config(cfg.model, positions=cfg.positions, kv_reuse=cfg.kv_reuse)
                model.accelerator = accelerator
                model.video_cache = None if store is None else VideoCache(store, model.processor, model.model)
            model.max_frames = max_frames(cfg.model, cell.benchmark.get("frame_cap", "default"))
            model.reducer = cell.build_reducer()
            if model.video_cache is not None:
                model.video_cache.start_benchmark(cell.benchmark.name)
            try:
                evaluate_cell(cfg, cell, model, task_manager, accelerator)
            except (Exception, SystemExit) as error:  # lmms-eval's task code may sys.exit
                log.exception("cell %s failed", cell.path)
                if accelerator.is_main_process:
                    record_failure(cell.path, error)
                failed.append(cell.path)
            accelerator.wait_for_everyone()
            cell = None
    except KeyboardInterrupt:
        raise Interrupted(None if cell is None else cell.path) from None
    report = Path(cfg.results_dir) / cfg.model.name / cfg.benchmark.name / "report"
    summary = f"{len(failed)} cell(s) failed, left unfinished: {', '.join(map(str, failed))}"
    try:
        if accelerator.is_main_process:
            write_run_report(cfg, benchmarks, report)
    except BaseException:
        if failed:
            log.error(summary)
        raise
    if failed:
        raise RuntimeError(summary)
    return report


def interruption(interrupted: KeyboardInterrupt) -> str:
    """The line Ctrl-C ends a run with: the cell it stopped and how to resume."""
    cell = getattr(interrupted, "cell", None)
    if cell is None:
        return "interrupted outside a cell; finished cells are kept: run the same command again to go on"
    return f"interrupted while evaluating {cell}: its answers are kept; run the same command again to resume it"


@hydra.main(version_base="1.3", config_path=str(CONFIGS), config_name="evaluate")
def main(cfg: DictConfig) -> None:
    check_reducers_choice(HydraConfig.get().runtime.choices.get("reducers"))
    try:
        run(cfg)
    except KeyboardInterrupt as interrupted:
        print(interruption(interrupted), file=sys.stderr)
        sys.exit(130)


if __name__ == "__main__":
    # run the module's importable copy: a launcher that sends jobs to other processes pickles it by name
    import runners.evaluate

    runners.evaluate.main()
