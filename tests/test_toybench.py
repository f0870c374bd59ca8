"""The synthetic benchmarks: sizes, balance, determinism, decodable videos, answers the pixels support."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from runners.toybench import MAX_OPTIONS, SUITE_VERSION, generate, generate_split, is_current, lettered
from runners.toybench.benchmarks import BENCHMARKS, Question
from runners.toybench.render import COLORS, SHAPES, SIZE, read_video

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def suite(tmp_path_factory):
    out = tmp_path_factory.mktemp("toybench")
    generate(out, train_factor=0, splits=("test",))
    return {name: [json.loads(line) for line in (out / name / "test.jsonl").open()] for name in BENCHMARKS}, out


def test_every_benchmark_has_100_to_200_questions_with_balanced_answers(suite):
    docs, _ = suite
    for name, rows in docs.items():
        assert 100 <= len(rows) <= 200, name
        letters = Counter(row["answer"] for row in rows)
        assert max(letters.values()) - min(letters.values()) <= 1, (name, letters)
        assert len(letters) == len(rows[0]["options"]), name
        assert all(row["options"][ord(row["answer"]) - 65].startswith(row["answer"] + ". ") for row in rows)


def test_vnbench_asks_each_question_four_times_with_options_reordered(suite):
    docs, _ = suite
    by_video = {}
    for row in docs["toy_vnbench"]:
        by_video.setdefault(row["videoID"], []).append(row)
    for rows in by_video.values():
        assert [r["try"] for r in rows] == [0, 1, 2, 3]
        assert len({r["answer"] for r in rows}) == 4  # the right answer moves through A..D


def test_videos_decode_at_the_model_resolution(suite):
    docs, out = suite
    for name, rows in docs.items():
        frames = read_video(out / name / rows[0]["video"])
        assert frames.shape[1:] == (SIZE, SIZE, 3) and len(frames) in (16, 24, 32)


def colors_in(frames: np.ndarray) -> set[str]:
    """Object colours present on at least 50 pixels of some frame."""
    present = set()
    for name, rgb in COLORS.items():
        close = (np.abs(frames.astype(int) - rgb).sum(-1) < 40).sum(axis=(1, 2))
        if close.max() >= 50:
            present.add(name)
    return present


def colors_per_frame(frames: np.ndarray) -> list[set[str]]:
    return [colors_in(frame[None]) for frame in frames]


def answer_text(row: dict) -> str:
    return row["options"][ord(row["answer"]) - 65].split(". ", 1)[1]


def option_texts(row: dict) -> list[str]:
    return [option.split(". ", 1)[1] for option in row["options"]]


def test_no_question_asks_which_shape_an_object_had(suite):
    docs, _ = suite
    for name, rows in docs.items():
        if name != "toy_nextqa":  # its events ("it turned into a square") happen to one object in one place
            assert not any(set(option_texts(row)) & set(SHAPES) for row in rows), name


def test_the_first_colour_of_a_long_video_is_the_one_its_earliest_event_shows(suite):
    docs, out = suite
    rows = [row for row in docs["toy_mlvu"] if row["task_type"] == "order"][:15]
    for row in rows:
        shown = [colors for colors in colors_per_frame(read_video(out / "toy_mlvu" / row["video"])) if colors]
        assert shown[0] == {answer_text(row)}, row["question_id"]


def test_video_mme_absent_and_following_colours_match_the_pixels(suite):
    docs, out = suite
    for row in docs["toy_videomme"][:30]:
        per_frame = colors_per_frame(read_video(out / "toy_videomme" / row["video"]))
        order = list(dict.fromkeys(color for colors in per_frame for color in sorted(colors)))
        answer = answer_text(row)
        if row["task_type"] == "absence":
            assert answer not in order and set(option_texts(row)) - {answer} <= set(order), row["question_id"]
        elif row["task_type"] == "sequence":
            named = row["question"].removesuffix("?").split()[-1]
            assert order[order.index(named) + 1] == answer, row["question_id"]


def test_the_square_has_the_answer_colour_while_the_white_ball_shows_and_other_colours_elsewhere(suite):
    docs, out = suite
    for row in docs["toy_longvideobench"][:20]:
        frames = read_video(out / "toy_longvideobench" / row["video"])
        per_frame = colors_per_frame(frames)
        with_ball = [colors - {"white"} for colors in per_frame if "white" in colors]
        assert 1 <= len(with_ball) < len(frames) / 4, row["question_id"]  # within one of the four stretches
        assert all(colors == {answer_text(row)} for colors in with_ball), row["question_id"]
        without_ball = set().union(*(colors for colors in per_frame if "white" not in colors))
        assert without_ball == set(option_texts(row)), row["question_id"]  # every option is the square's once


def test_a_retrieval_needle_is_in_the_video_and_its_distractors_are_not(suite):
    docs, out = suite
    retrieval = [r for r in docs["toy_vnbench"] if r["task_type"] == "ret" and r["try"] == 0]
    assert retrieval
    for row in retrieval:
        present = colors_in(read_video(out / "toy_vnbench" / row["video"]))
        assert {c for c in option_texts(row) if c in present} == {answer_text(row)}


def test_the_camera_moves_only_when_the_answer_says_so(suite):
    docs, out = suite
    for row in docs["toy_egoschema"][:20]:
        frames = read_video(out / "toy_egoschema" / row["video"]).astype(int)
        change = np.abs(np.diff(frames, axis=0)).mean()
        assert (change < 1.0) == (answer_text(row) == "it did not move"), (row["question_id"], change)


def test_the_same_seed_gives_the_same_benchmark(tmp_path):
    first = generate_split("toy_videomme", "test", tmp_path / "a", seed=3, count=2)
    second = generate_split("toy_videomme", "test", tmp_path / "b", seed=3, count=2)
    other = generate_split("toy_videomme", "test", tmp_path / "c", seed=4, count=2)
    assert first.read_text().replace(str(tmp_path / "a"), "") == second.read_text().replace(str(tmp_path / "b"), "")
    assert first.read_text().replace(str(tmp_path / "a"), "") != other.read_text().replace(str(tmp_path / "c"), "")
    video = json.loads(first.read_text().splitlines()[0])["video"]
    assert np.array_equal(read_video(first.parent / video), read_video(second.parent / video))


def test_train_split_differs_from_test(tmp_path):
    test = generate_split("toy_nextqa", "test", tmp_path, seed=0, count=3)
    train = generate_split("toy_nextqa", "train", tmp_path, seed=0, count=3)
    assert not np.array_equal(
        read_video(tmp_path / "toy_nextqa" / "videos" / "test0000.mp4"),
        read_video(tmp_path / "toy_nextqa" / "videos" / "train0000.mp4"),
    )
    assert test.name == "test.jsonl" and train.name == "train.jsonl"


def test_a_split_written_by_another_version_of_the_generators_is_written_again(tmp_path):
    jsonl = generate_split("toy_nextqa", "test", tmp_path, seed=0, count=2)
    assert is_current(jsonl)
    rows = [json.loads(line) for line in jsonl.read_text().splitlines()]
    jsonl.write_text("".join(json.dumps(row | {"suite_version": SUITE_VERSION - 1}) + "\n" for row in rows))
    assert not is_current(jsonl)
    generate(tmp_path, train_factor=0, splits=("test",), names=["toy_nextqa"])
    assert is_current(jsonl) and len(jsonl.read_text().splitlines()) == 140


def test_options_are_lettered_from_a_up_to_the_most_a_question_has():
    rng = np.random.default_rng(0)
    question = Question("Which color?", "red", ["blue", "green", "cyan", "plum"], "ret")
    options, answer = lettered(question, 4, rng)
    assert [line[:3] for line in options] == ["A. ", "B. ", "C. ", "D. ", "E. "] and answer == "E"
    assert options[4] == "E. red"
    too_many = Question("Which color?", "red", ["blue"] * MAX_OPTIONS, "ret")
    with pytest.raises(ValueError, match=f"at most {MAX_OPTIONS} options, got {MAX_OPTIONS + 1}"):
        lettered(too_many, 0, rng)


def test_two_first_time_runs_sharing_the_data_folder_write_it_once_between_them(tmp_path):
    script = (
        "import sys, time; from pathlib import Path; from runners.toybench import generate\n"
        "Path(sys.argv[2]).touch()\n"
        "while not (Path(sys.argv[1]).parent / 'go').exists(): time.sleep(0.01)  # both start at once\n"
        "generate(Path(sys.argv[1]), splits=('test',), names=['toy_vnbench'])"
    )
    ready = [tmp_path / f"ready{number}" for number in range(2)]
    runs = [subprocess.Popen([sys.executable, "-c", script, str(tmp_path / "data"), str(flag)], cwd=ROOT,
                             stderr=subprocess.PIPE, text=True) for flag in ready]  # fmt: skip
    while not all(flag.exists() for flag in ready) and all(run.poll() is None for run in runs):
        time.sleep(0.01)
    (tmp_path / "go").touch()
    errors = [run.communicate(timeout=600)[1] for run in runs]
    assert [run.returncode for run in runs] == [0, 0], [error[-2000:] for error in errors]
    folder = tmp_path / "data" / "toy_vnbench"
    rows = [json.loads(line) for line in (folder / "test.jsonl").open()]
    assert {row["video"] for row in rows} == {str(path) for path in (folder / "videos").iterdir()}  # no temporary
    assert all(len(read_video(Path(row["video"]))) > 0 for row in rows[:: len(rows) // 4])
