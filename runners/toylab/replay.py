"""Replay the chain of training runs that a model folder's ``training.json`` records, oldest first.

    python -m runners.toylab.replay models/tiny_llava_onevision/training.json [--device cuda] [--run]

A record holds its run's ``command`` and, under ``init_from``, the record of the model that run started from; the
innermost one started from scratch. Each command is printed, or run in turn with ``--run``, as a command of
``runners.toylab.train``:

- a command recorded as ``python scripts/train_toy_model.py`` (the lab's entry point before it became this
  package) keeps its flags, which ``runners.toylab.train`` takes unchanged;
- ``--device`` becomes the one given;
- ``--init-from`` becomes the ``--output`` of the run before: a recorded run started from the folder the run
  before wrote, often after it had been copied to ``models/tiny_llava_onevision``, which now holds the last run.

Each run writes its own ``--output`` and checkpoint, so an interrupted replay continues where it stopped: a run
whose output folder already records its command is skipped, and an unfinished one resumes from its checkpoint.
Today's code runs every command; where a record's notes name another suite version or an older commit, its run
does not repeat the recorded one exactly (the notes are printed beside each command).
"""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
from pathlib import Path

from runners.toybench import SUITE_VERSION
from runners.toylab.train import ENTRY_POINT, MODULE, parse_args, recorded_command

FORMER_ENTRY_POINT = "python scripts/train_toy_model.py"
# what a record may say beside its command, and how the replay labels it
NOTES = {"suite": "suite", "held_out_note": "held out", "folder": "the next run started from"}


def chain(record: dict) -> list[dict]:
    """The records from the innermost ``init_from`` (the first run) out to ``record`` (the last)."""
    runs = []
    while record is not None:
        runs.append(record)
        record = record.get("init_from")
    return runs[::-1]


def recorded_arguments(command: str) -> list[str]:
    """The flags of a recorded command, after its entry point."""
    for entry_point in (ENTRY_POINT, FORMER_ENTRY_POINT):
        if command == entry_point or command.startswith(entry_point + " "):
            return shlex.split(command[len(entry_point) :])
    raise ValueError(f"{command!r} is a command of neither {ENTRY_POINT!r} nor {FORMER_ENTRY_POINT!r}")


def with_value(arguments: list[str], flag: str, value: str) -> list[str]:
    """``arguments`` with ``flag``'s value replaced by ``value``, or ``flag value`` appended where it is absent."""
    if flag not in arguments:
        return [*arguments, flag, value]
    at = arguments.index(flag) + 1
    return [*arguments[:at], value, *arguments[at + 1 :]]


def replayed(record: dict, device: str | None = None) -> list[list[str]]:
    """The arguments of ``runners.toylab.train`` for each run of ``record``'s chain, oldest first."""
    runs, previous_output = [], None
    for number, run in enumerate(chain(record), 1):
        arguments = recorded_arguments(run["command"])
        if previous_output is not None:
            if "--init-from" not in arguments:
                raise ValueError(f"run {number} records the model it started from, but its command has no "
                                 f"--init-from: {run['command']!r}")  # fmt: skip
            arguments = with_value(arguments, "--init-from", previous_output)
        if device is not None:
            arguments = with_value(arguments, "--device", device)
        previous_output = str(parse_args(arguments).output)
        runs.append(arguments)
    return runs


def finished(arguments: list[str]) -> bool:
    """Whether the run's output folder already holds a model that this command wrote."""
    written = parse_args(arguments).output / "training.json"
    return written.is_file() and json.loads(written.read_text()).get("command") == recorded_command(arguments)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("record", type=Path, help="a training.json that runners.toylab.train wrote")
    parser.add_argument("--device", help="the device of every run (default: the recorded one)")
    parser.add_argument("--run", action="store_true", help="run the commands in turn (default: print them)")
    args = parser.parse_args(argv)
    record = json.loads(args.record.read_text())
    runs = replayed(record, args.device)
    print(
        f"# {len(runs)} runs recorded in {args.record}, oldest first, as commands of {ENTRY_POINT}: recorded "
        f"{FORMER_ENTRY_POINT} commands keep their flags; --init-from is the previous run's --output"
    )
    print(f"# today's code writes train splits of suite version {SUITE_VERSION}: a run recorded on another suite "
          "version or with an older script (its notes) gives other numbers than those recorded")  # fmt: skip
    for number, (run, arguments) in enumerate(zip(chain(record), runs, strict=True), 1):
        held_out = ", ".join(f"{name} {value:.1f}" for name, value in run.get("held_out_accuracy", {}).items())
        print(f"# run {number} of {len(runs)}; recorded held-out accuracy: {held_out}")
        for note, label in NOTES.items():
            if note in run:
                print(f"#   {label}: {run[note]}")
        print(f"{ENTRY_POINT} {shlex.join(arguments)}")
        if not args.run:
            continue
        if finished(arguments):
            print(f"# run {number}: {parse_args(arguments).output} already holds it, skipped")
            continue
        subprocess.run([sys.executable, "-m", MODULE, *arguments], check=True)


if __name__ == "__main__":
    main()
