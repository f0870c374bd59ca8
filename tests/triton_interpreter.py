"""Triton kernels checked on a CPU: a script run by Triton's interpreter (``TRITON_INTERPRET=1``) in a process of its
own, since the interpreter is chosen when Triton is first imported."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import torch


def interpreted(script: str, inputs: object, folder: Path) -> object:
    """What ``script`` saves to ``sys.argv[2]`` given ``inputs``, saved with ``torch.save`` to ``sys.argv[1]``, when
    run under Triton's interpreter; fails with the script's error output where it fails."""
    given, returned = folder / "inputs.pt", folder / "outputs.pt"
    torch.save(inputs, given)
    environment = {**os.environ, "TRITON_INTERPRET": "1"}
    finished = subprocess.run(
        [sys.executable, "-c", script, given, returned], env=environment, capture_output=True, text=True, timeout=600
    )
    assert finished.returncode == 0, finished.stderr
    return torch.load(returned)
