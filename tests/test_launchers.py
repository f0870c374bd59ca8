"""Hydra launchers: the Slurm and local configs extend hydra-submitit-launcher's own, and a multirun through the
local one runs each job in a process of its own, evaluates the shared full-token cell once, and resumes."""

from __future__ import annotations

import os
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

from runners.settings import CONFIGS

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize(
    ("launcher", "target"),
    [("slurm", "submitit_launcher.SlurmLauncher"), ("local", "submitit_launcher.LocalLauncher")],
)
def test_the_launcher_configs_extend_the_plugins_own(launcher, target):
    with warnings.catch_warnings(), initialize_config_dir(config_dir=str(CONFIGS), version_base="1.3"):
        warnings.simplefilter("error")  # e.g. Hydra's deprecated schema matching of a config named like the plugin's
        cfg = compose(
            "evaluate", [f"hydra/launcher={launcher}", "hydra.launcher.timeout_min=30"], return_hydra_config=True
        )
    assert cfg.hydra.launcher._target_.endswith(target) and cfg.hydra.launcher.timeout_min == 30
    assert cfg.hydra.launcher.submitit_folder.endswith("/.submitit/%j")  # the plugin's default


def sweep(tmp_path: Path) -> subprocess.CompletedProcess:
    command = [
        sys.executable, "-m", "runners.evaluate", "-m", "hydra/launcher=local", "hydra.launcher.gpus_per_node=0",
        "reducers=[random],[pool]", "limit=1", "benchmark.tasks=[toy_nextqa]", f"results_dir={tmp_path / 'results'}",
        f"benchmark.data_dir={tmp_path / 'data'}", f"model.pretrained={tmp_path / 'tiny'}",
        "model.build_if_missing=true", f"hydra.sweep.dir={tmp_path / 'sweep'}",
    ]  # fmt: skip
    environment = os.environ | {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    return subprocess.run(command, cwd=ROOT, env=environment, capture_output=True, text=True, timeout=300)


def test_a_local_multirun_runs_each_job_in_its_own_process_and_resumes(tmp_path):
    first = sweep(tmp_path)
    assert first.returncode == 0, first.stderr[-3000:]
    jobs = tmp_path / "sweep" / ".submitit"
    assert len(list(jobs.glob("*/*_result.pkl"))) == 2  # one submitit job (a process) per reducer
    records = sorted((tmp_path / "results" / "tiny_llava_onevision" / "toybench").glob("*/*/*/records.jsonl"))
    assert [path.parent.parent.parent.name for path in records] == ["none", "pool", "random"]
    assert all(len(path.read_text().splitlines()) == 1 for path in records)  # full tokens, which both need, ran once
    finished = {path: (path.stat().st_mtime_ns, (path.parent / "DONE").stat().st_mtime_ns) for path in records}
    second = sweep(tmp_path)
    assert second.returncode == 0, second.stderr[-3000:]
    assert len(list(jobs.glob("*/*_result.pkl"))) == 4
    assert finished == {path: (path.stat().st_mtime_ns, (path.parent / "DONE").stat().st_mtime_ns) for path in records}
