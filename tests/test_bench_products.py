"""``scripts/bench_products.py`` on the CPU: its float32 rows, their errors against float64 small."""

from __future__ import annotations

import json

from scripts import bench_products


def test_the_float32_rows_run_and_are_close_to_float64(tmp_path, capsys):
    output = tmp_path / "products.json"
    assert bench_products.main(["--shape", "4", "3", "3", "64", "--device", "cpu", "--warmup", "0", "--repeats", "1",
                                "--output", str(output)]) == 0  # fmt: skip
    rows = json.loads(output.read_text())["rows"]
    assert [row["quantity"] for row in rows] == ["gram", "ADTS cosines (FlashVID)",
                                                 "DPC-kNN distances (PruneVid, FastVID)",
                                                 "cosine distances, whole video (DivPrune)"]  # fmt: skip
    assert all(row["path"] == "float32 (cast)" and 0 <= row["mean_error"] <= row["max_error"] < 1e-4 for row in rows)
    assert "cosine distances, whole video (DivPrune)" in capsys.readouterr().out
