"""What a training video may meet on its way to the language model: tokens dropped (at random or where they repeat
the previous frame), needles whose tokens are hidden (``hidden_needles``), a decoy needle without tokens
(``with_decoy``); and the two reducers that apply them (``TemporalDuplicates``, ``DropTokens``)."""

from __future__ import annotations

import tempfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from baselines.random_drop import RandomDrop
from runners.toybench.benchmarks import Question, spot
from runners.toybench.render import COLORS, SHAPES, draw, read_video, write_video
from runners.toylab.masks import shape_tokens
from runners.toylab.model import TOKEN_GRID
from sttm.api import Reducer, Reduction, Stage, VideoTokens, check_budget, keep_subset

REENCODING_NOISE_LEVEL = 8  # H.264 a second time moves the pixels away from a new shape by up to 7 levels


def hidden_needles(
    question: Question, frames: np.ndarray, rng: np.random.Generator
) -> tuple[Question, torch.Tensor] | None:
    """A VNBench counting question about n needles with the tokens (``shape_tokens``) of all but k of them
    removed, k drawn uniformly from 1 to n: the question whose answer is k, and the removed tokens ([T, H, W]
    bool). As every count from 1 to n is as likely, only the needles' own tokens tell it: removing an object's
    tokens means removing the object, which a vision tower that spreads the object over its frame defeats. None
    where nothing is removed (k = n) and for another question."""
    if question.task_type != "cnt":
        return None
    tokens = shape_tokens(frames)
    needle_frames = np.flatnonzero(tokens.flatten(1).any(1).numpy())
    if str(len(needle_frames)) != question.correct:
        return None
    kept = int(rng.integers(1, len(needle_frames) + 1))
    hidden = rng.choice(needle_frames, size=len(needle_frames) - kept, replace=False)
    if not len(hidden):
        return None
    removed = torch.zeros_like(tokens)
    removed[hidden] = tokens[hidden]
    options = [question.correct, *question.wrong]
    wrong = [option for option in options if option != str(kept)]
    return Question(question.text, str(kept), wrong, question.task_type, question.tries), removed


def with_decoy(
    question: Question, frames: np.ndarray, rng: np.random.Generator
) -> tuple[np.ndarray, torch.Tensor] | None:
    """A VNBench video with one needle more, which the language model does not get: ``frames`` with a shape of the
    question's kind drawn in a frame that holds none, and the decoy's tokens (``shape_tokens`` of that frame;
    [T, H, W] bool). The decoy's pixels come through H.264, as the generator writes videos: those that differ by
    more than a second encoding's noise after it (which darkens a whole decoded video a little) replace the
    decoded frame's. The answer stays: the decoy's colour is a wrong option's in retrieval, no ordered needle's in
    ordering, and in counting the counted needles' own. A model that reads a needle from its frame's other tokens
    takes the decoy for a needle; one that reads the needle's own tokens does not. None where every frame holds a
    shape."""
    empty = np.flatnonzero(~shape_tokens(frames).flatten(1).any(1).numpy())
    if not len(empty):
        return None
    shape = next(name for name in SHAPES if name in question.text)
    if question.task_type == "ret":
        color = question.wrong[int(rng.integers(len(question.wrong)))]
    elif question.task_type == "ord":
        color = str(rng.choice([name for name in COLORS if name not in question.correct.split(", ")]))
    else:
        color = next(name for name in COLORS if f" {name} " in question.text)
    at = int(rng.choice(empty))
    drawn = [draw(frame, shape, color, spot(rng)) if index == at else frame for index, frame in enumerate(frames)]
    with tempfile.TemporaryDirectory() as folder:
        write_video(drawn, Path(folder) / "decoy.mp4")
        encoded = read_video(Path(folder) / "decoy.mp4")[at]
    decoyed = frames.copy()
    decoy_pixels = np.abs(encoded.astype(np.int16) - frames[at]).max(-1) > REENCODING_NOISE_LEVEL
    decoyed[at][decoy_pixels] = encoded[decoy_pixels]
    removed = torch.zeros((len(frames), *TOKEN_GRID), dtype=torch.bool)
    removed[at] = shape_tokens(decoyed[at : at + 1])[0]
    return decoyed, removed


class DropTokens(Reducer):
    """Removes from the i-th video it reduces the tokens of ``dropped[i]`` ([T, H, W] bool) and keeps every other
    one."""

    stage = Stage.PRE_LLM
    query_aware = False
    budget = 1.0

    def __init__(self, dropped: Sequence[torch.Tensor]) -> None:
        self.dropped = iter(dropped)

    def reduce(self, video: VideoTokens) -> Reduction:
        dropped = next(self.dropped)
        if tuple(dropped.shape) != tuple(video.grid.shape[:3]):
            raise ValueError(f"mask of shape {tuple(dropped.shape)} for a grid of {tuple(video.grid.shape[:3])}")
        return keep_subset(video, torch.nonzero(~dropped.flatten()).flatten().to(video.grid.device))


class TemporalDuplicates(Reducer):
    """Keeps the ``budget`` share of a video's tokens least like the token at their place in the previous frame
    (cosine similarity; the first frame's come first): drops what repeats over time, as merging methods do."""

    stage = Stage.PRE_LLM
    query_aware = False

    def __init__(self, budget: float) -> None:
        self.budget = check_budget(budget)

    def reduce(self, video: VideoTokens) -> Reduction:
        _, height, width, _ = video.grid.shape
        similarity = torch.nn.functional.cosine_similarity(video.grid[1:], video.grid[:-1], dim=-1)
        similarity = torch.cat([similarity.new_full((1, height, width), -2.0), similarity]).flatten()
        count = max(1, round(self.budget * video.num_tokens))
        return keep_subset(video, similarity.topk(count, largest=False).indices.sort().values)


def dropping_reducer(
    rng: np.random.Generator, random_prob: float, temporal_prob: float, min_share: float, seed: int
) -> Reducer | None:
    """The reducer a training video meets before the language model: with ``random_prob`` random dropping, with
    ``temporal_prob`` :class:`TemporalDuplicates`, each keeping a share drawn from [``min_share``, 1); else none."""
    roll = rng.random()
    if roll >= random_prob + temporal_prob:
        return None
    share = rng.uniform(min_share, 1.0)
    return RandomDrop(share, seed) if roll < random_prob else TemporalDuplicates(share)
