"""What produced a set of numbers: the versions of the packages that score and run the model, and the project's git
commit, so that a table can be matched to its baseline."""

from __future__ import annotations

import importlib.metadata
import subprocess
from pathlib import Path

PACKAGES = ("lmms_eval", "transformers", "torch")
ROOT = Path(__file__).resolve().parents[1]


def git_commit(root: Path = ROOT) -> str:
    """The short commit of the work tree at ``root``, with ``+dirty`` where tracked files have changed since;
    ``unknown`` outside a git work tree."""
    try:
        commit = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "--short=12", "HEAD"], capture_output=True, text=True, check=True
        ).stdout.strip()
        changes = subprocess.run(
            ["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True, text=True, check=True,
        ).stdout.strip()  # fmt: skip
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return f"{commit}+dirty" if changes else commit


def environment() -> dict[str, str]:
    """``{package: version}`` for ``PACKAGES`` (``missing`` where not installed) and ``{"commit": git_commit()}``."""
    versions = {}
    for package in PACKAGES:
        try:
            versions[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            versions[package] = "missing"
    return versions | {"commit": git_commit()}


def describe(environment: dict[str, str]) -> str:
    """One line: ``lmms_eval 0.7.3, transformers 5.24.0, torch 2.14.1, commit 1c544c4e1a2b``."""
    return ", ".join(f"{key} {value}" for key, value in environment.items())
