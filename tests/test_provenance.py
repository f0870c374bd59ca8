"""What produced the numbers: package versions and the git commit, marked dirty where tracked files changed."""

from __future__ import annotations

import subprocess

from runners.provenance import PACKAGES, describe, environment, git_commit


def git(folder, *arguments: str) -> str:
    command = ["git", "-C", str(folder), "-c", "user.name=t", "-c", "user.email=t@t", *arguments]
    return subprocess.run(command, check=True, capture_output=True, text=True).stdout.strip()


def test_the_commit_is_marked_dirty_once_a_tracked_file_changes_and_unknown_outside_git(tmp_path):
    assert git_commit(tmp_path) == "unknown"
    git(tmp_path, "init", "-q")
    (tmp_path / "a.txt").write_text("one")
    git(tmp_path, "add", "a.txt")
    git(tmp_path, "commit", "-q", "-m", "one")
    head = git(tmp_path, "rev-parse", "--short=12", "HEAD")
    (tmp_path / "untracked.txt").write_text("results")
    assert git_commit(tmp_path) == head
    (tmp_path / "a.txt").write_text("two")
    assert git_commit(tmp_path) == f"{head}+dirty"


def test_the_environment_names_each_package_and_the_commit():
    found = environment()
    assert list(found) == [*PACKAGES, "commit"] and found["torch"] != "missing"
    assert describe({"torch": "2.14.1", "commit": "abc"}) == "torch 2.14.1, commit abc"
