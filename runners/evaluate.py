"""Evaluate reducers on a model and a benchmark suite through lmms-eval, one resumable cell per reducer.

    python -m runners.evaluate budget=0.3 'reducers=[sttm,vidcom2]' limit=20

Each cell (model × reducer × budget) is a folder under ``results_dir``: ``cell.json`` (its keys),
``records.jsonl`` (one line per question, see ``runners.records``; correctness joined from lmms-eval's
per-sample scores), ``lmms_eval_results.json`` and ``DONE``. A finished cell is skipped; an unfinished one
resumes from its records. Full tokens always run, as every comparison needs them. The paper-layout table and
the plots go to ``results_dir/report``.
"""

from __future__ import annotations

import json
import os
import random
import time
from pathlib import Path

import hydra
import numpy as np
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
from sttm.api import Stage, build_reducer, check_budget, reducer_class

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
FULL_TOKENS = "none"


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


def plan_cells(cfg: DictConfig) -> list[tuple[str, float, DictConfig | None]]:
    """(reducer, budget, its config) for full tokens and every configured reducer; fails on a bad config."""
    budget = check_budget(cfg.budget)
    cells = [(FULL_TOKENS, 1.0, None)]
    for name in cfg.reducers:
        if name == FULL_TOKENS:
            continue
        config = reducer_config(name)
        reducer = build_reducer(config.name, budget=budget, **reducer_params(cfg, config))  # bad parameters fail here
        check_kv_reuse(cfg.kv_reuse, reducer, cfg.positions)
        cells.append((name, budget, config))
    return cells


def cell_dir(cfg: DictConfig, reducer: str, budget: float) -> Path:
    return Path(cfg.results_dir) / cfg.model.name / cfg.benchmark.name / reducer / f"budget_{budget:g}"


def prepare(cfg: DictConfig) -> None:
    """Write the benchmark's lmms-eval tasks (generating the synthetic ones) and build the tiny model where the
    config asks for it. Missing benchmark data fails here, before any model loads."""
    benchmark = cfg.benchmark
    if benchmark.kind == "toybench":
        from runners.toybench import generate

        generate(Path(benchmark.data_dir), seed=cfg.seed, splits=("test",), names=list(benchmark.tasks))
    elif benchmark.kind == "vnbench":
        from runners.tasks.vnbench.data import write_vnbench_task

        write_vnbench_task(Path(benchmark.annotations), Path(benchmark.videos), Path(benchmark.data_dir))
    else:
        raise ValueError(f"benchmark.kind {benchmark.kind!r} is not supported; choose from: toybench, vnbench")
    if cfg.model.get("build_if_missing") and not Path(cfg.model.pretrained).is_dir():
        from sttm.adapters.tiny import save_tiny_model

        save_tiny_model(cfg.model.family, Path(cfg.model.pretrained), seed=cfg.seed)


def join_correctness(cell: Path, samples: dict) -> None:
    """Write each record's correctness from lmms-eval's per-sample accuracy (rewriting the file atomically)."""
    correct = {(task, s["doc_id"]): bool(s["accuracy"]) for task, rows in samples.items() for s in rows}
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


def log_cell(cfg: DictConfig, cell: Path, reducer: str, budget: float) -> None:
    if cfg.logger.name != "wandb":
        return
    from runners.tracking import log_cell as log_to_wandb

    records = load_cells(cell.parent.parent)
    records = records[(records["reducer"] == reducer) & (records["budget"] == budget)]
    name = f"{cfg.model.name}-{cfg.benchmark.name}-{reducer}-{budget:g}"
    config = OmegaConf.to_container(cfg, resolve=True) | {"reducer": reducer, "budget": budget}
    Path(cfg.logger.dir).mkdir(parents=True, exist_ok=True)
    log_to_wandb(
        name, config, records, project=cfg.logger.project, mode=cfg.logger.mode, directory=Path(cfg.logger.dir)
    )


def run(cfg: DictConfig) -> Path:
    """Evaluate every cell that is not done; write the report; return the report folder.

    Under ``torchrun --nproc_per_node N`` every process runs this with one model copy: the main process prepares
    the data, lmms-eval gives each process its share of the questions, each appends to its own records file, and
    the main process joins them and writes the cell's files and the report.
    """
    cells = plan_cells(cfg)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    make_reproducible(cfg.seed, cfg.reproduce)
    from accelerate import Accelerator

    accelerator = Accelerator(cpu=cfg.model.device == "cpu")
    if accelerator.is_main_process:
        prepare(cfg)
    accelerator.wait_for_everyone()
    from lmms_eval.evaluator import simple_evaluate
    from lmms_eval.tasks import TaskManager

    from runners.lmms_model import ReducedVideoLLM

    task_manager = TaskManager(include_path=str(Path(cfg.benchmark.data_dir).resolve()), include_defaults=False)
    model = None
    for reducer, budget, config in tqdm(cells, desc="cells", unit="cell", disable=not accelerator.is_main_process):
        cell = cell_dir(cfg, reducer, budget)
        if is_done(cell):
            continue
        if model is None:
            model = ReducedVideoLLM(
                cfg.model.pretrained, dtype=cfg.model.dtype, attn_implementation=cfg.model.attn_implementation,
                device=cfg.model.device, device_map=cfg.model.device_map, target_fps=cfg.model.target_fps,
                max_frames=cfg.model.max_frames[cfg.benchmark.get("frame_cap", "default")],
                max_new_tokens=cfg.model.max_new_tokens, positions=cfg.positions, kv_reuse=cfg.kv_reuse,
            )  # fmt: skip
            model.accelerator = accelerator
        model.reducer = (
            None if config is None else build_reducer(config.name, budget=budget, **reducer_params(cfg, config))
        )
        started = time.perf_counter()
        model.record_dir = cell
        if accelerator.is_main_process:
            write_cell_keys(cell, model=cfg.model.name, reducer=reducer, budget=budget)
            write_atomically(cell / "config.yaml", OmegaConf.to_yaml(cfg))
        output = simple_evaluate(
            model=model, tasks=list(cfg.benchmark.tasks), task_manager=task_manager, limit=cfg.limit,
            log_samples=True, process_docs_parallel=1, random_seed=cfg.seed, datetime_str=cell.name,
        )  # fmt: skip
        if accelerator.is_main_process:
            join_correctness(cell, output["samples"])
            write_atomically(cell / "lmms_eval_results.json", json.dumps(output["results"], indent=1, default=str))
            mark_done(cell, {"questions": len(read_records(cell)), "wall_s": time.perf_counter() - started})
            log_cell(cfg, cell, reducer, budget)
        accelerator.wait_for_everyone()
    report = Path(cfg.results_dir) / cfg.model.name / cfg.benchmark.name / "report"
    if accelerator.is_main_process:
        records = load_cells(Path(cfg.results_dir) / cfg.model.name / cfg.benchmark.name)
        paths = write_report(records, report)
        print(paths["markdown"].read_text())
        for kind, path in paths.items():
            print(f"{kind}: {path}")
    return report


@hydra.main(version_base="1.3", config_path="../configs", config_name="evaluate")
def main(cfg: DictConfig) -> None:
    run(cfg)


if __name__ == "__main__":
    main()
