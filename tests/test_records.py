"""Answers of data-parallel processes: one file per rank, read back as one, written into the cell's records.jsonl
without loss or duplicates; files written whole or not at all."""

from __future__ import annotations

import errno
import json
import math
import os

import pytest

from runners.files import replacing, write_atomically
from runners.records import QuestionRecord, answers_file, append_answer, read_records, write_records


def record(doc_id: int, prediction: str = "A") -> QuestionRecord:
    return QuestionRecord(task="t", doc_id=doc_id, correct=None, prediction=prediction, answer="A",
                          visual_tokens_before=10, visual_tokens_after=5)  # fmt: skip


def test_each_rank_appends_to_its_own_file_and_reading_sees_all(tmp_path):
    for doc_id in range(6):
        append_answer(tmp_path, record(doc_id), rank=doc_id % 2)
    assert answers_file(tmp_path, 1).name == "answers.rank1.jsonl" and answers_file(tmp_path, 1).is_file()
    assert not (tmp_path / "records.jsonl").exists()  # the runner's to write
    assert sorted(row["doc_id"] for row in read_records(tmp_path)) == list(range(6))


def test_merging_keeps_every_question_once_and_removes_the_rank_files(tmp_path):
    for doc_id in range(4):
        append_answer(tmp_path, record(doc_id), rank=doc_id % 2)
    rows = [row | {"correct": True} for row in read_records(tmp_path)]
    write_records(tmp_path, rows)
    assert not list(tmp_path.glob("answers.rank*.jsonl"))
    merged = read_records(tmp_path)
    assert sorted(row["doc_id"] for row in merged) == [0, 1, 2, 3] and all(row["correct"] for row in merged)


def test_the_merged_file_wins_over_a_rank_file_left_by_a_crash(tmp_path):
    append_answer(tmp_path, record(1, prediction="B"), rank=1)
    (tmp_path / "records.jsonl").write_text("")
    rows = [row | {"correct": False} for row in read_records(tmp_path)]
    write_records(tmp_path, rows)
    append_answer(tmp_path, record(1, prediction="B"), rank=1)  # as if the crash came before the rank file went
    assert read_records(tmp_path) == rows


def test_records_are_strict_json_with_times_not_measured_as_null_read_back_as_nan(tmp_path):
    append_answer(tmp_path, record(0))  # every time NaN: not measured
    line = answers_file(tmp_path).read_text()
    row = json.loads(line, parse_constant=lambda constant: pytest.fail(f"{constant} is not strict JSON"))
    assert row["reducer_ms"] is None and row["peak_memory_mb"] is None and row["achieved_ratio"] == 0.5
    (read,) = read_records(tmp_path)
    assert math.isnan(read["reducer_ms"]) and math.isnan(read["peak_memory_mb"])
    write_records(tmp_path, [read | {"correct": True}])
    assert json.loads((tmp_path / "records.jsonl").read_text())["vision_ms"] is None


def test_a_write_that_fails_leaves_the_old_file_and_no_temporary(tmp_path, monkeypatch):
    path = tmp_path / "cell.json"
    write_atomically(path, "old")

    def disk_full(descriptor):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", disk_full)
    with pytest.raises(OSError, match="No space left"):
        write_atomically(path, "new")
    assert path.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["cell.json"]


def test_two_writers_of_one_file_never_share_a_temporary(tmp_path):
    path = tmp_path / "video.mp4"
    with replacing(path) as first, replacing(path) as second:
        first.write_text("first")
        second.write_text("second")
        assert first != second and first.parent == second.parent == tmp_path
    assert path.read_text() == "first" and [p.name for p in tmp_path.iterdir()] == ["video.mp4"]  # the last renamed
