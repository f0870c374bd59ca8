"""The authors' hand-tuned STTM settings, read from ``configs/reducer/sttm_paper.yaml``."""

from __future__ import annotations

from pathlib import Path

from omegaconf import OmegaConf

from sttm.reducer import STTM

PAPER_CONFIG = Path(__file__).resolve().parents[1] / "configs" / "reducer" / "sttm_paper.yaml"


def paper_reducer(model: str, benchmark: str, budget: float, config: Path = PAPER_CONFIG) -> STTM:
    """STTM as the paper ran it for ``model`` on ``benchmark`` at ``budget`` (0.5 or 0.3)."""
    table = OmegaConf.load(config)
    if model not in table.thresholds:
        raise ValueError(f"no paper setting for model {model!r}; the paper has: {', '.join(table.thresholds)}")
    per_benchmark = table.thresholds[model]
    if benchmark not in per_benchmark:
        raise ValueError(f"no paper setting for {model} on {benchmark!r}; the paper has: {', '.join(per_benchmark)}")
    key = f"{budget:g}"
    if key not in per_benchmark[benchmark]:
        raise ValueError(f"the paper ran budgets {', '.join(per_benchmark[benchmark])}, not {budget}")
    spatial, temporal = per_benchmark[benchmark][key]
    return STTM(threshold=spatial, temporal_threshold=temporal, layer=table.layers[model], **table.params)
