"""Check the ToMe and DyCoke baselines against the STTM authors' reference vectors.

    python -m baselines.check_golden ../shared/golden/tome
    python -m baselines.check_golden ../shared/golden/dycoke

Each ``caseNNN.npz`` holds a video [T, C, H, W], the parameters as JSON (``method``, ``prune_ratio``) and the
output of the authors' ``tome_per_video`` or ``dycoke_ttm``: features [N, C] and the flat (t, h, w) index of
each token's source slot; format in ``../shared/golden/README.md``. A case passes when the slot indices are
identical and features are within 1e-5. Prints one line per case, then ``N passed, M failed``; exits 1 on any
failure or when the folder has no cases.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import torch

from baselines.dycoke import DyCoke
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


def run_case(path: Path) -> tuple[bool, str]:
    """Run one reference case; return (passed, a one-line description)."""
    case = np.load(path)
    params = json.loads(str(case["params"]))
    grid = torch.from_numpy(case["video"]).permute(0, 2, 3, 1)
    result = reducer_for(params).reduce(VideoTokens(grid))
    token_idx = flat_positions(result.boxes, grid.shape[1], grid.shape[2])
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
