"""Check the baselines against their authors' reference vectors.

    python -m baselines.check_golden ../shared/golden/tome
    python -m baselines.check_golden ../shared/golden/dycoke
    python -m baselines.check_golden ../shared/golden/fastvid
    python -m baselines.check_golden ../shared/golden/holitom

Each ``caseNNN.npz`` holds the method's inputs (a video [T, C, H, W], and what else the method reads), the
parameters as JSON (``method`` among them) and the authors' output: features [N, C] and the flat (t, h, w) index of
each token's source slot; format in ``../shared/golden/README.md`` and each folder's README. The case runner of the
case's ``method`` (``CASE_RUNNERS``) reproduces them. A case passes when the slot indices (and whatever else the
runner checks) are identical and features are within 1e-5. Prints one line per case, then ``N passed, M failed``;
exits 1 on any failure or when the folder has no cases.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import torch

from baselines.dycoke import DyCoke
from baselines.fastvid import FastVID
from baselines.holitom import reproduce_inner_case, reproduce_outer_case
from baselines.tome import ToMe
from sttm.api import Reducer, VideoTokens, flat_positions
from sttm.check_golden import FEATURE_TOLERANCE, check_cases


def reducer_for(params: dict) -> Reducer:
    """The reducer configured as the case's reference run."""
    if params["method"] == "tome":
        return ToMe(budget=1 - params["prune_ratio"])
    if params["method"] == "dycoke":
        return DyCoke(prune_ratio=params["prune_ratio"])
    raise ValueError(f"no baseline check for method {params['method']!r}; choose tome or dycoke")


def run_reducer_case(case, params: dict) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """(token_idx, features, mismatches besides them) of a tome or dycoke case."""
    grid = torch.from_numpy(case["video"]).permute(0, 2, 3, 1)
    result = reducer_for(params).reduce(VideoTokens(grid))
    return flat_positions(result.boxes, grid.shape[1], grid.shape[2]), result.tokens, []


def run_fastvid_case(case, params: dict) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """A FastVID case: the grid, ``attention`` [T, H·W] (ATS, pooled) and ``global_features`` [T, Cg] (DySeg)."""
    grid = torch.from_numpy(case["video"]).permute(0, 2, 3, 1)
    reducer = FastVID(budget=params["retention_ratio"], dyseg_c=params["DySeg_c"], dyseg_tau=params["DySeg_tau"],
                      stprune_d=params["STPrune_d"], dtm_p=params["DTM_p"], dtm_beta=params["DTM_beta"])  # fmt: skip
    importance = torch.from_numpy(case["attention"]).reshape(grid.shape[:3])
    result = reducer.reduce(VideoTokens(grid, importance=importance), torch.from_numpy(case["global_features"]))
    return flat_positions(result.boxes, grid.shape[1], grid.shape[2]), result.tokens, []


#: method -> the function reproducing a case of it: (case, params) -> (token_idx, features, other mismatches)
CASE_RUNNERS = {
    "tome": run_reducer_case,
    "dycoke": run_reducer_case,
    "fastvid": run_fastvid_case,
    "holitom": reproduce_outer_case,
    "holitom_inner": reproduce_inner_case,
}


def run_case(path: Path) -> tuple[bool, str]:
    """Run one reference case; return (passed, a one-line description)."""
    case = np.load(path)
    params = json.loads(str(case["params"]))
    if params["method"] not in CASE_RUNNERS:
        raise ValueError(f"no baseline check for method {params['method']!r}; choose {', '.join(CASE_RUNNERS)}")
    token_idx, features, mismatches = CASE_RUNNERS[params["method"]](case, params)
    expected_idx = torch.from_numpy(case["token_idx"])
    expected_features = torch.from_numpy(case["features"])
    shape = list(case["video" if "video" in case else "hidden_states"].shape)
    label = f"{path.stem} {params['method']} shape={shape} tokens={len(token_idx)}/{len(expected_idx)}"
    if token_idx.shape != expected_idx.shape:
        return False, f"{label} FAIL token count"
    if not torch.equal(token_idx, expected_idx):
        return False, f"{label} FAIL token_idx differs at {int((token_idx != expected_idx).sum())} tokens"
    if mismatches:
        return False, f"{label} FAIL {', '.join(mismatches)} differ"
    diff = (features - expected_features).abs().max().item()
    if diff > FEATURE_TOLERANCE:
        return False, f"{label} FAIL max feature diff {diff:.2e}"
    return True, f"{label} PASS max feature diff {diff:.2e}"


def main(argv: list[str] | None = None) -> int:
    return check_cases(argv, __doc__, run_case)


if __name__ == "__main__":
    sys.exit(main())
