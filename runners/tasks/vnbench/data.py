"""VNBench's local data as an lmms-eval task.

Annotations: ``VNBench-main-4try_v2.json`` as the STTM authors make it from the benchmark's own file
(``scripts/data/format_data_vnbench.py`` in github.com/HYUNJS/STTM); videos: ``<videoID>.mp4`` in one folder.
"""

from __future__ import annotations

import json
from pathlib import Path

from runners.records import write_atomically
from runners.tasks.local import write_local_task


def write_vnbench_task(annotations: Path, videos: Path, out: Path) -> Path:
    """Write ``out/test.jsonl`` (every entry, with its video's absolute path) and the task ``out/vnbench.yaml``."""
    if not annotations.is_file():
        raise ValueError(
            f"VNBench annotations not found: {annotations} (VNBench-main-4try_v2.json, made from the benchmark's "
            "VNBench-main-4try.json by the STTM authors' scripts/data/format_data_vnbench.py)"
        )
    if not videos.is_dir():
        raise ValueError(f"VNBench video folder not found: {videos}")
    entries = json.loads(annotations.read_text())
    rows = [entry | {"video": str((videos / f"{entry['videoID']}.mp4").resolve())} for entry in entries]
    jsonl = out / "test.jsonl"
    write_atomically(jsonl, "".join(json.dumps(row) + "\n" for row in rows))
    return write_local_task("vnbench", jsonl, vnbench_scoring=True)
