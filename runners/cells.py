"""The cells of a run (``runners.evaluate``): one benchmark × one reducer setting × one budget each, keyed by the
settings it is evaluated with, and claimed by one job at a time.

A cell's folder (``cell_dir``) digests everything its answers depend on: the reducer's method and parameters and the
run's resolved config (``run_settings``: all of it but the keys that cannot change an answer, ``NOT_SETTINGS``, and
those each cell holds as its own, ``CELL_OWN``). A new setting is in the key unless it is named here, so that a run
that differs from an earlier one in anything that can change an answer never reads the earlier one's answers.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Iterator
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from runners.files import locked
from runners.records import LOCK, canonical, is_done
from sttm.api import Reducer, build_reducer

# Top-level keys that cannot change an answer, left out of a cell's settings: where results go, where lmms-eval's
# built-in datasets are read from (the benchmark nodes that read hf_home hold its value), experiment tracking,
# whether downloads are allowed and whether a resumed cell asks its failed questions again.
NOT_SETTINGS = (
    "results_dir", "hf_home", "logger", "offline", "retry_failed",
    "feature_cache", "feature_cache_memory_gb", "feature_cache_disk_gb",  # the same answers with and without it
)  # fmt: skip
CELL_OWN = ("reducers", "budget", "seeds")  # in a cell's key as its reducer's parameters and its budget
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Cell:
    """One benchmark (a suite's part) × one reducer setting × one budget, and the folder that holds its results."""

    benchmark: DictConfig
    reducer: str  # the setting's key under ``reducers`` (FULL_TOKENS for full tokens): its folder and table row
    method: str | None  # the registered reducer the setting builds; None for full tokens
    params: dict  # what the reducer is built with, the budget among them where the method takes one
    budget: float
    path: Path
    settings: dict = field(default_factory=dict)  # the run's settings it is evaluated with (``run_settings``)

    def build_reducer(self) -> Reducer | None:
        return None if self.method is None else build_reducer(self.method, **self.params)

    def keys(self, model: str) -> dict:
        """What ``cell.json`` records."""
        return {"model": model, "benchmark": self.benchmark.name, "tasks": list(self.benchmark.tasks),
                "reducer": self.reducer, "budget": self.budget, "method": self.method, "params": self.params,
                "settings": self.settings}  # fmt: skip


def run_settings(cfg: DictConfig, benchmark: DictConfig) -> dict:
    """The settings a cell of ``benchmark`` (the run's benchmark or one of its suite's parts) is evaluated with: the
    run's resolved config without the keys that cannot change an answer (``NOT_SETTINGS``) and each cell's own
    (``CELL_OWN``), with ``benchmark``'s node as the benchmark."""
    settings = OmegaConf.to_container(cfg, resolve=True)
    for key in (*NOT_SETTINGS, *CELL_OWN):
        settings.pop(key, None)
    return settings | {"benchmark": OmegaConf.to_container(benchmark, resolve=True)}


def cell_dir(cfg: DictConfig, reducer: str, method: str | None, params: dict, budget: float, settings: dict) -> Path:
    """``results_dir/<model>/<benchmark>/<reducer>/<digest>/budget_<budget>`` for the reducer setting ``reducer`` (its
    key under ``reducers``), where ``<digest>`` digests what the cell's answers depend on besides its budget: the
    method, its parameters and the run's ``settings``, so that cells that differ in any of them never share a
    folder."""
    key = {"method": method, "params": {name: value for name, value in params.items() if name != "budget"},
           "settings": settings}  # fmt: skip
    digest = hashlib.sha1(canonical(key).encode()).hexdigest()[:8]
    benchmark = settings["benchmark"]["name"]
    return Path(cfg.results_dir) / cfg.model.name / benchmark / reducer / digest / f"budget_{budget:g}"


def claimed(cells: list[Cell], accelerator) -> Iterator[Cell]:
    """The cells not done yet, each yielded while this job holds its lock; a cell another job is evaluating is
    left to it. The processes of a data-parallel job follow the main process's decision."""
    from accelerate.utils import broadcast_object_list

    for cell in cells:
        lock = locked(cell.path / LOCK, wait=False) if accelerator.is_main_process else nullcontext(True)
        with lock as held:
            evaluate = broadcast_object_list([held and not is_done(cell.path)])[0]
            if evaluate:
                yield cell
            elif not held:
                log.info("%s: another job is evaluating it", cell.path)
