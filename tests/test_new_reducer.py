"""README's "Add your own reducer": its files, and nothing else, put a new reducer into a sweep, from this repository
or from a package of its own registered through the entry-point group."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from sttm.api import ENTRY_POINT_GROUP

tomllib = pytest.importorskip("tomllib")  # Python 3.11+
ROOT = Path(__file__).resolve().parents[1]


def readme_blocks(subsection: str) -> dict[str, str]:
    """The code blocks of a subsection of README's "Add your own reducer" by the file they belong in: the file their
    first line names (``# baselines/x.py``), or for a reducer config the one its ``# @package reducers.<name>`` line
    names."""
    section = (ROOT / "README.md").read_text().split("## Add your own reducer", 1)[1].split("\n## ", 1)[0]
    part = section.split(f"### {subsection}\n", 1)[1].split("\n### ", 1)[0]
    files = {}
    for first, body in re.findall(r"```\w*\n# ([^\n]+)\n(.*?)```", part, flags=re.S):
        config = re.fullmatch(r"@package reducers\.(\w+)", first)
        if config:
            files[f"configs/reducers/{config[1]}.yaml"] = f"# {first}\n{body}"
        else:
            files[first] = body
    return files


def evaluate(tmp_path: Path, *overrides: str, environment: dict | None = None) -> None:
    subprocess.run(
        [
            sys.executable, "-m", "runners.evaluate", *overrides, "limit=2", "benchmark.tasks=[toy_nextqa]",
            f"results_dir={tmp_path / 'results'}", f"benchmark.data_dir={tmp_path / 'data'}",
            f"model.pretrained={tmp_path / 'tiny'}", "model.build_if_missing=true",
            f"hydra.run.dir={tmp_path / 'hydra'}",
        ],
        cwd=ROOT, check=True, capture_output=True, text=True, env=environment,
    )  # fmt: skip


def evaluated_cell(tmp_path: Path, reducer: str) -> Path:
    return next((tmp_path / "results").rglob(f"{reducer}/*/budget_0.5/records.jsonl")).parent


def test_a_new_reducer_file_and_config_run_in_a_sweep(tmp_path):
    files = {ROOT / name: body for name, body in readme_blocks("In this repository").items()}
    assert {p.relative_to(ROOT).parts[0] for p in files} == {"baselines", "configs"}
    try:
        for path, body in files.items():
            path.write_text(body)
        evaluate(tmp_path, "reducers=[keep_first_tokens]")
    finally:
        for path in files:
            path.unlink(missing_ok=True)
    cell = evaluated_cell(tmp_path, "keep_first_tokens")
    records = [json.loads(line) for line in (cell / "records.jsonl").open()]
    assert len(records) == 2 and all(r["achieved_ratio"] == 0.5 for r in records)
    assert (cell / "DONE").is_file()


def installed(project: Path, site: Path) -> None:
    """What ``pip install`` of ``project`` leaves on a path: its module, and a dist-info whose entry points are its
    pyproject.toml's."""
    metadata = tomllib.loads((project / "pyproject.toml").read_text())["project"]
    info = site / f"{metadata['name'].replace('-', '_')}-{metadata['version']}.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {metadata['name']}\nVersion: {metadata['version']}\n")
    groups = metadata["entry-points"]
    (info / "entry_points.txt").write_text(
        "".join(f"[{group}]\n" + "".join(f"{k} = {v}\n" for k, v in groups[group].items()) for group in groups)
    )
    for module in project.glob("*.py"):
        (site / module.name).write_text(module.read_text())


def test_a_package_of_its_own_registers_a_reducer_through_the_entry_point_group(tmp_path):
    files = readme_blocks("From another package")
    assert set(files) == {"keep_last_tokens.py", "pyproject.toml"}
    project = tmp_path / "project"
    project.mkdir()
    for name, body in files.items():
        (project / name).write_text(body)
    assert ENTRY_POINT_GROUP in tomllib.loads(files["pyproject.toml"])["project"]["entry-points"]
    site = tmp_path / "site"
    installed(project, site)
    path = os.pathsep.join(filter(None, [str(site), os.environ.get("PYTHONPATH")]))
    evaluate(
        tmp_path, "reducers=[]", "+reducers.keep_last_tokens={name: keep_last_tokens}",
        environment=os.environ | {"PYTHONPATH": path},
    )  # fmt: skip
    cell = evaluated_cell(tmp_path, "keep_last_tokens")
    assert json.loads((cell / "cell.json").read_text())["method"] == "keep_last_tokens"
    records = [json.loads(line) for line in (cell / "records.jsonl").open()]
    assert len(records) == 2 and all(r["achieved_ratio"] == 0.5 for r in records)
