"""The offline benchmark suite: six synthetic video QA benchmarks written as mp4 files and JSONL.

    python -m runners.toybench OUT_DIR [--seed 0] [--train-videos 4]

Writes ``OUT_DIR/<benchmark>/{test,train}.jsonl``, ``OUT_DIR/<benchmark>/videos/*.mp4`` and the lmms-eval
task ``OUT_DIR/<benchmark>/<benchmark>.yaml`` (load it with ``TaskManager(include_path=OUT_DIR)``). Video paths
in the JSONL are absolute: the data belongs to the machine that generated it. The train split comes from the
same generators with another seed. Re-running skips splits that are complete and were written by this
``SUITE_VERSION`` of the generators (each row records the version that wrote it). Generation holds a lock on
``OUT_DIR`` (``OUT_DIR/.generate.lock``), so that runs sharing the folder write it once, one after another.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from tqdm import tqdm

from runners.files import locked, write_atomically
from runners.tasks.local import write_local_task
from runners.tasks.multiple_choice import LETTERS as OPTION_LETTERS
from runners.toybench.benchmarks import BENCHMARKS, Question, videos
from runners.toybench.render import write_video

MAX_OPTIONS = 5  # the most options a toy question has
LETTERS = OPTION_LETTERS[:MAX_OPTIONS]
SPLIT_SEEDS = {"test": 0, "train": 1_000}
# 2: no question asks for a shape; 3: LongVideoBench refers to a stretch by a white ball shown in it
SUITE_VERSION = 3


def lettered(question: Question, answer_position: int, rng: np.random.Generator) -> tuple[list[str], str]:
    """Options as "A. …" lines with the right one at ``answer_position``, and its letter."""
    if len(question.wrong) + 1 > MAX_OPTIONS:
        raise ValueError(
            f"a toy question has at most {MAX_OPTIONS} options, got {len(question.wrong) + 1}: {question.text!r}"
        )
    options = [question.wrong[i] for i in rng.permutation(len(question.wrong))]
    options.insert(answer_position, question.correct)
    return [f"{LETTERS[i]}. {text}" for i, text in enumerate(options)], LETTERS[answer_position]


def generate_split(name: str, split: str, out: Path, seed: int, count: int) -> Path:
    """Write one split of one benchmark; return its JSONL path."""
    folder = out / name
    jsonl = folder / f"{split}.jsonl"
    rng = np.random.default_rng([seed, 7])
    asked = 0
    rows = []
    progress = tqdm(videos(name, seed + SPLIT_SEEDS[split], count), total=count, desc=f"{name} {split}", leave=False)
    for index, (frames, questions) in enumerate(progress):
        video_id = f"{split}{index:04d}"
        write_video(frames, folder / "videos" / f"{video_id}.mp4")
        for number, question in enumerate(questions):
            for attempt in range(question.tries):
                options, answer = lettered(question, asked % (len(question.wrong) + 1), rng)
                asked += 1
                rows.append(
                    {
                        "question_id": f"{name}_{video_id}_q{number}_try{attempt}",
                        "videoID": video_id,
                        "video": str((folder / "videos" / f"{video_id}.mp4").resolve()),
                        "question": question.text,
                        "options": options,
                        "answer": answer,
                        "task_type": question.task_type,
                        "try": attempt,
                        "split": split,
                        "suite_version": SUITE_VERSION,
                    }
                )
    write_atomically(jsonl, "".join(json.dumps(row) + "\n" for row in rows))
    return jsonl


def is_current(jsonl: Path) -> bool:
    """Whether a split's JSONL exists and was written by this version of the generators."""
    if not jsonl.is_file():
        return False
    with jsonl.open() as rows:
        first = rows.readline()
    return bool(first) and json.loads(first).get("suite_version") == SUITE_VERSION


def write_task_yaml(name: str, out: Path) -> Path:
    """The lmms-eval task of benchmark ``name`` over its test split."""
    return write_local_task(name, out / name / "test.jsonl", vnbench_scoring=name == "toy_vnbench")


def generate(
    out: Path,
    seed: int = 0,
    train_factor: int = 4,
    splits: tuple[str, ...] = ("test", "train"),
    names: list[str] | None = None,
) -> list[Path]:
    """Every benchmark's (or the ``names`` given) splits under ``out`` (a complete, current split is left as it
    is), under the folder's lock."""
    written = []
    with locked(out / ".generate.lock"):
        for name, (_, test_videos) in BENCHMARKS.items():
            if names is not None and name not in names:
                continue
            for split in splits:
                jsonl = out / name / f"{split}.jsonl"
                if not is_current(jsonl):
                    count = test_videos * (train_factor if split == "train" else 1)
                    generate_split(name, split, out, seed, count)
                written.append(jsonl)
            if "test" in splits:
                write_task_yaml(name, out)
    return written
