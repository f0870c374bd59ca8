"""The benchmarks of a run (``runners.evaluate``): a suite's parts, what each can evaluate, their data written or
checked before any model loads, and lmms-eval's index of their tasks.

A benchmark config has a ``kind``: ``toybench`` (generated), ``vnbench`` (local annotations and videos),
``lmms_eval`` (lmms-eval's built-in tasks, data under ``hf_home``; see ``runners.tasks.builtin``) or ``suite``
(``parts``: benchmark configs of the other kinds).
"""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig

KINDS = ("toybench", "vnbench", "lmms_eval", "suite")


def benchmark_parts(benchmark: DictConfig) -> list[DictConfig]:
    """The benchmarks a run evaluates: a suite's parts, or the benchmark itself."""
    if benchmark.kind not in KINDS:
        raise ValueError(f"benchmark.kind {benchmark.kind!r} is not supported; choose from: {', '.join(KINDS)}")
    if benchmark.kind == "suite":
        return [part for member in benchmark.parts.values() for part in benchmark_parts(member)]
    return [benchmark]


def known_tasks(kind: str) -> tuple[str, ...]:
    """The task names a benchmark of ``kind`` (not a suite) can evaluate."""
    if kind == "toybench":
        from runners.toybench.benchmarks import BENCHMARKS

        return tuple(BENCHMARKS)
    if kind == "vnbench":
        return ("vnbench",)
    from runners.tasks.builtin import BUILTIN_TASKS

    return tuple(BUILTIN_TASKS)


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
