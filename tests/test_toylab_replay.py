"""The replay of a model's recorded training runs: the committed model's chain, oldest first, as commands of
``runners.toylab.train``; nothing is trained here."""

from __future__ import annotations

import json
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from runners.toylab.replay import chain, main, recorded_arguments, replayed
from runners.toylab.train import ENTRY_POINT, MODULE, recorded_command

RECORD = Path(__file__).resolve().parents[1] / "models" / "tiny_llava_onevision" / "training.json"


def value(arguments: list[str], flag: str) -> str | None:
    return arguments[arguments.index(flag) + 1] if flag in arguments else None


def without(arguments: list[str], *flags: str) -> list[str]:
    kept, skip = [], False
    for argument in arguments:
        if skip:
            skip = False
        elif argument in flags:
            skip = True
        else:
            kept.append(argument)
    return kept


def test_the_committed_model_replays_its_eleven_runs_oldest_first_each_from_the_one_before():
    record = json.loads(RECORD.read_text())
    runs = replayed(record, device="cuda")

    assert [value(run, "--output") for run in runs] == [
        "outputs/tiny_big", "outputs/tiny_big2", "outputs/tiny_big3", "outputs/tiny_v2", "outputs/tiny_v3",
        "outputs/local1", "outputs/local2", "outputs/local3", "outputs/decoy3", "outputs/decoy4", "outputs/decoy5",
    ]  # fmt: skip
    assert value(runs[0], "--init-from") is None
    assert [value(run, "--init-from") for run in runs[1:]] == [value(run, "--output") for run in runs[:-1]]
    assert all(value(run, "--device") == "cuda" for run in runs)
    # the records, innermost first: each replayed command is its recorded one but for the model it starts from
    records, outermost = [], record
    while outermost is not None:
        records.insert(0, outermost["command"])
        outermost = outermost.get("init_from")
    assert all(command.startswith("python scripts/train_toy_model.py ") for command in records)
    for run, command in zip(runs, records, strict=True):
        assert without(run, "--init-from") == without(shlex.split(command)[2:], "--init-from")


def test_a_device_given_replaces_the_recorded_one_and_the_other_flags_stay():
    record = json.loads(RECORD.read_text())
    on_cpu, as_recorded = replayed(record, device="cpu"), replayed(record)
    assert all(value(run, "--device") == "cpu" for run in on_cpu)
    assert [without(run, "--device") for run in on_cpu] == [without(run, "--device") for run in as_recorded]
    assert [value(run, "--device") for run in as_recorded] == ["cuda"] * len(chain(record))


def test_commands_of_another_program_or_without_the_model_they_started_from_are_refused():
    with pytest.raises(ValueError, match="neither"):
        recorded_arguments("python scripts/other.py --steps 1")
    inconsistent = {
        "command": "python scripts/train_toy_model.py --output b",
        "init_from": {"command": f"{ENTRY_POINT}"},
    }
    with pytest.raises(ValueError, match="no --init-from"):
        replayed(inconsistent)


def test_the_printed_commands_are_the_new_entry_point_and_only_unfinished_runs_run(tmp_path, capsys, monkeypatch):
    first = ["--steps", "1", "--output", str(tmp_path / "a"), "--checkpoint", str(tmp_path / "a.pt")]
    second = ["--steps", "2", "--init-from", "elsewhere", "--output", str(tmp_path / "b")]
    record = {
        "command": "python scripts/train_toy_model.py " + shlex.join(second),
        "init_from": {"command": recorded_command(first)},
    }
    (tmp_path / "record.json").write_text(json.dumps(record))
    expected = [first, [*second[:3], str(tmp_path / "a"), *second[4:]]]
    (tmp_path / "a").mkdir()  # the first run finished: its folder records its command
    (tmp_path / "a" / "training.json").write_text(json.dumps({"command": recorded_command(first)}))
    started = []
    monkeypatch.setattr(subprocess, "run", lambda command, check: started.append(command))

    main([str(tmp_path / "record.json"), "--run"])

    lines = capsys.readouterr().out.splitlines()
    assert [line for line in lines if not line.startswith("#")] == [recorded_command(run) for run in expected]
    assert "python scripts/train_toy_model.py" in lines[0]  # says which entry point the records name
    assert sum("skipped" in line for line in lines) == 1
    assert started == [[sys.executable, "-m", MODULE, *expected[1]]]
