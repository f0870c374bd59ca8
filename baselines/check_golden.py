"""Check the baselines against their authors' reference vectors.

    python -m baselines.check_golden ../shared/golden/tome
    python -m baselines.check_golden ../shared/golden/dycoke
    python -m baselines.check_golden ../shared/golden/fastvid
    python -m baselines.check_golden ../shared/golden/holitom
    python -m baselines.check_golden ../shared/golden/flashvid
    python -m baselines.check_golden ../shared/golden/flashvid/llm_prune

Each ``caseNNN.npz`` holds the method's inputs (a video [T, C, H, W], and what else the method reads), the
parameters as JSON (``method`` picks the case's runner in ``CASE_RUNNERS``) and the authors' output; format in
``../shared/golden/README.md`` and each folder's README. A case passes when the flat (t, h, w) slot index of every
output token (and whatever else the runner checks) is identical and features are within 1e-5 (FlashVID: rows that
share a slot in either order); FlashVID's pruning inside the LLM when its kept positions, hidden states and
position ids are identical. Prints one line per case, then ``N passed, M failed``; exits 1 on any failure or when
the folder has no cases.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import torch

from baselines.dycoke import DyCoke
from baselines.fastvid import FastVID
from baselines.flashvid import FlashVID, fastv_prune
from baselines.holitom import reproduce_inner_case, reproduce_outer_case
from baselines.prunevid import PruneVid
from baselines.tome import ToMe
from sttm.api import Reduction, VideoTokens, flat_positions
from sttm.check_golden import FEATURE_TOLERANCE, check_cases


def video_grid(case) -> torch.Tensor:
    """The case's video [T, C, H, W] as the [T, H, W, C] grid."""
    return torch.from_numpy(case["video"]).permute(0, 2, 3, 1)


def slots(result: Reduction, case) -> torch.Tensor:
    """[N] the flat (t, h, w) slot of each token of ``result``, on the case's grid."""
    return flat_positions(result.boxes, case["video"].shape[2], case["video"].shape[3])


def max_diff_up_to_tied_rows(features: torch.Tensor, expected: torch.Tensor, token_idx: torch.Tensor) -> float:
    """Max absolute difference of [N, C] rows, where two neighbouring rows of one slot may come in either order."""
    diff = (features - expected).abs().amax(dim=1)
    first = (token_idx[1:] == token_idx[:-1]).nonzero().flatten()
    if len(first) and (first[1:] == first[:-1] + 1).any():
        raise ValueError("more than two rows share a slot")
    second = first + 1
    in_order = torch.maximum(diff[first], diff[second])
    swapped = torch.maximum((features[first] - expected[second]).abs().amax(dim=1),
                            (features[second] - expected[first]).abs().amax(dim=1))  # fmt: skip
    diff[first] = diff[second] = torch.minimum(in_order, swapped)
    return diff.max().item() if len(diff) else 0.0


def compare(
    token_idx: torch.Tensor, features: torch.Tensor, case, label: str, mismatches=(), tied_rows: bool = False
) -> tuple[bool, str]:
    """Pass when ``token_idx`` is the case's, nothing else ``mismatches`` and features are within the tolerance."""
    expected_idx = torch.from_numpy(case["token_idx"])
    expected_features = torch.from_numpy(case["features"])
    label = f"{label} tokens={len(token_idx)}/{len(expected_idx)}"
    if token_idx.shape != expected_idx.shape:
        return False, f"{label} FAIL token count"
    if not torch.equal(token_idx, expected_idx):
        return False, f"{label} FAIL token_idx differs at {int((token_idx != expected_idx).sum())} tokens"
    if mismatches:
        return False, f"{label} FAIL {', '.join(mismatches)} differ"
    if tied_rows:
        diff = max_diff_up_to_tied_rows(features, expected_features, token_idx)
    else:
        diff = (features - expected_features).abs().max().item()
    if diff > FEATURE_TOLERANCE:
        return False, f"{label} FAIL max feature diff {diff:.2e}"
    return True, f"{label} PASS max feature diff {diff:.2e}"


def merge_case(case, params: dict, label: str) -> tuple[bool, str]:
    """A ToMe or DyCoke case: the STTM authors' run at the case's prune ratio."""
    if params["method"] == "tome":
        reducer = ToMe(budget=1 - params["prune_ratio"])
    else:
        reducer = DyCoke(prune_ratio=params["prune_ratio"])
    result = reducer.reduce(VideoTokens(video_grid(case)))
    return compare(slots(result, case), result.tokens, case, label)


def fastvid_reduction(case, params: dict) -> Reduction:
    """FastVID on a case: the grid, ``attention`` [T, H·W] (ATS, pooled) and ``global_features`` [T, Cg] (DySeg)."""
    grid = video_grid(case)
    reducer = FastVID(budget=params["retention_ratio"], dyseg_c=params["DySeg_c"], dyseg_tau=params["DySeg_tau"],
                      stprune_d=params["STPrune_d"], dtm_p=params["DTM_p"], dtm_beta=params["DTM_beta"])  # fmt: skip
    importance = torch.from_numpy(case["attention"]).reshape(grid.shape[:3])
    return reducer.reduce(VideoTokens(grid, importance=importance), torch.from_numpy(case["global_features"]))


def fastvid_case(case, params: dict, label: str) -> tuple[bool, str]:
    result = fastvid_reduction(case, params)
    return compare(slots(result, case), result.tokens, case, label)


def holitom_case(case, params: dict, label: str) -> tuple[bool, str]:
    """A HoliTom case: the outer reduction before the LLM, or (``holitom_inner``) the merge inside it."""
    reproduce = reproduce_inner_case if params["method"] == "holitom_inner" else reproduce_outer_case
    token_idx, features, mismatches = reproduce(case, params)
    return compare(token_idx, features, case, label, mismatches)


def flashvid_case(case, params: dict, label: str) -> tuple[bool, str]:
    """A FlashVID case: ``flashvid_compression`` with the case's ``FlashVidConfig``, r read as the authors do."""
    config = params["config"]
    reducer = FlashVID(
        budget=config["retention_ratio"], alpha=config["alpha"], selection=config["token_selection_method"],
        temporal_threshold=config["temporal_threshold"], do_segment=config["do_segment"],
        segment_threshold=config["segment_threshold"], min_segment_num=config["min_segment_num"],
        complementary_segment=config["complementary_segment"], expansion=config["expansion"], budget_mode="authors",
    )  # fmt: skip
    grid = video_grid(case)
    attention = torch.from_numpy(case["attention"]).reshape(grid.shape[:3])
    result = reducer.reduce(VideoTokens(grid, importance=attention))
    return compare(slots(result, case), result.tokens, case, label, tied_rows=True)


def flashvid_llm_case(case, params: dict, label: str) -> tuple[bool, str]:
    """A case of FlashVID's pruning inside the LLM (``fastv_prune``)."""
    keep, hidden, positions = fastv_prune(
        torch.from_numpy(case["hidden_states"]), torch.from_numpy(case["attention"]),
        params["visual_token_start_index"], params["visual_token_length"], params["llm_retention_ratio"],
    )  # fmt: skip
    label = f"{label} length={params['seq_len']} kept={len(keep)}/{len(case['keep_indices'])}"
    for name, ours in (("keep_indices", keep), ("hidden_states_out", hidden), ("position_ids", positions)):
        expected = torch.from_numpy(case[name])
        if ours.shape != expected.shape or not torch.equal(ours, expected):
            return False, f"{label} FAIL {name} differs"
    return True, f"{label} PASS identical"


def prunevid_case(case, params: dict, label: str) -> tuple[bool, str]:
    """PruneVid's stage 1 at the case's knobs; the authors' global RNG was seeded with ``params["seed"]``."""
    knobs = {name: params[name] for name in ("tau", "temporal_segment_ratio", "cluster_ratio", "k") if name in params}
    result = PruneVid(seed=params["seed"], **knobs).reduce(VideoTokens(video_grid(case)))
    return compare(slots(result, case), result.tokens, case, label)


#: the case runner of each method: (the case's arrays, its parameters, a label) -> (passed, a one-line description)
CASE_RUNNERS = {
    "tome": merge_case,
    "dycoke": merge_case,
    "fastvid": fastvid_case,
    "holitom": holitom_case,
    "holitom_inner": holitom_case,
    "flashvid": flashvid_case,
    "flashvid_llm_prune": flashvid_llm_case,
    "prunevid": prunevid_case,
}


def run_case(path: Path) -> tuple[bool, str]:
    """Run one reference case; return (passed, a one-line description)."""
    case = np.load(path)
    params = json.loads(str(case["params"]))
    if params["method"] not in CASE_RUNNERS:
        raise ValueError(
            f"no baseline check for method {params['method']!r}; choose one of {', '.join(sorted(CASE_RUNNERS))}"
        )
    inputs = case["video"] if "video" in case else case["hidden_states"]
    return CASE_RUNNERS[params["method"]](case, params, f"{path.stem} {params['method']} shape={list(inputs.shape)}")


def main(argv: list[str] | None = None) -> int:
    return check_cases(argv, __doc__, run_case)


if __name__ == "__main__":
    sys.exit(main())
