"""README's "Add your own reducer": its two files, and nothing else, put a new reducer into a sweep."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def readme_files() -> dict[Path, str]:
    """The code blocks of README whose first line names the file they belong in."""
    section = (ROOT / "README.md").read_text().split("## Add your own reducer", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```\w*\n# (\S+)\n(.*?)```", section, flags=re.S)
    return {ROOT / name: body for name, body in blocks}


def test_a_new_reducer_file_and_config_run_in_a_sweep(tmp_path):
    files = readme_files()
    assert {p.relative_to(ROOT).parts[0] for p in files} == {"baselines", "configs"}
    try:
        for path, body in files.items():
            path.write_text(body)
        subprocess.run(
            [
                sys.executable, "-m", "runners.evaluate", "reducers=[keep_first_tokens]", "limit=2",
                "benchmark.tasks=[toy_nextqa]", f"results_dir={tmp_path / 'results'}",
                f"benchmark.data_dir={tmp_path / 'data'}", f"model.pretrained={tmp_path / 'tiny'}",
                "model.build_if_missing=true",
            ],
            cwd=ROOT, check=True, capture_output=True, text=True,
        )  # fmt: skip
    finally:
        for path in files:
            path.unlink(missing_ok=True)
    cell = next((tmp_path / "results").rglob("keep_first_tokens/*/records.jsonl")).parent
    records = [json.loads(line) for line in (cell / "records.jsonl").open()]
    assert len(records) == 2 and all(r["achieved_ratio"] == 0.5 for r in records)
    assert (cell / "DONE").is_file()
