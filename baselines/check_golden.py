"""Check the baselines against their authors' reference vectors.

    python -m baselines.check_golden ../shared/golden/tome
    python -m baselines.check_golden ../shared/golden/dycoke
    python -m baselines.check_golden ../shared/golden/fastvid

Each ``caseNNN.npz`` holds a video [T, C, H, W], the parameters as JSON (``method`` and the method's own) and the
output of the authors' code (ToMe and DyCoke as the STTM authors ran them, ``tome_per_video`` and ``dycoke_ttm``;
FastVID's block, which also takes ``attention`` and ``global_features``): features [N, C] and the flat (t, h, w)
index of each token's slot; format in ``../shared/golden/README.md`` and each folder's README. A case passes when
the slot indices are identical and features are within 1e-5. Prints one line per case, then ``N passed, M
failed``; exits 1 on any failure or when the folder has no cases.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import torch

from baselines.dycoke import DyCoke
from baselines.fastvid import FastVID
from baselines.tome import ToMe
from sttm.api import Reducer, Reduction, VideoTokens, flat_positions
from sttm.check_golden import FEATURE_TOLERANCE, check_cases


def reducer_for(params: dict) -> Reducer:
    """The reducer configured as the case's reference run."""
    if params["method"] == "tome":
        return ToMe(budget=1 - params["prune_ratio"])
    if params["method"] == "dycoke":
        return DyCoke(prune_ratio=params["prune_ratio"])
    raise ValueError(f"no baseline check for method {params['method']!r}; choose tome or dycoke")


def run_baseline(case, params: dict) -> Reduction:
    """A ToMe or DyCoke case: the grid alone."""
    return reducer_for(params).reduce(VideoTokens(torch.from_numpy(case["video"]).permute(0, 2, 3, 1)))


def run_fastvid(case, params: dict) -> Reduction:
    """A FastVID case: the grid, ``attention`` [T, H·W] (ATS, pooled) and ``global_features`` [T, Cg] (DySeg)."""
    grid = torch.from_numpy(case["video"]).permute(0, 2, 3, 1)
    reducer = FastVID(budget=params["retention_ratio"], dyseg_c=params["DySeg_c"], dyseg_tau=params["DySeg_tau"],
                      stprune_d=params["STPrune_d"], dtm_p=params["DTM_p"], dtm_beta=params["DTM_beta"])  # fmt: skip
    importance = torch.from_numpy(case["attention"]).reshape(grid.shape[:3])
    return reducer.reduce(VideoTokens(grid, importance=importance), torch.from_numpy(case["global_features"]))


#: how each method's case runs: the reduction the authors' output is compared with
CASE_RUNNERS = {"tome": run_baseline, "dycoke": run_baseline, "fastvid": run_fastvid}


def run_case(path: Path) -> tuple[bool, str]:
    """Run one reference case; return (passed, a one-line description)."""
    case = np.load(path)
    params = json.loads(str(case["params"]))
    if params["method"] not in CASE_RUNNERS:
        raise ValueError(f"no baseline check for method {params['method']!r}; choose one of: {', '.join(CASE_RUNNERS)}")
    result = CASE_RUNNERS[params["method"]](case, params)
    height, width = case["video"].shape[2:]
    token_idx = flat_positions(result.boxes, height, width)
    expected_idx = torch.from_numpy(case["token_idx"])
    expected_features = torch.from_numpy(case["features"])
    shape = list(case["video"].shape)
    label = f"{path.stem} {params['method']} shape={shape} tokens={result.num_kept}/{len(expected_idx)}"
    if token_idx.shape != expected_idx.shape:
        return False, f"{label} FAIL token count"
    if not torch.equal(token_idx, expected_idx):
        return False, f"{label} FAIL token_idx differs at {int((token_idx != expected_idx).sum())} tokens"
    diff = (result.tokens - expected_features).abs().max().item()
    if diff > FEATURE_TOLERANCE:
        return False, f"{label} FAIL max feature diff {diff:.2e}"
    return True, f"{label} PASS max feature diff {diff:.2e}"


def main(argv: list[str] | None = None) -> int:
    return check_cases(argv, __doc__, run_case)


if __name__ == "__main__":
    sys.exit(main())
