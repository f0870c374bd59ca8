"""Check the baselines against their authors' reference vectors.

    python -m baselines.check_golden ../shared/golden/tome
    python -m baselines.check_golden ../shared/golden/dycoke

Each ``caseNNN.npz`` holds a video [T, C, H, W], the parameters as JSON (``method`` and the method's own) and the
output of the authors' code (ToMe: ``tome_per_video``, DyCoke: ``dycoke_ttm``, as the STTM authors ran them;
PruneVid: ``merge_frames_dynamic``): features [N, C] and the flat (t, h, w) index of each token's source slot;
format in ``../shared/golden/README.md``. A case passes when the slot indices are identical and features are within
1e-5. Prints one line per case, then ``N passed, M failed``; exits 1 on any failure or when the folder has no cases.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Mapping
from pathlib import Path

import numpy as np
import torch

from baselines.dycoke import DyCoke
from baselines.prunevid import PruneVid
from baselines.tome import ToMe
from sttm.api import Reduction, VideoTokens, flat_positions
from sttm.check_golden import FEATURE_TOLERANCE, check_cases


def video_of(case: Mapping[str, np.ndarray]) -> VideoTokens:
    """The case's video [T, C, H, W] as the reducers' [T, H, W, C] grid."""
    return VideoTokens(torch.from_numpy(case["video"]).permute(0, 2, 3, 1))


def tome_case(case: Mapping[str, np.ndarray], params: dict) -> Reduction:
    return ToMe(budget=1 - params["prune_ratio"]).reduce(video_of(case))


def dycoke_case(case: Mapping[str, np.ndarray], params: dict) -> Reduction:
    return DyCoke(prune_ratio=params["prune_ratio"]).reduce(video_of(case))


def prunevid_case(case: Mapping[str, np.ndarray], params: dict) -> Reduction:
    """PruneVid's stage 1 at the case's knobs; the authors' global RNG was seeded with ``params["seed"]``."""
    knobs = {name: params[name] for name in ("tau", "temporal_segment_ratio", "cluster_ratio", "k") if name in params}
    return PruneVid(seed=params["seed"], **knobs).reduce(video_of(case))


#: method -> the function that runs the case's reference setting on the case's inputs
CASE_RUNNERS: dict[str, Callable[[Mapping[str, np.ndarray], dict], Reduction]] = {
    "tome": tome_case,
    "dycoke": dycoke_case,
    "prunevid": prunevid_case,
}


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
