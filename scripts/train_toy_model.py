"""Train the tiny LLaVA-OneVision of the offline suite on the train split of the six synthetic benchmarks.

    python scripts/train_toy_model.py                  # CPU, writes models/tiny_llava_onevision
    python scripts/train_toy_model.py --device cuda

Data: the train split comes from the benchmarks' own generators with the train seed (``runners.toybench``: videos
from seed 1000, the test split's from 0), written as mp4 and decoded by ``read_frames`` with the model config's
fps and frame cap, so that training sees the frames evaluation sees (H.264 changes them by up to ~100 levels at
shape edges). The prompt is the one lmms-eval sends (``runners.tasks.local.doc_to_text`` in the processor's chat
template). The model answers with the right option's text, then its letter ("red , green , blue C"): the task
takes the first option letter of the reply. Finding the letter of a known answer among the options is wired into
the initial weights (``wire_option_lookup``): from scratch, a model this small learns it only after far more steps
than a CPU run allows, and learns nothing else meanwhile, as letters at chance give no signal.

Two stages, by step: ``--clip-steps`` on each video cut to the frames its questions depend on (each generator
starts its events on a fixed stride; VNBench's needles are the frames that differ from both neighbours), a
fraction of the tokens, then ``--steps`` on whole videos, as evaluation shows them.

A step runs one video's prefix (chat header and visual tokens) once; each of its questions, with the right option
at ``--positions`` different letters, continues from a copy of the prefix's cache. The data order depends only on
the seed and the step, so a run resumed from its checkpoint (written every ``--checkpoint-every`` steps)
continues as the uninterrupted run would. The model and the processor of ``sttm.adapters.tiny`` are written to
``--output`` by a rename, so the folder is never half-written.
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import scipy.optimize
import torch
from omegaconf import OmegaConf
from tqdm import tqdm
from transformers import LlavaOnevisionConfig, LlavaOnevisionForConditionalGeneration

from baselines.random_drop import RandomDrop
from runners.tasks.local import doc_to_text
from runners.tasks.multiple_choice import extract_answer_letter
from runners.toybench import LETTERS, generate_split, is_current, lettered
from runners.toybench.benchmarks import BENCHMARKS, DIRECTIONS, EFFECTS, Question, spot
from runners.toybench.render import BACKGROUNDS, COLORS, SHAPES, draw, read_video, write_video
from sttm.adapters.family import text_model, vision_encoder_layers
from sttm.adapters.loading import video_question_prompt
from sttm.adapters.points import reduction_point
from sttm.adapters.tiny import FRAME_SIZE, PATCH_SIZE, placeholder_token_ids, text_config, tiny_processor
from sttm.adapters.video import read_frames
from sttm.api import Reducer, Reduction, Stage, VideoTokens, check_budget, keep_subset

ROOT = Path(__file__).resolve().parents[1]
MODEL_CONFIG = ROOT / "configs" / "model" / "tiny_llava_onevision.yaml"
TEXT_MODEL = dict(hidden_size=192, intermediate_size=768, num_hidden_layers=8, num_attention_heads=4,
                  num_key_value_heads=4)  # fmt: skip
VISION_TOWER = dict(hidden_size=96, intermediate_size=384, num_hidden_layers=3, num_attention_heads=2)
IGNORE = -100
# Frames that keep every answer of a benchmark's questions: its generator starts each event on this stride.
CLIP_STRIDES = {
    "toy_mlvu": slice(0, None, 3),
    "toy_longvideobench": slice(0, None, 4),
    "toy_nextqa": slice(1, None, 2),
    "toy_egoschema": slice(0, None, 2),
    "toy_videomme": slice(0, None, 4),
}
NEEDLE_CLIP_FRAMES = 8
CHANGED_PIXEL_LEVEL, CHANGED_FRACTION = 60, 0.005  # a needle changes ~1.7% of the pixels; H.264 noise far less
REENCODING_NOISE_LEVEL = 8  # H.264 a second time moves the pixels away from a new shape by up to 7 levels
CUT_SHARE = 0.5  # a frame where this share of the patches changes is a cut to another scene, not a local change
# every shape colour has a channel above this level, no background colour has one
SHAPE_LEVEL = (max(map(max, BACKGROUNDS.values())) + min(map(max, COLORS.values()))) / 2
PATCH_GRID = (FRAME_SIZE // PATCH_SIZE,) * 2
TOKEN_GRID = (PATCH_GRID[0] // 2, PATCH_GRID[1] // 2)  # LLaVA-OneVision pools each frame's patch grid by 2


def toy_config(vision_feature_layer: int = -1) -> LlavaOnevisionConfig:
    """The tiny configuration of ``sttm.adapters.tiny`` with a wider and deeper language model and vision tower."""
    return LlavaOnevisionConfig(
        vision_config=dict(
            model_type="siglip_vision_model", image_size=FRAME_SIZE, patch_size=PATCH_SIZE, vision_use_head=False,
            **VISION_TOWER,
        ),
        text_config=text_config(model_type="qwen2") | TEXT_MODEL,
        vision_feature_layer=vision_feature_layer, vision_feature_select_strategy="full",
        image_grid_pinpoints=[[FRAME_SIZE, FRAME_SIZE]], **placeholder_token_ids("llava_onevision"),
    )  # fmt: skip


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


def changed_pixels(frames: np.ndarray) -> np.ndarray:
    """[T − 1, H, W] bool: the pixels of each frame after the first that differ from the previous frame's by more
    than H.264 noise."""
    return np.abs(np.diff(frames.astype(np.int16), axis=0)).max(-1) > CHANGED_PIXEL_LEVEL


def any_in_block(pixels: np.ndarray, grid: tuple[int, int]) -> torch.Tensor:
    """[T, H, W] bool on a ``grid`` of equal blocks of ``pixels`` ([T, rows, columns] bool): any pixel set."""
    frames_count, rows, columns = pixels.shape
    blocks = pixels.reshape(frames_count, grid[0], rows // grid[0], grid[1], columns // grid[1])
    return torch.from_numpy(blocks.any(axis=(2, 4)))


def changed_patches(frames: np.ndarray, grid: tuple[int, int]) -> torch.Tensor:
    """[T, H, W] bool on a ``grid`` of patches: those holding a pixel that differs from the previous frame's by more
    than H.264 noise (none in the first frame)."""
    changed = np.zeros(frames.shape[:3], dtype=bool)
    changed[1:] = changed_pixels(frames)
    return any_in_block(changed, grid)


def shape_tokens(frames: np.ndarray) -> torch.Tensor:
    """[T, H, W] bool on the grid of visual tokens: those holding a pixel of a shape."""
    return any_in_block(frames.max(-1) > SHAPE_LEVEL, TOKEN_GRID)


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


def far_change(features: torch.Tensor, changed: torch.Tensor, margin: int) -> torch.Tensor:
    """How much features change where the pixels do not: in each pair of consecutive frames with a local change
    (some patches changed, less than ``CUT_SHARE`` of them), the mean norm of the change at patches more than
    ``margin`` rows or columns away from every changed one, over the earlier frame's mean feature norm; averaged
    over those pairs (0 without any). 0 means that every feature holds only its own neighbourhood's pixels. A norm,
    not its square, so that as a loss it pushes a small leak towards 0 as hard as a large one.

    features: [V, T, H, W, C]; changed: [V, T, H, W] bool, as ``changed_patches`` marks them.
    """
    after = changed[:, 1:].flatten(0, 1).float()
    near = torch.nn.functional.max_pool2d(after[:, None], 2 * margin + 1, 1, margin)[:, 0] > 0
    share = after.flatten(1).mean(1)
    local = (share > 0) & (share < CUT_SHARE)
    if not local.any():
        return features.new_zeros(())
    far = (~near[local]).float()
    earlier, later = features[:, :-1].flatten(0, 1)[local], features[:, 1:].flatten(0, 1)[local]
    change = (torch.linalg.vector_norm(later - earlier, dim=-1) * far).sum((1, 2)) / far.sum((1, 2)).clamp(min=1)
    return (change / torch.linalg.vector_norm(earlier, dim=-1).mean((1, 2))).mean()


@contextmanager
def projector_inputs(model) -> Iterator[list[torch.Tensor]]:
    """The vision features each forward hands to the multimodal projector ([frames, patches, C] each), as the
    model selected them from its tower's hidden states."""
    captured: list[torch.Tensor] = []
    handle = model.model.multi_modal_projector.register_forward_pre_hook(lambda _, args: captured.append(args[0]))
    try:
        yield captured
    finally:
        handle.remove()


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


def answer_words(tokenizer) -> list[str]:
    """The words the option lookup matches: the last word of every option the generators can write. They come
    from the generators' word pools, not from a split, so that a model keeps its wiring when questions change."""
    options = [*COLORS, *BACKGROUNDS, *SHAPES, *EFFECTS, *DIRECTIONS, *(str(n) for n in range(1, 6))]
    return sorted({tokenizer.tokenize(text)[-1] for text in options})


def window_coefficients(frequencies: np.ndarray, near: int = 6, far: int = 9, horizon: int = 4200) -> np.ndarray:
    """Cosine and sine weights per rotary frequency whose sum over a distance d is >= 1 for d in [1, near],
    <= -1 for d in [far, horizon), and falls by >= 0.5 over 3 tokens within [1, near] (a linear programme)."""

    def basis(distances) -> np.ndarray:
        angles = np.outer(distances, frequencies)
        return np.concatenate([np.cos(angles), np.sin(angles)], axis=1)

    within, beyond, later = basis(range(1, near + 1)), basis(range(far, horizon)), basis(range(4, near + 4))
    size = 2 * len(frequencies)
    constraints = np.block([
        [-within, np.ones((near, 1))],
        [beyond, np.ones((len(beyond), 1))],
        [later - within, np.full((near, 1), 0.5)],
    ])  # fmt: skip
    margin = scipy.optimize.linprog(
        np.r_[np.zeros(size), -1.0], A_ub=constraints, b_ub=np.zeros(len(constraints)),
        bounds=[(-1, 1)] * size + [(0, None)], method="highs",
    ).x  # fmt: skip
    return margin[:size] / margin[-1]


def wire_option_lookup(model, words: list[str], seed: int) -> list[tuple[torch.nn.Parameter, torch.Tensor]]:
    """Set weights of the language model so that the token after an answer word is the letter of the option that
    holds that word; return the (parameter, mask) of every wired entry, which training keeps as they are.

    A model this small learns this lookup alone only after far more steps than a CPU allows (its letters stayed at
    chance through thousands of steps), and training wears a wired lookup away unless it is kept fixed. It is
    written in: reserved residual dimensions hold a one-hot code per
    answer word, one per letter and a letter flag in the embeddings. In decoder layer 0, head 0 attends from every
    token to the nearest letter within 6 tokens back (a constant query; rotary weights chosen by
    ``window_coefficients`` so that farther letters score below everything else) and copies that letter into the
    "line letter" dimensions. In layer 1, the first heads attend from an answer word to the earlier tokens with the
    same word (codes on rotary pairs that barely turn over a prompt) and copy their line letter into the "answer"
    dimensions, which ``lm_head`` reads as the letters' logits. Nothing else writes reserved dimensions; every
    module may read them.
    """
    text, vocabulary = text_model(model), model.config.text_config
    head = vocabulary.hidden_size // vocabulary.num_attention_heads
    assert vocabulary.num_key_value_heads == vocabulary.num_attention_heads
    ids = tiny_processor("llava_onevision").tokenizer.convert_tokens_to_ids
    count = len(LETTERS)
    word_dims = list(range(len(words)))
    letter_dims = list(range(len(words), len(words) + count))
    flag_dim = len(words) + count
    line_dims = list(range(flag_dim + 1, flag_dim + 1 + count))
    answer_dims = list(range(flag_dim + 1 + count, flag_dim + 1 + 2 * count))
    reserved = list(range(answer_dims[-1] + 1))
    pairs = head // 2
    frequencies = vocabulary.rope_parameters["rope_theta"] ** (-np.arange(pairs) * 2 / head)
    wired: list[tuple[torch.nn.Parameter, torch.Tensor]] = []

    def keep(parameter: torch.nn.Parameter, index) -> None:
        mask = torch.zeros_like(parameter, dtype=torch.bool)
        mask[index] = True
        wired.append((parameter, mask))

    with torch.no_grad():
        embeddings = text.embed_tokens.weight
        generator = torch.Generator().manual_seed(seed)
        embeddings.copy_(torch.randn(embeddings.shape, generator=generator))
        embeddings[:, reserved] = 0
        code = 3.0
        embeddings[ids(words), word_dims] = code
        embeddings[ids(list(LETTERS)), letter_dims] = code
        embeddings[ids(list(LETTERS)), flag_dim] = code
        keep(embeddings, (slice(None), reserved))
        unit = code / float(embeddings[ids("A")].pow(2).mean().sqrt())  # a reserved code after RMSNorm
        for layer in text.layers:
            for writer in (layer.self_attn.o_proj.weight, layer.mlp.down_proj.weight):
                writer[reserved] = 0
                keep(writer, reserved)
        projector = model.model.multi_modal_projector.linear_2
        for writer in (projector.weight, projector.bias, model.model.image_newline):
            writer[reserved] = 0
            keep(writer, reserved)
        for norm in (text.layers[0].input_layernorm, text.layers[1].input_layernorm, text.norm):
            keep(norm.weight, reserved)

        def clear(attention, heads: range) -> None:
            rows = slice(heads.start * head, heads.stop * head)
            for projection in (attention.q_proj, attention.k_proj, attention.v_proj):
                projection.weight[rows] = 0
                projection.bias[rows] = 0
                keep(projection.weight, rows)
                keep(projection.bias, rows)
            attention.o_proj.weight[:, rows] = 0
            keep(attention.o_proj.weight, (slice(None), rows))

        gather = text.layers[0].self_attn
        clear(gather, range(1))
        sharpness = 20.0 * head**0.5  # logits >= 20 for a letter within 6 tokens, before the 1/sqrt(head) scale
        weights = window_coefficients(frequencies) * sharpness
        gather.q_proj.bias[:pairs] = torch.tensor(weights[:pairs])
        gather.q_proj.bias[pairs:head] = -torch.tensor(weights[pairs:])
        gather.k_proj.weight[:pairs, flag_dim] = 1 / unit
        gather.v_proj.weight[range(count), letter_dims] = 1 / unit
        gather.o_proj.weight[line_dims, range(count)] = 1.0  # small beside a token's norm: keeps its word code
        match = text.layers[1].self_attn
        # rotary pairs that turn less than 0.2 rad over 100 tokens, so that a word matches itself anywhere in the prompt
        slow = [pair + half for half in (0, pairs) for pair in range(pairs) if frequencies[pair] * 100 < 0.2]
        heads = range(-(-len(words) // len(slow)))
        assert len(heads) <= vocabulary.num_attention_heads, f"{len(words)} answer words need more heads"
        clear(match, heads)
        for index, word_dim in enumerate(word_dims):
            dim = heads[index // len(slow)] * head + slow[index % len(slow)]
            match.q_proj.weight[dim, word_dim] = match.k_proj.weight[dim, word_dim] = (15.0 * head**0.5) ** 0.5 / unit
        for first in (h * head for h in heads):
            match.v_proj.weight[range(first, first + count), line_dims] = 1.0
            match.o_proj.weight[answer_dims, range(first, first + count)] = 8.0
        model.lm_head.weight[:, reserved] = 0
        model.lm_head.weight[ids(list(LETTERS)), answer_dims] = 1.0
        keep(model.lm_head.weight, (slice(None), reserved))
    return wired


def keep_wired(wired: list[tuple[torch.nn.Parameter, torch.Tensor, torch.Tensor]]) -> None:
    """Put every wired entry back to its value (after an optimizer step, weight decay included)."""
    with torch.no_grad():
        for parameter, mask, value in wired:
            parameter.copy_(torch.where(mask, value, parameter))


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
    draw = rng.random()
    if draw >= random_prob + temporal_prob:
        return None
    share = rng.uniform(min_share, 1.0)
    return RandomDrop(share, seed) if draw < random_prob else TemporalDuplicates(share)


def forward(model, batch: Batch, reducer: Reducer | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed loss over the target tokens, and the logits that predict each suffix token. With a ``reducer``, each
    video's tokens are reduced at the language model's input (original positions) and the suffix continues after
    the full prefix's positions."""
    with reduction_point(model, reducer):
        prefix = model(input_ids=batch.prefix_ids, pixel_values_videos=batch.pixel_values_videos, use_cache=True)
    cache = prefix.past_key_values
    cache.reorder_cache(batch.row_prefix)
    rows, width = batch.suffix_ids.shape
    after_prefix = batch.prefix_ids.shape[1] + torch.arange(width, device=batch.suffix_ids.device)
    logits = model(
        input_ids=batch.suffix_ids,
        attention_mask=torch.cat([batch.suffix_mask.new_ones(rows, cache.get_seq_length()), batch.suffix_mask], 1),
        position_ids=after_prefix.expand(rows, width), past_key_values=cache, use_cache=False,
    ).logits  # fmt: skip
    # the logits at a position predict the next token, so the first suffix token is predicted by the prefix
    predicted = torch.cat([prefix.logits[batch.row_prefix, -1:], logits[:, :-1]], dim=1)
    targets = batch.suffix_ids.masked_fill(~batch.targets, IGNORE)
    loss = torch.nn.functional.cross_entropy(predicted.flatten(0, 1).float(), targets.flatten(), reduction="sum")
    return loss, predicted


def answered(predicted: torch.Tensor, batch: Batch) -> tuple[list[bool], list[bool]]:
    """Per row, with the right answer fed in: whether the option's text, and whether its letter, is the most
    likely continuation."""
    hits = (predicted.argmax(-1) == batch.suffix_ids) | ~batch.answers
    letters = hits.gather(1, batch.letter_positions[:, None])[:, 0]
    return hits.scatter(1, batch.letter_positions[:, None], True).all(1).tolist(), letters.tolist()


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


def evaluate_held_out(
    model, splits: dict[str, list[Video]], held_out: int, prompts: Prompts, max_new_tokens: int
) -> dict[str, float]:
    """Accuracy (%) of greedy answers on each benchmark's held-out training videos, the right letter in turn."""
    model.eval()
    accuracy = {}
    with torch.inference_mode():
        for name, videos in splits.items():
            right = []
            for video in videos[len(videos) - held_out :]:
                frames = prompts.frames(video)
                for question in video.questions:
                    position = len(right) % (len(question.wrong) + 1)
                    options, letter = lettered(question, position, np.random.default_rng(len(right)))
                    right.append(prompts.answer(model, frames, question.text, options, max_new_tokens) == letter)
            accuracy[name] = 100.0 * sum(right) / max(len(right), 1)
    model.train()
    return accuracy


def learning_rate(step: int, peak: float, warmup: int, total: int) -> float:
    """Linear warm-up, then cosine decay to a tenth of the peak."""
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = (step - warmup) / max(total - warmup, 1)
    return peak * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))


# the arguments a checkpoint must share with the run that resumes it
TRAINING_ARGUMENTS = ("videos_per_benchmark", "held_out", "clip_steps", "steps", "videos_per_step", "positions",
                      "lr", "warmup", "weight_decay", "seed", "drop_prob", "temporal_drop_prob", "drop_min_share",
                      "init_from", "fresh_vision_encoder", "vision_feature_layer", "benchmark_weights",
                      "locality_weight", "locality_margin", "local_vision_encoder", "hide_needles_prob",
                      "decoy_prob")  # fmt: skip


def training_settings(args: argparse.Namespace) -> dict:
    return {name: getattr(args, name) for name in TRAINING_ARGUMENTS}


def save_checkpoint(path: Path, model, optimizer, step: int, args: argparse.Namespace) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.tmp")
    state = {"model": model.state_dict(), "optimizer": optimizer.state_dict(), "step": step}
    torch.save(state | {"settings": training_settings(args)}, temporary)
    temporary.replace(path)


def resume(path: Path, model, optimizer, args: argparse.Namespace) -> int:
    """The step to start from: 0, or the checkpoint's after loading it (which must come from the same settings)."""
    if not path.is_file():
        return 0
    state = torch.load(path, map_location=args.device)
    settings = training_settings(args)
    if state["settings"] != settings:
        raise ValueError(f"{path} was written with {state['settings']}, not {settings}: delete it to start afresh")
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    print(f"resumed from {path} at step {state['step']}")
    return state["step"]


def save_model(model, output: Path, training: dict) -> None:
    """Write model, processor and how they were trained to ``output``, replacing it only once all is written."""
    staging = output.with_name(f".{output.name}.staging")
    shutil.rmtree(staging, ignore_errors=True)
    model.save_pretrained(staging)
    tiny_processor("llava_onevision").save_pretrained(staging)
    (staging / "training.json").write_text(json.dumps(training, indent=1) + "\n")
    previous = output.with_name(f".{output.name}.previous")
    shutil.rmtree(previous, ignore_errors=True)
    if output.exists():
        output.replace(previous)
    staging.replace(output)
    shutil.rmtree(previous, ignore_errors=True)


def benchmark_weights(text: str) -> dict[str, int]:
    weights = dict.fromkeys(BENCHMARKS, 1)
    for item in filter(None, text.split(",")):
        name, _, count = item.partition("=")
        if name not in weights or not count.isdigit():
            raise argparse.ArgumentTypeError(
                f"{item!r} is not name=count with a benchmark among {', '.join(BENCHMARKS)} and a count >= 0"
            )
        weights[name] = int(count)
    if not any(weights.values()):
        raise argparse.ArgumentTypeError("every benchmark has weight 0: nothing to train on")
    return weights


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=ROOT / "data" / "toybench", help="root of the train split")
    parser.add_argument("--output", type=Path, default=ROOT / "models" / "tiny_llava_onevision")
    parser.add_argument("--checkpoint", type=Path, default=ROOT / "outputs" / "train_toy_model" / "checkpoint.pt")
    parser.add_argument("--videos-per-benchmark", type=int, default=600, help="train split size, held-out included")
    parser.add_argument("--held-out", type=int, default=24, help="videos per benchmark kept out of training")
    parser.add_argument("--clip-steps", type=int, default=6000, help="first stage: one shortened video per step")
    parser.add_argument("--steps", type=int, default=1500, help="second stage: one whole video per step")
    parser.add_argument("--videos-per-step", type=int, default=1, help="videos of one benchmark in a step's batch")
    parser.add_argument("--positions", type=int, default=1, help="letters each question is asked with per step")
    parser.add_argument(
        "--drop-prob",
        type=float,
        default=0.0,
        help="share of videos whose tokens are randomly dropped before the language model",
    )
    parser.add_argument(
        "--temporal-drop-prob",
        type=float,
        default=0.0,
        help="share of videos that keep only the tokens least like the previous frame's (TemporalDuplicates)",
    )
    parser.add_argument(
        "--drop-min-share",
        type=float,
        default=0.25,
        help="such a video keeps a share of its tokens drawn uniformly from [this, 1)",
    )
    parser.add_argument(
        "--benchmark-weights",
        type=benchmark_weights,
        default=dict.fromkeys(BENCHMARKS, 1),
        help="steps per benchmark in each cycle, as name=count,… (unnamed benchmarks: 1; 0 leaves one out)",
    )
    parser.add_argument("--init-from", help="start from the weights of a model folder this script wrote")
    parser.add_argument(
        "--fresh-vision-encoder",
        action="store_true",
        help="with --init-from: keep the vision encoder layers at their initial weights, not the folder's",
    )
    parser.add_argument(
        "--vision-feature-layer",
        type=int,
        default=-1,
        help="the tower's hidden state the LLM reads, counted from the end (-1: the last encoder layer's output)",
    )
    parser.add_argument(
        "--local-vision-encoder",
        action="store_true",
        help="zero and freeze the vision encoder's attention outputs: no patch's features see another patch",
    )
    parser.add_argument(
        "--locality-weight",
        type=float,
        default=0.0,
        help="weight of far_change, the change of features where the pixels around them did not change, in the loss",
    )
    parser.add_argument(
        "--locality-margin",
        type=int,
        default=0,
        help="patches around a changed one that far_change leaves free (0: the changed ones only)",
    )
    parser.add_argument(
        "--hide-needles-prob",
        type=float,
        default=0.0,
        help="share of VNBench counting videos that keep the tokens of k of their n needles, k drawn from 1 to n, "
        "answered k (hidden_needles)",
    )
    parser.add_argument(
        "--decoy-prob",
        type=float,
        default=0.0,
        help="share of VNBench videos (of those that hide no needle) given one needle more whose tokens the "
        "language model does not get, the answer unchanged (with_decoy)",
    )
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--warmup", type=int, default=100)
    parser.add_argument("--weight-decay", type=float, default=0.01)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=2, help="CPU threads")
    parser.add_argument("--workers", type=int, default=0, help="processes preparing batches")
    parser.add_argument("--generate-workers", type=int, default=1, help="processes writing the train split")
    parser.add_argument("--checkpoint-every", type=int, default=250)
    parser.add_argument("--log-every", type=int, default=0, help="recent training accuracy every N steps")
    parser.add_argument("--eval-every", type=int, default=0, help="held-out accuracy every N steps (0: at the end)")
    args = parser.parse_args(argv)
    if args.fresh_vision_encoder and args.init_from is None:
        parser.error("--fresh-vision-encoder keeps the rest of an --init-from folder: name one")
    hidden_states = VISION_TOWER["num_hidden_layers"] + 1
    # counted from the end only: transformers 5.24 takes a layer of 0 for "no hidden states"
    if not -hidden_states <= args.vision_feature_layer <= -1:
        parser.error(f"--vision-feature-layer {args.vision_feature_layer}: the tower has {hidden_states} hidden "
                     f"states, -1 (last) to -{hidden_states} (patch embeddings)")  # fmt: skip
    return args


def is_vision_encoder_weight(name: str) -> bool:
    return "vision_tower." in name and ".encoder.layers." in name


def load_initial_weights(model, folder: str, fresh_vision_encoder: bool = False) -> None:
    """Load the weights of a model folder this script wrote into ``model``; with ``fresh_vision_encoder``, all but
    the vision encoder layers', which keep ``model``'s own."""
    loaded = LlavaOnevisionForConditionalGeneration.from_pretrained(folder).state_dict()
    if fresh_vision_encoder:
        loaded = {name: value for name, value in loaded.items() if not is_vision_encoder_weight(name)}
    model.load_state_dict(model.state_dict() | loaded)


def silence_vision_attention(model) -> None:
    """Zero and freeze the output projection of each vision encoder layer's attention, so that a patch's features
    depend on its own pixels only (its position embedding and the layers' MLPs act patch by patch)."""
    for layer in vision_encoder_layers(model):
        layer.self_attn.out_proj.weight.data.zero_()
        layer.self_attn.out_proj.weight.requires_grad_(False)


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    started = time.perf_counter()
    model_config = OmegaConf.load(MODEL_CONFIG)
    prompts = Prompts(tiny_processor("llava_onevision"), model_config.target_fps, model_config.max_frames.default)
    splits = train_split(args.data, args.videos_per_benchmark, args.generate_workers)
    total = args.clip_steps + args.steps
    torch.manual_seed(args.seed)
    model = LlavaOnevisionForConditionalGeneration._from_config(
        toy_config(args.vision_feature_layer), attn_implementation="sdpa"
    )
    wiring = wire_option_lookup(model, answer_words(prompts.tokenizer), args.seed)
    if args.init_from is not None:  # a model this script trained: its wired entries are the wiring's values
        load_initial_weights(model, args.init_from, args.fresh_vision_encoder)
    if args.local_vision_encoder:
        silence_vision_attention(model)
    model.to(args.device).train()
    wired = [(parameter, mask.to(args.device), parameter.detach().clone()) for parameter, mask in wiring]
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, betas=(0.9, 0.98), weight_decay=args.weight_decay)
    start = resume(args.checkpoint, model, optimizer, args)
    loader = torch.utils.data.DataLoader(
        TrainingSteps(splits, args.held_out, args.seed, prompts, args.clip_steps, args.positions, args.videos_per_step,
                      step_schedule(args.benchmark_weights), args.hide_needles_prob, args.decoy_prob),
        sampler=range(start, total),
        batch_size=None, num_workers=args.workers,
    )  # fmt: skip
    progress = tqdm(loader, initial=start, total=total, desc="training", unit="step")
    recent_loss: list[float] = []
    recent_far_change: list[float] = []
    recent: dict[tuple[str, str], list[tuple[bool, bool]]] = {}
    for step, (stage, name, batches) in enumerate(progress, start):
        for group in optimizer.param_groups:
            group["lr"] = learning_rate(step, args.lr, args.warmup, total)
        targets = sum(int(batch.targets.sum()) for batch in batches)
        videos = sum(len(batch.changed_patches) for batch in batches)
        rows, step_loss, step_far_change = [], 0.0, 0.0
        dropping = np.random.default_rng([args.seed, step, 1])
        for index, batch in enumerate(batches):
            reducer = dropping_reducer(
                dropping, args.drop_prob, args.temporal_drop_prob, args.drop_min_share, seed=step * 1000 + index
            )
            if batch.removed_tokens.any():  # replaces the draw above, which later batches still count on
                reducer = DropTokens(batch.removed_tokens)
            with projector_inputs(model) as captured:
                loss_sum, predicted = forward(model, batch.to(args.device), reducer)
            grid = batch.changed_patches.shape
            features = captured[0].unflatten(0, grid[:2]).unflatten(2, grid[2:])
            locality = far_change(features, batch.changed_patches, args.locality_margin) * grid[0] / videos
            loss = loss_sum / targets
            (loss + args.locality_weight * locality).backward()
            step_loss += loss.item()
            step_far_change += locality.item()
            rows += zip(*answered(predicted.detach(), batch), strict=True)
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        keep_wired(wired)
        recent_loss = [*recent_loss[-59:], step_loss]
        recent_far_change = [*recent_far_change[-59:], step_far_change]
        key = (stage, name)
        recent[key] = [*recent.get(key, []), *rows][-100:]
        progress.set_postfix(stage=stage, loss=f"{np.mean(recent_loss):.3f}", far=f"{np.mean(recent_far_change):.3f}")
        done = step + 1
        if done % args.checkpoint_every == 0 or done == total:
            save_checkpoint(args.checkpoint, model, optimizer, done, args)
        if args.log_every and done % args.log_every == 0:
            progress.write(f"step {done} {stage}, far change {np.mean(recent_far_change):.3f}, option text/letter "
                           "right in the last 100 rows: " + ", ".join(
                f"{name} {100 * np.mean([a for a, _ in rows]):.0f}/{100 * np.mean([b for _, b in rows]):.0f}%"
                for (row_stage, name), rows in recent.items() if row_stage == stage
            ))  # fmt: skip
        if args.eval_every and done % args.eval_every == 0 and done < total:
            held = evaluate_held_out(model, splits, args.held_out, prompts, model_config.max_new_tokens)
            progress.write(f"step {done} held-out: " + ", ".join(f"{k} {v:.0f}%" for k, v in held.items()))
    held = evaluate_held_out(model, splits, args.held_out, prompts, model_config.max_new_tokens)
    print("held-out accuracy:", ", ".join(f"{k} {v:.1f}%" for k, v in held.items()))
    training = {
        "command": " ".join(["python", "scripts/train_toy_model.py", *(sys.argv[1:] if argv is None else argv)]),
        "held_out_accuracy": held,
        "wall_s_last_session": round(time.perf_counter() - started, 1),
    }
    model.to("cpu").eval()
    save_model(model, args.output, training)
    print(f"wrote {args.output}")
    return training


if __name__ == "__main__":
    main()
