"""Check STTM (official variant) against the authors' reference vectors.

    python -m sttm.check_golden ../shared/golden/sttm

Each ``caseNNN.npz`` holds a video [T, C, H, W], the parameters, and the authors' output (features, boxes,
num_patches); format in ``../shared/golden/README.md``. A case passes when boxes and patch counts are identical
and features are within 1e-5. Prints one line per case, then ``N passed, M failed``; exits 1 on any failure.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

from sttm.api import VideoTokens
from sttm.reducer import STTM

FEATURE_TOLERANCE = 1e-5


def run_case(path: Path) -> tuple[bool, str]:
    """Run one reference case; return (passed, a one-line description)."""
    case = np.load(path)
    params = json.loads(str(case["params"]))
    reducer = STTM(
        threshold=params["threshold"],
        temporal_threshold=params["temporal_thresh"],
        root_level=params["root_level"],
        weighted_avg=params["weighted_avg"],
        head_dim=params["head_dim"],
    )
    grid = torch.from_numpy(case["video"]).permute(0, 2, 3, 1)
    result = reducer.reduce(VideoTokens(grid))
    expected_boxes = torch.from_numpy(case["boxes"])
    expected_patches = torch.from_numpy(case["num_patches"])
    expected_features = torch.from_numpy(case["features"])
    label = f"{path.stem} shape={list(case['video'].shape)} tokens={result.num_kept}/{len(expected_boxes)}"
    if result.boxes.shape != expected_boxes.shape:
        return False, f"{label} FAIL token count"
    if not torch.equal(result.boxes, expected_boxes):
        return False, f"{label} FAIL boxes differ at {int((result.boxes != expected_boxes).any(1).sum())} tokens"
    if not torch.equal(result.num_patches, expected_patches):
        return False, f"{label} FAIL num_patches"
    diff = (result.tokens - expected_features).abs().max().item()
    if diff > FEATURE_TOLERANCE:
        return False, f"{label} FAIL max feature diff {diff:.2e}"
    return True, f"{label} PASS max feature diff {diff:.2e}"


def check_cases(argv: list[str] | None, description: str, run_case) -> int:
    """The command line of a reference check: run ``run_case`` on every case of the folder given in ``argv``,
    print one line each and then ``N passed, M failed``; 1 on any failure or an empty folder, else 0."""
    parser = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("directory", type=Path, help="folder of caseNNN.npz reference vectors")
    args = parser.parse_args(argv)
    cases = sorted(args.directory.glob("case*.npz"))
    if not cases:
        print(f"no case*.npz reference vectors in {args.directory}", file=sys.stderr)
        return 1
    failed = 0
    for path in cases:
        passed, line = run_case(path)
        failed += not passed
        print(line)
    print(f"{len(cases) - failed} passed, {failed} failed")
    return 1 if failed else 0


def main(argv: list[str] | None = None) -> int:
    return check_cases(argv, __doc__, run_case)


if __name__ == "__main__":
    sys.exit(main())
