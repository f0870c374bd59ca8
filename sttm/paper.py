"""The STTM authors' hand-tuned settings: the thresholds and layer of one model, benchmark and budget, looked up in
the paper's table (``configs/paper/sttm_thresholds.yaml``, composed into the ``sttm_paper`` reducer config)."""

from __future__ import annotations

from collections.abc import Mapping

#: the authors' LLaVA-Video-7B Video-MME thresholds (τ_s, τ_t) at budgets 0.5 and 0.3 (STTM_SPEC.md §4), which the
#: benchmark scripts time STTM at besides its budget mode.
BENCHMARK_THRESHOLDS = {0.5: (0.85, 0.55), 0.3: (0.80, 0.50)}


def paper_params(table: Mapping, model: str, benchmark: str, budget: float) -> dict:
    """STTM's ``threshold``, ``temporal_threshold`` and ``layer`` as the paper ran ``model`` on ``benchmark`` at
    ``budget`` (0.5 or 0.3). ``table`` holds ``thresholds[model][benchmark][budget] = [spatial, temporal]`` (budgets
    as strings, "0.5") and ``layers[model]``."""
    thresholds = table["thresholds"]
    if model not in thresholds:
        raise ValueError(f"no paper setting for model {model!r}; the paper has: {', '.join(thresholds)}")
    per_benchmark = thresholds[model]
    if benchmark not in per_benchmark:
        raise ValueError(f"no paper setting for {model} on {benchmark!r}; the paper has: {', '.join(per_benchmark)}")
    key = f"{budget:g}"
    if key not in per_benchmark[benchmark]:
        raise ValueError(f"the paper ran budgets {', '.join(per_benchmark[benchmark])}, not {budget}")
    spatial, temporal = per_benchmark[benchmark][key]
    return {"threshold": spatial, "temporal_threshold": temporal, "layer": table["layers"][model]}
