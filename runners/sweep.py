"""Sweep the configured reducers at one budget over synthetic token grids and print the table.

    python -m runners.sweep budget=0.3 'reducers=[sttm]'

For now this exercises the reducers alone (achieved ratio, the method's own time): model evaluation over the
benchmarks is not wired in yet. The table goes to stdout and, as CSV, to Hydra's run folder.
"""

from __future__ import annotations

import statistics
from pathlib import Path

import hydra
import pandas as pd
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf
from tqdm import tqdm

from sttm.api import VideoTokens, build_reducer, check_budget
from sttm.synthetic import redundant_video

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def reducer_config(name: str) -> DictConfig:
    path = CONFIGS / "reducer" / f"{name}.yaml"
    if not path.is_file():
        choices = sorted(p.stem for p in (CONFIGS / "reducer").glob("*.yaml"))
        raise ValueError(f"no reducer config {name!r} in {path.parent}; choose one of: {', '.join(choices)}")
    return OmegaConf.load(path)


def sweep(cfg: DictConfig) -> pd.DataFrame:
    """One row per reducer: tokens in and out, achieved ratio, median time of the method itself."""
    budget = check_budget(cfg.budget)
    configs = {name: reducer_config(name) for name in cfg.reducers}  # fail on a bad name before any work
    clip = VideoTokens(redundant_video(**cfg.video))
    rows = []
    for name, config in tqdm(configs.items(), desc=f"budget {budget}", unit="reducer"):
        reducer = build_reducer(config.name, budget=budget, **config.get("params", {}))
        runs = [reducer(clip) for _ in range(cfg.repeats)]
        result = runs[-1]
        rows.append(
            {
                "reducer": name,
                "stage": reducer.stage.value,
                "budget": budget,
                "tokens_in": clip.num_tokens,
                "tokens_out": result.num_kept,
                "achieved_ratio": round(result.kept_ratio, 4),
                "reducer_ms": round(statistics.median(r.reducer_ms for r in runs), 2),
            }
        )
    return pd.DataFrame(rows)


@hydra.main(version_base="1.3", config_path="../configs", config_name="sweep")
def main(cfg: DictConfig) -> None:
    table = sweep(cfg)
    out = Path(HydraConfig.get().runtime.output_dir) / "sweep.csv"
    table.to_csv(out, index=False)
    print(table.to_markdown(index=False))
    print(f"\ntable: {out}")


if __name__ == "__main__":
    main()
