"""Evaluate reducers on a model and a benchmark or a suite of them through lmms-eval, one resumable cell per
benchmark × reducer.

    python -m runners.evaluate budget=0.3 'reducers=[sttm,vidcom2]' limit=20
    python -m runners.evaluate -m experiment=paper_llava_video_7b   # a table of the STTM paper, a job per budget

A benchmark config has a ``kind``: ``toybench`` (generated), ``vnbench`` (local annotations and videos),
``lmms_eval`` (lmms-eval's built-in tasks, data under ``hf_home``; see ``runners.tasks.builtin``) or ``suite``
(``parts``: benchmark configs of the other kinds). Each cell (model × benchmark × reducer × budget) is a folder
under ``results_dir``: ``cell.json`` (its keys), ``records.jsonl`` (one line per question, see ``runners.records``;
correctness joined from lmms-eval's per-sample scores), ``lmms_eval_results.json`` and ``DONE``. A finished cell is
skipped; an unfinished one resumes from its records; parallel jobs of a multirun never evaluate one cell at once.
A cell where lmms-eval raises stays unfinished: the other cells run, the report is written, then the run fails
naming it. Full tokens always run, as every comparison needs them. The paper-layout table and the plots go to
``results_dir/<model>/<benchmark>/report``.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import random
import time
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path

import hydra
import numpy as np
import pandas as pd
import torch
from omegaconf import DictConfig, OmegaConf
from tqdm import tqdm

from runners.records import (
    is_done,
    load_cells,
    mark_done,
    read_records,
    rewrite_records,
    write_atomically,
    write_cell_keys,
)
from runners.report import write_report
from sttm.adapters.reuse import check_kv_reuse
from sttm.api import Reducer, Stage, build_reducer, check_budget, reducer_class
from sttm.paper import paper_reducer

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
FULL_TOKENS = "none"
KINDS = ("toybench", "vnbench", "lmms_eval", "suite")
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Cell:
    benchmark: DictConfig  # one benchmark config (a suite's part)
    reducer: str
    budget: float
    config: DictConfig | None  # the reducer's config; None for full tokens
    path: Path


def benchmark_parts(benchmark: DictConfig) -> list[DictConfig]:
    """The benchmarks a run evaluates: a suite's parts, or the benchmark itself."""
    if benchmark.kind not in KINDS:
        raise ValueError(f"benchmark.kind {benchmark.kind!r} is not supported; choose from: {', '.join(KINDS)}")
    if benchmark.kind == "suite":
        return [part for member in benchmark.parts.values() for part in benchmark_parts(member)]
    return [benchmark]


def reducer_config(name: str) -> DictConfig:
    path = CONFIGS / "reducer" / f"{name}.yaml"
    if not path.is_file():
        choices = sorted(p.stem for p in (CONFIGS / "reducer").glob("*.yaml"))
        raise ValueError(f"reducers: no config {name!r} in {path.parent}; choose from: {', '.join(choices)}")
    return OmegaConf.load(path)


def reducer_params(cfg: DictConfig, config: DictConfig) -> dict:
    """The reducer's parameters; a reducer acting in the LLM without a layer of its own takes the model's
    ``llm_layer`` (the STTM paper: 2 for 7B models, 0 for 72B)."""
    params = OmegaConf.to_container(config.params) if config.get("params") else {}
    if reducer_class(config.name).stage is Stage.LLM_LAYER and "layer" not in params:
        params["layer"] = cfg.model.llm_layer
    return params


def cell_reducer(
    cfg: DictConfig, name: str, config: DictConfig | None, budget: float, benchmark: str
) -> Reducer | None:
    """The reducer of one cell: none for full tokens; STTM at the authors' thresholds for this model, benchmark and
    budget where the config holds them (``sttm_paper``); otherwise the config's reducer at the budget."""
    if config is None:
        return None
    if "thresholds" in config:
        return paper_reducer(cfg.model.name, benchmark, budget, CONFIGS / "reducer" / f"{name}.yaml")
    return build_reducer(config.name, budget=budget, **reducer_params(cfg, config))


def plan_cells(cfg: DictConfig) -> list[tuple[str, float, DictConfig | None]]:
    """(reducer, budget, its config) for full tokens and every configured reducer; fails on a bad config, or on a
    reducer without a setting for one of the run's benchmarks."""
    budget = check_budget(cfg.budget)
    benchmarks = [part.name for part in benchmark_parts(cfg.benchmark)]
    cells = [(FULL_TOKENS, 1.0, None)]
    for name in cfg.reducers:
        if name == FULL_TOKENS:
            continue
        config = reducer_config(name)
        for benchmark in benchmarks:
            reducer = cell_reducer(cfg, name, config, budget, benchmark)  # bad parameters fail here
            check_kv_reuse(cfg.kv_reuse, reducer)
        cells.append((name, budget, config))
    return cells


def cell_dir(cfg: DictConfig, benchmark: str, reducer: str, budget: float) -> Path:
    return Path(cfg.results_dir) / cfg.model.name / benchmark / reducer / f"budget_{budget:g}"


def builtin_hf_home(benchmarks: list[DictConfig]) -> Path:
    """The one ``hf_home`` of the run's built-in benchmarks: lmms-eval reads a single HF_HOME per process."""
    homes = {str(Path(benchmark.hf_home).expanduser().absolute()) for benchmark in benchmarks}
    if len(homes) > 1:
        raise ValueError(
            f"the built-in benchmarks name different hf_home folders ({', '.join(sorted(homes))}); lmms-eval reads "
            "one HF_HOME per process: give them the same one"
        )
    return Path(homes.pop())


def prepare(cfg: DictConfig) -> None:
    """Write the benchmarks' lmms-eval tasks (generating the synthetic ones), check that the built-in ones' data is
    there, and build the tiny model where the config asks for it. Missing benchmark data fails here, before any
    model loads."""
    benchmarks = benchmark_parts(cfg.benchmark)
    builtin = [benchmark for benchmark in benchmarks if benchmark.kind == "lmms_eval"]
    if builtin:
        from runners.tasks.builtin import check_builtin_data

        hf_home = builtin_hf_home(builtin)
        for benchmark in builtin:
            check_builtin_data(list(benchmark.tasks), hf_home)
    for benchmark in benchmarks:
        if benchmark.kind == "toybench":
            from runners.toybench import generate

            generate(Path(benchmark.data_dir), seed=cfg.seed, splits=("test",), names=list(benchmark.tasks))
        elif benchmark.kind == "vnbench":
            from runners.tasks.vnbench.data import write_vnbench_task

            write_vnbench_task(Path(benchmark.annotations), Path(benchmark.videos), Path(benchmark.data_dir))
    if cfg.model.get("build_if_missing") and not Path(cfg.model.pretrained).is_dir():
        from sttm.adapters.tiny import save_tiny_model

        save_tiny_model(cfg.model.family, Path(cfg.model.pretrained), seed=cfg.seed)


def index_tasks(benchmarks: list[DictConfig]):
    """lmms-eval's task index over our local tasks' folders, plus lmms-eval's own tasks (their data under the
    built-in benchmarks' hf_home) only where the run has built-in benchmarks: indexing those costs seconds."""
    builtin = [benchmark for benchmark in benchmarks if benchmark.kind == "lmms_eval"]
    if builtin:
        from runners.tasks.builtin import use_hf_home

        use_hf_home(builtin_hf_home(builtin))
    from lmms_eval.tasks import TaskManager

    local = [str(Path(benchmark.data_dir).resolve()) for benchmark in benchmarks if benchmark.kind != "lmms_eval"]
    return TaskManager(include_path=local or None, include_defaults=bool(builtin))


def join_correctness(cell: Path, samples: dict) -> None:
    """Write each record's correctness from lmms-eval's per-sample scores (rewriting the file atomically)."""
    from runners.tasks.builtin import is_correct

    correct = {(task, s["doc_id"]): is_correct(task, s) for task, rows in samples.items() for s in rows}
    rows = []
    for row in read_records(cell):
        if not row["error"]:
            row["correct"] = correct.get((row["task"], row["doc_id"]))
        rows.append(row)
    rewrite_records(cell, rows)


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


@contextmanager
def locked(path: Path, wait: bool = True) -> Iterator[bool]:
    """Hold an exclusive lock on ``path`` (an empty file, created if missing) while the block runs, so that parallel
    jobs never write the same data or cell at once; without ``wait``, yield False at once if another process
    holds it. The lock goes with the process, so a crashed job leaves none behind."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX if wait else fcntl.LOCK_EX | fcntl.LOCK_NB)
            held = True
        except BlockingIOError:
            held = False
        yield held


def claimed(cells: list[Cell], accelerator) -> Iterator[Cell]:
    """The cells not done yet, each yielded while this job holds its lock; a cell another job is evaluating is
    left to it. The processes of a data-parallel job follow the main process's decision."""
    from accelerate.utils import broadcast_object_list

    for cell in cells:
        lock = locked(cell.path / ".lock", wait=False) if accelerator.is_main_process else nullcontext(True)
        with lock as held:
            evaluate = broadcast_object_list([held and not is_done(cell.path)])[0]
            if evaluate:
                yield cell
            elif not held:
                log.info("%s: another job is evaluating it", cell.path)


def log_cell(cfg: DictConfig, cell: Cell) -> None:
    if cfg.logger.name != "wandb":
        return
    from runners.tracking import log_cell as log_to_wandb

    records = load_cells(cell.path.parent.parent)
    records = records[(records["reducer"] == cell.reducer) & (records["budget"] == cell.budget)]
    name = f"{cfg.model.name}-{cell.benchmark.name}-{cell.reducer}-{cell.budget:g}"
    keys = {"benchmark": cell.benchmark.name, "reducer": cell.reducer, "budget": cell.budget}
    Path(cfg.logger.dir).mkdir(parents=True, exist_ok=True)
    log_to_wandb(
        name, OmegaConf.to_container(cfg, resolve=True) | keys, records, project=cfg.logger.project,
        mode=cfg.logger.mode, directory=Path(cfg.logger.dir),
    )  # fmt: skip


def evaluate_cell(cfg: DictConfig, cell: Cell, model, task_manager, accelerator) -> None:
    """Run the cell's tasks through lmms-eval; the main process joins correctness, writes the results, logs the
    cell and marks it done. Raises where lmms-eval raised or returned a task without results."""
    from lmms_eval.evaluator import simple_evaluate

    started = time.perf_counter()
    model.record_dir = cell.path
    if accelerator.is_main_process:
        write_cell_keys(
            cell.path, model=cfg.model.name, benchmark=cell.benchmark.name, reducer=cell.reducer, budget=cell.budget
        )
        write_atomically(cell.path / "config.yaml", OmegaConf.to_yaml(cfg))
    output = simple_evaluate(
        model=model, tasks=list(cell.benchmark.tasks), task_manager=task_manager, limit=cfg.limit, log_samples=True,
        process_docs_parallel=1, random_seed=cfg.seed, datetime_str=cell.path.name,
    )  # fmt: skip
    if not accelerator.is_main_process:
        return
    missing = [task for task in cell.benchmark.tasks if task not in output["results"]]
    if missing:
        raise RuntimeError(f"lmms-eval returned no results for {', '.join(missing)}")
    join_correctness(cell.path, output["samples"])
    write_atomically(cell.path / "lmms_eval_results.json", json.dumps(output["results"], indent=1, default=str))
    log_cell(cfg, cell)
    mark_done(cell.path, {"questions": len(read_records(cell.path)), "wall_s": time.perf_counter() - started})


def write_run_report(cfg: DictConfig, benchmarks: list[DictConfig], report: Path) -> None:
    """Write to ``report`` the report over every cell of the run's benchmarks (every budget there), under a lock
    as parallel jobs may finish together."""
    root = Path(cfg.results_dir) / cfg.model.name
    frames = [load_cells(root / benchmark.name) for benchmark in benchmarks]
    records = [frame for frame in frames if not frame.empty]
    if not records:
        log.warning("no records under %s: no report", root)
        return
    with locked(root / ".report.lock"):
        paths = write_report(pd.concat(records, ignore_index=True), report)
    print(paths["markdown"].read_text())
    for kind, path in paths.items():
        print(f"{kind}: {path}")


def run(cfg: DictConfig) -> Path:
    """Evaluate every cell that is not done; write the report; return the report folder. Raises after the report,
    naming them, where cells failed.

    Under ``torchrun --nproc_per_node N`` every process runs this with one model copy: the main process prepares
    the data, lmms-eval gives each process its share of the questions, each appends to its own records file, and
    the main process joins them and writes the cell's files and the report.
    """
    plan = plan_cells(cfg)
    benchmarks = benchmark_parts(cfg.benchmark)
    cells = [
        Cell(benchmark, reducer, budget, config, cell_dir(cfg, benchmark.name, reducer, budget))
        for benchmark in benchmarks
        for reducer, budget, config in plan
    ]
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    make_reproducible(cfg.seed, cfg.reproduce)
    from accelerate import Accelerator

    accelerator = Accelerator(cpu=cfg.model.device == "cpu")
    if accelerator.is_main_process:
        with locked(Path(cfg.results_dir) / ".prepare.lock"):
            prepare(cfg)
    accelerator.wait_for_everyone()
    task_manager = index_tasks(benchmarks)
    from runners.lmms_model import ReducedVideoLLM

    model = None
    failed = []
    quiet = not accelerator.is_main_process
    for cell in tqdm(claimed(cells, accelerator), desc="cells", unit="cell", disable=quiet):
        if model is None:
            model = ReducedVideoLLM(
                cfg.model.pretrained, dtype=cfg.model.dtype, attn_implementation=cfg.model.attn_implementation,
                device=cfg.model.device, device_map=cfg.model.device_map, target_fps=cfg.model.target_fps,
                max_frames=cfg.model.max_frames[cfg.benchmark.get("frame_cap", "default")],
                min_pixels=cfg.model.get("min_pixels"), max_pixels=cfg.model.get("max_pixels"),
                system_prompt=cfg.model.get("system_prompt"),
                max_new_tokens=cfg.model.max_new_tokens, positions=cfg.positions, kv_reuse=cfg.kv_reuse,
            )  # fmt: skip
            model.accelerator = accelerator
        model.max_frames = cfg.model.max_frames[cell.benchmark.get("frame_cap", "default")]
        model.reducer = cell_reducer(cfg, cell.reducer, cell.config, cell.budget, cell.benchmark.name)
        try:
            evaluate_cell(cfg, cell, model, task_manager, accelerator)
        except (Exception, SystemExit):  # lmms-eval's task code may sys.exit
            log.exception("cell %s failed", cell.path)
            failed.append(cell.path)
        accelerator.wait_for_everyone()
    report = Path(cfg.results_dir) / cfg.model.name / cfg.benchmark.name / "report"
    if accelerator.is_main_process:
        write_run_report(cfg, benchmarks, report)
    if failed:
        raise RuntimeError(f"{len(failed)} cell(s) failed, left unfinished: {', '.join(map(str, failed))}")
    return report


@hydra.main(version_base="1.3", config_path=str(CONFIGS), config_name="evaluate")
def main(cfg: DictConfig) -> None:
    run(cfg)


if __name__ == "__main__":
    # run the module's importable copy: a launcher that sends jobs to other processes pickles it by name
    import runners.evaluate

    runners.evaluate.main()
