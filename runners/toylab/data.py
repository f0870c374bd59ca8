"""The lab's data: the train split of the six synthetic benchmarks, clips of its videos, the batches a step trains
on and the order of the steps.

The train split comes from the benchmarks' own generators with the train seed (``runners.toybench``: videos from
seed 1000, the test split's from 0), written as mp4 and decoded by ``read_frames`` with the model config's fps and
frame cap, so that training sees the frames evaluation sees (H.264 changes them by up to ~100 levels at shape
edges). The prompt is the one lmms-eval sends (``runners.tasks.local.doc_to_text`` in the processor's chat
template). A step runs one video's prefix (chat header and visual tokens) once; each of its questions, with the
right option at ``--positions`` different letters, continues from a copy of the prefix's cache. The data order
depends only on the seed and the step.
"""

from __future__ import annotations

import json
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from runners.tasks.local import doc_to_text
from runners.tasks.multiple_choice import extract_answer_letter
from runners.toybench import LETTERS, generate_split, is_current, lettered
from runners.toybench.benchmarks import BENCHMARKS, Question
from runners.toylab.augmentations import hidden_needles, with_decoy
from runners.toylab.masks import changed_patches, changed_pixels
from runners.toylab.model import PATCH_GRID, TOKEN_GRID
from sttm.adapters.loading import video_question_prompt
from sttm.adapters.video import read_frames

# Frames that keep every answer of a benchmark's questions: its generator starts each event on this stride.
CLIP_STRIDES = {
    "toy_mlvu": slice(0, None, 3),
    "toy_longvideobench": slice(0, None, 4),
    "toy_nextqa": slice(1, None, 2),
    "toy_egoschema": slice(0, None, 2),
    "toy_videomme": slice(0, None, 4),
}
NEEDLE_CLIP_FRAMES = 8
CHANGED_FRACTION = 0.005  # a needle changes ~1.7% of the pixels; H.264 noise far less


@dataclass(frozen=True)
class Video:
    path: str
    questions: tuple[Question, ...]


def read_split(jsonl: Path) -> list[Video]:
    """The split's videos in order, each with its distinct questions (VNBench's four tries are one question).
    Videos are looked up beside the JSONL, so that the split may move."""
    questions: dict[str, dict[str, Question]] = {}
    for row in map(json.loads, jsonl.open()):
        options = [option.split(". ", 1)[1] for option in row["options"]]
        correct = options[LETTERS.index(row["answer"])]
        wrong = sorted(text for text in options if text != correct)
        video = str(jsonl.parent / "videos" / Path(row["video"]).name)
        questions.setdefault(video, {})[row["question"]] = Question(row["question"], correct, wrong, row["task_type"])
    return [Video(path, tuple(by_text.values())) for path, by_text in questions.items()]


def train_split(root: Path, videos_per_benchmark: int, workers: int = 1) -> dict[str, list[Video]]:
    """Each benchmark's train split under ``root``, generated where it is missing, out of date or of another size
    (by up to ``workers`` processes, one benchmark each)."""
    missing = [
        name for name in BENCHMARKS
        if not is_current(root / name / "train.jsonl")
        or len(read_split(root / name / "train.jsonl")) != videos_per_benchmark
    ]  # fmt: skip
    with ProcessPoolExecutor(max(1, min(workers, len(missing)))) as pool:
        list(pool.map(generate_split, missing, ["train"] * len(missing), [root] * len(missing),
                      [0] * len(missing), [videos_per_benchmark] * len(missing)))  # fmt: skip
    return {name: read_split(root / name / "train.jsonl") for name in BENCHMARKS}


def clip(benchmark: str, frames: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """The frames the benchmark's answers depend on (see ``CLIP_STRIDES``); VNBench: its needle frames, padded
    with other frames to ``NEEDLE_CLIP_FRAMES``, in order."""
    if benchmark in CLIP_STRIDES:
        return frames[CLIP_STRIDES[benchmark]]
    changed = changed_pixels(frames).mean((1, 2))
    differs = np.concatenate([[True], changed > CHANGED_FRACTION, [True]])
    needles = np.flatnonzero(differs[:-1] & differs[1:])
    others = np.setdiff1d(np.arange(len(frames)), needles)
    filler = rng.choice(others, size=max(NEEDLE_CLIP_FRAMES - len(needles), 0), replace=False)
    return frames[np.sort(np.concatenate([needles, filler]))]


@dataclass
class Batch:
    """Rows that continue prefixes (the chat header and the visual tokens of one video each, all of one length):
    each prefix runs once and row i continues prefix ``row_prefix[i]``. ``targets`` marks the tokens the loss is
    taken on (the answer and the end of the turn), ``answers`` the answer's tokens (option text and letter),
    ``letter_positions`` where each row's letter is, ``changed_patches`` ([videos, T, H, W]) which patches of
    each prefix's video change from the frame before and ``removed_tokens`` ([videos, T, H', W'] on the token
    grid) which of its visual tokens the language model does not get (``hidden_needles``, ``with_decoy``)."""

    prefix_ids: torch.Tensor
    pixel_values_videos: torch.Tensor
    suffix_ids: torch.Tensor
    suffix_mask: torch.Tensor
    targets: torch.Tensor
    answers: torch.Tensor
    letter_positions: torch.Tensor
    row_prefix: torch.Tensor
    changed_patches: torch.Tensor
    removed_tokens: torch.Tensor

    def to(self, device: str) -> Batch:
        for name, value in vars(self).items():
            setattr(self, name, value.to(device))
        return self


class Prompts:
    """Prompts and tokens, exactly as ``runners.lmms_model`` builds them."""

    def __init__(self, processor, target_fps: float, max_frames: int) -> None:
        self.processor, self.target_fps, self.max_frames = processor, target_fps, max_frames
        self.tokenizer = processor.tokenizer
        self.video_token_id = self.tokenizer.convert_tokens_to_ids("<video>")
        self.end_of_turn = self.tokenizer.convert_tokens_to_ids("<|im_end|>")

    def chat(self, question: str, options: list[str]) -> str:
        return video_question_prompt(self.processor, doc_to_text({"question": question, "options": options}))

    def frames(self, video: Video) -> np.ndarray:
        return read_frames(video.path, self.target_fps, self.max_frames).frames

    def batch(
        self, rows: list[tuple[Question, list[str], str]], frames: np.ndarray, removed: torch.Tensor | None = None
    ) -> Batch:
        """Rows of (question, lettered options, right letter) about ``frames``, answered "<option text> <letter>",
        without the visual tokens ``removed`` marks ([T, H, W] bool on the token grid; none by default)."""
        inputs = self.processor(text=self.chat(rows[0][0].text, rows[0][1]), videos=[frames], return_tensors="pt")
        if removed is None:
            removed = torch.zeros((len(frames), *TOKEN_GRID), dtype=torch.bool)
        last_visual = int(torch.nonzero(inputs["input_ids"][0] == self.video_token_id).max())
        suffixes, answers, letter_positions = [], [], []
        for question, options, letter in rows:
            prompt = self.chat(question.text, options).split("<video>", 1)[1]
            prompt_ids = self.tokenizer(prompt, add_special_tokens=False)["input_ids"]
            answer_ids = self.tokenizer(f"{question.correct} {letter}", add_special_tokens=False)["input_ids"]
            suffixes.append(prompt_ids + answer_ids + [self.end_of_turn])
            answers.append([False] * len(prompt_ids) + [True] * len(answer_ids))
            letter_positions.append(len(prompt_ids) + len(answer_ids) - 1)
        width = max(map(len, suffixes))

        def padded(rows_of_values: list[list], fill) -> torch.Tensor:
            return torch.tensor([values + [fill] * (width - len(values)) for values in rows_of_values])

        return Batch(
            prefix_ids=inputs["input_ids"][:, : last_visual + 1],
            pixel_values_videos=inputs["pixel_values_videos"],
            suffix_ids=padded(suffixes, self.tokenizer.pad_token_id),
            suffix_mask=padded([[1] * len(ids) for ids in suffixes], 0),
            targets=padded([flags + [True] for flags in answers], False),
            answers=padded(answers, False),
            letter_positions=torch.tensor(letter_positions),
            row_prefix=torch.zeros(len(rows), dtype=torch.long),
            changed_patches=changed_patches(frames, PATCH_GRID)[None],
            removed_tokens=removed[None],
        )

    def answer(self, model, frames: np.ndarray, question: str, options: list[str], max_new_tokens: int) -> str:
        """The option letter that greedy generation gives, as the lmms-eval task extracts it."""
        inputs = self.processor(text=self.chat(question, options), videos=[frames], return_tensors="pt")
        output = model.generate(**inputs.to(model.device), max_new_tokens=max_new_tokens, do_sample=False)
        reply = self.processor.decode(output[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True)
        return extract_answer_letter(reply, LETTERS[: len(options)])


def question_rows(
    questions: tuple[Question, ...], positions: int, rng: np.random.Generator
) -> list[tuple[Question, list[str], str]]:
    """Each question ``positions`` times, its right option at as many different letters."""
    return [
        (question, *lettered(question, int(position), rng))
        for question in questions
        for position in rng.permutation(len(question.wrong) + 1)[:positions]
    ]


def stacked(batches: list[Batch]) -> list[Batch]:
    """The batches of equal prefix length merged into one each (rows padded to the widest suffix)."""
    by_length: dict[int, list[Batch]] = {}
    for batch in batches:
        by_length.setdefault(batch.prefix_ids.shape[1], []).append(batch)
    return [merged(group) for group in by_length.values()]


def merged(group: list[Batch]) -> Batch:
    width = max(batch.suffix_ids.shape[1] for batch in group)

    def rows(name: str) -> torch.Tensor:
        values = [getattr(batch, name) for batch in group]
        return torch.cat([torch.nn.functional.pad(value, (0, width - value.shape[1])) for value in values])

    return Batch(
        prefix_ids=torch.cat([batch.prefix_ids for batch in group]),
        pixel_values_videos=torch.cat([batch.pixel_values_videos for batch in group]),
        suffix_ids=rows("suffix_ids"), suffix_mask=rows("suffix_mask"), targets=rows("targets"),
        answers=rows("answers"), letter_positions=torch.cat([batch.letter_positions for batch in group]),
        row_prefix=torch.cat([torch.full_like(batch.row_prefix, i) for i, batch in enumerate(group)]),
        changed_patches=torch.cat([batch.changed_patches for batch in group]),
        removed_tokens=torch.cat([batch.removed_tokens for batch in group]),
    )  # fmt: skip


def step_schedule(weights: dict[str, int]) -> list[str]:
    """One cycle of steps: each benchmark ``weights[name]`` times, spread over the cycle."""
    slots = [(turn / weight, index, name) for index, (name, weight) in enumerate(weights.items())
             for turn in range(weight)]  # fmt: skip
    return [name for *_, name in sorted(slots)]


def scheduled(schedule: list[str], step: int) -> tuple[str, int]:
    """The benchmark that ``step`` trains on, and how many earlier steps trained on it."""
    cycle, slot = divmod(step, len(schedule))
    name = schedule[slot]
    return name, cycle * schedule.count(name) + schedule[:slot].count(name)


class TrainingSteps(torch.utils.data.Dataset):
    """The batches of each step (``num_workers`` > 0 prepares the next ones while the model trains): benchmarks in
    the turns of ``schedule`` (a cycle of benchmark names), ``videos_per_step`` of one benchmark's training videos
    a step, in a fresh order every pass, cut to clips for the first ``clip_steps``; with ``hide_needles_prob``, a
    VNBench counting video loses some of its needles' tokens and the answer counts those left (``hidden_needles``);
    with ``decoy_prob``, a VNBench video that hides none gains a needle whose tokens it hides (``with_decoy``)."""

    def __init__(
        self, splits: dict[str, list[Video]], held_out: int, seed: int, prompts: Prompts, clip_steps: int,
        positions: int, videos_per_step: int, schedule: list[str], hide_needles_prob: float = 0.0,
        decoy_prob: float = 0.0,
    ) -> None:  # fmt: skip
        self.splits, self.held_out, self.seed, self.prompts = splits, held_out, seed, prompts
        self.clip_steps, self.positions, self.names = clip_steps, positions, list(splits)
        self.videos_per_step, self.schedule, self.hide_needles_prob = videos_per_step, schedule, hide_needles_prob
        self.decoy_prob = decoy_prob

    def __getitem__(self, step: int) -> tuple[str, str, list[Batch]]:
        name, turn = scheduled(self.schedule, step)
        training = self.splits[name][: len(self.splits[name]) - self.held_out]
        stage = "clip" if step < self.clip_steps else "video"
        rng = np.random.default_rng([self.seed, step])
        batches = []
        for seen in range(turn * self.videos_per_step, (turn + 1) * self.videos_per_step):
            order = np.random.default_rng([self.seed, self.names.index(name), seen // len(training)])
            video = training[order.permutation(len(training))[seen % len(training)]]
            frames = self.prompts.frames(video)
            if stage == "clip":
                frames = clip(name, frames, rng)
            questions, removed = video.questions, None
            if self.hide_needles_prob and len(questions) == 1 and rng.random() < self.hide_needles_prob:
                hidden = hidden_needles(questions[0], frames, rng)
                if hidden is not None:
                    question, removed = hidden
                    questions = (question,)
            if removed is None and name == "toy_vnbench" and self.decoy_prob and rng.random() < self.decoy_prob:
                decoy = with_decoy(questions[0], frames, rng)
                if decoy is not None:
                    frames, removed = decoy
            batches.append(self.prompts.batch(question_rows(questions, self.positions, rng), frames, removed))
        return stage, name, stacked(batches)
