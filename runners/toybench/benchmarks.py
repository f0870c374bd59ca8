"""Six synthetic video QA benchmarks, each exercising the skill of one real benchmark the STTM paper uses.

=================  ==============================================================  ========================
benchmark          what a question needs                                           mirrors
=================  ==============================================================  ========================
toy_vnbench        a needle's colour, the order of 3 needles, how many needles     VNBench (4 tries each)
toy_mlvu           how many events a long video holds, which came first            MLVU
toy_longvideobench what an object looked like while something else was shown      LongVideoBench
toy_nextqa         what happened when a moving ball reached the edge               NExT-QA
toy_egoschema      which way the camera moved over a static scene                  EgoSchema
toy_videomme       several events: a missing colour, what came next, the start     Video-MME
=================  ==============================================================  ========================

No question asks which of the four shapes an object had: the offline model's small vision tower barely tells
apart shapes two patches wide (results/toybench/README.md), so such a question measures the model, not the tokens
a reducer keeps. Shapes still vary, as details a reducer may keep or blur.

Each generator yields (frames, questions) per video from a ``numpy`` random generator; ``runners.toybench``
turns them into mp4 files and JSONL with lettered options and balanced answers.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import numpy as np

from runners.toybench.render import BACKGROUNDS, COLORS, SHAPES, SIZE, background, draw


@dataclass(frozen=True)
class Question:
    """A multiple-choice question: the right option and the wrong ones, unlettered."""

    text: str
    correct: str
    wrong: list[str]
    task_type: str
    tries: int = 1  # VNBench asks each question with its options in 4 orders
    extra: dict = field(default_factory=dict)


Video = tuple[list[np.ndarray], list[Question]]


def pick(rng: np.random.Generator, pool, count: int) -> list:
    return [pool[i] for i in rng.choice(len(pool), size=count, replace=False)]


def scenes(rng: np.random.Generator, frames: int, segments: int) -> tuple[list[np.ndarray], list[str]]:
    """A haystack: ``segments`` stretches of static banded background, and the main (half-frame) colour of each."""
    names = pick(rng, list(BACKGROUNDS), segments)
    frames_out, starts = [], np.array_split(np.arange(frames), segments)
    for name, stretch in zip(names, starts, strict=True):
        others = pick(rng, [b for b in BACKGROUNDS if b != name], int(rng.integers(1, 3)))
        plate = background([name, *others], vertical=bool(rng.integers(2)))
        frames_out.extend([plate] * len(stretch))
    return frames_out, names


def cells(rng: np.random.Generator, count: int, jitter: int = 8) -> list[tuple[int, int]]:
    """Centres of ``count`` distinct cells of a 4 × 4 grid over the frame, each moved by up to ``jitter`` pixels:
    places for objects of radius up to 20 that do not overlap."""
    cell = SIZE // 4
    return [
        (int(index) // 4 * cell + cell // 2 + int(rng.integers(-jitter, jitter + 1)),
         int(index) % 4 * cell + cell // 2 + int(rng.integers(-jitter, jitter + 1)))
        for index in rng.choice(16, size=count, replace=False)
    ]  # fmt: skip


def spot(rng: np.random.Generator, radius: int = 14) -> tuple[int, int]:
    margin = radius + 2
    return int(rng.integers(margin, SIZE - margin)), int(rng.integers(margin, SIZE - margin))


def toy_vnbench(rng: np.random.Generator) -> Video:
    frames, _ = scenes(rng, 24, 3)
    kind = ("retrieval", "ordering", "counting")[int(rng.integers(3))]
    shape = SHAPES[int(rng.integers(len(SHAPES)))]
    if kind == "retrieval":
        color = pick(rng, list(COLORS), 1)[0]
        at = int(rng.integers(24))
        frames[at] = draw(frames[at], shape, color, spot(rng))
        wrong = pick(rng, [c for c in COLORS if c != color], 3)
        question = Question(f"What color was the {shape} that appeared in the video?", color, wrong, "ret")
    elif kind == "ordering":
        colors = pick(rng, list(COLORS), 3)
        for at, color in zip(sorted(pick(rng, range(24), 3)), colors, strict=True):
            frames[at] = draw(frames[at], shape, color, spot(rng))
        orders = [", ".join(p) for p in _permutations(colors)]
        correct = ", ".join(colors)
        wrong = pick(rng, [o for o in orders if o != correct], 3)
        question = Question(f"In which order did the colored {shape}s appear?", correct, wrong, "ord")
    else:
        count = int(rng.integers(1, 5))
        color = pick(rng, list(COLORS), 1)[0]
        for at in pick(rng, range(24), count):
            frames[at] = draw(frames[at], shape, color, spot(rng))
        wrong = [str(n) for n in range(1, 5) if n != count]
        question = Question(f"How many times did a {color} {shape} appear?", str(count), wrong, "cnt")
    return frames, [Question(question.text, question.correct, question.wrong, question.task_type, tries=4)]


def _permutations(items: list[str]) -> list[list[str]]:
    if len(items) <= 1:
        return [items]
    return [[head, *rest] for i, head in enumerate(items) for rest in _permutations(items[:i] + items[i + 1 :])]


def toy_mlvu(rng: np.random.Generator) -> Video:
    frames, _ = scenes(rng, 32, 2)
    count = int(rng.integers(2, 6))
    shapes = [SHAPES[int(i)] for i in rng.integers(len(SHAPES), size=count)]
    colors = pick(rng, list(COLORS), count)
    starts = sorted(pick(rng, range(0, 30, 3), count))
    for start, shape, color in zip(starts, shapes, colors, strict=True):
        where = spot(rng)
        for at in range(start, start + 2):
            frames[at] = draw(frames[at], shape, color, where)
    how_many = Question(
        "How many times did a shape appear during the video?",
        str(count),
        [str(n) for n in range(2, 6) if n != count][:3],
        "count",
    )
    later = colors[1:4]
    absent = pick(rng, [c for c in COLORS if c not in colors], 3 - len(later))
    first = Question("Which color appeared first?", colors[0], [*later, *absent], "order")
    return frames, [how_many, first]


def toy_longvideobench(rng: np.random.Generator) -> Video:
    """Four stretches with a square that changes colour from one to the next; in the middle of one stretch a
    white ball shows for 4 frames. The question refers to the stretch by the ball, always the same referent: the
    offline model does not learn to bind a name in the question to frames (results/toybench/README.md)."""
    segments = 4
    frames, _ = scenes(rng, 32, 2)
    colors = pick(rng, [c for c in COLORS if c != "white"], segments)
    square, ball = cells(rng, 2)
    stretches = np.array_split(np.arange(32), segments)
    for stretch, color in zip(stretches, colors, strict=True):
        for at in stretch:
            frames[at] = draw(frames[at], "square", color, square)
    asked = int(rng.integers(segments))
    for at in stretches[asked][2:6]:
        frames[at] = draw(frames[at], "circle", "white", ball, radius=20)
    question = Question(
        "What color was the square while the white ball was in the video?",
        colors[asked],
        [c for i, c in enumerate(colors) if i != asked],
        "referring",
    )
    return frames, [question]


EFFECTS = {
    "it turned red": lambda f, at: draw(f, "circle", "red", at),
    "it grew larger": lambda f, at: draw(f, "circle", "white", at, radius=24),
    "it turned into a square": lambda f, at: draw(f, "square", "white", at),
    "it moved up": None,  # drawn by the motion itself
    "it disappeared": lambda f, at: f,
}


def toy_nextqa(rng: np.random.Generator) -> Video:
    frames, _ = scenes(rng, 16, 1)
    effect = list(EFFECTS)[int(rng.integers(len(EFFECTS)))]
    row, arrive = int(rng.integers(60, 170)), int(rng.integers(6, 11))
    columns = np.linspace(20, SIZE - 20, arrive + 1).astype(int)
    for at in range(16):
        if at <= arrive:
            frames[at] = draw(frames[at], "circle", "white", (row, int(columns[at])))
        elif effect == "it moved up":
            frames[at] = draw(frames[at], "circle", "white", (max(row - 12 * (at - arrive), 16), SIZE - 20))
        else:
            frames[at] = EFFECTS[effect](frames[at], (row, SIZE - 20))
    question = Question(
        "What happened after the white ball reached the right side?",
        effect,
        [e for e in EFFECTS if e != effect],
        "temporal",
    )
    return frames, [question]


DIRECTIONS = ("left", "right", "up", "down", "it did not move")


def toy_egoschema(rng: np.random.Generator) -> Video:
    world_size = SIZE * 2
    names = pick(rng, list(BACKGROUNDS), 4)
    world = np.empty((world_size, world_size, 3), np.uint8)
    half = world_size // 2
    for (top, left), name in zip([(0, 0), (0, half), (half, 0), (half, half)], names, strict=True):
        world[top : top + half, left : left + half] = BACKGROUNDS[name]
    for _ in range(6):
        shape, color = pick(rng, list(SHAPES), 1)[0], pick(rng, list(COLORS), 1)[0]
        patch = draw(np.zeros((SIZE, SIZE, 3), np.uint8), shape, color, (SIZE // 2, SIZE // 2), radius=18)
        mask = patch.any(-1)
        top, left = (int(v) for v in rng.integers(0, world_size - SIZE, size=2))
        world[top : top + SIZE, left : left + SIZE][mask] = patch[mask]
    direction = DIRECTIONS[int(rng.integers(len(DIRECTIONS)))]
    step = {"left": (0, -1), "right": (0, 1), "up": (-1, 0), "down": (1, 0), "it did not move": (0, 0)}[direction]
    start = (SIZE // 2 - 7 * 14 * step[0], SIZE // 2 - 7 * 14 * step[1])
    frames = []
    for at in range(16):
        top, left = start[0] + at * 14 * step[0], start[1] + at * 14 * step[1]
        frames.append(world[top : top + SIZE, left : left + SIZE].copy())
    question = Question(
        "In which direction did the camera move?", direction, [d for d in DIRECTIONS if d != direction], "ego"
    )
    return frames, [question]


def toy_videomme(rng: np.random.Generator) -> Video:
    frames, names = scenes(rng, 32, 3)
    shapes = pick(rng, list(SHAPES), 3)
    colors = pick(rng, list(COLORS), 3)
    for start, shape, color in zip(sorted(pick(rng, range(0, 30, 4), 3)), shapes, colors, strict=True):
        where = spot(rng)
        for at in range(start, start + 3):
            frames[at] = draw(frames[at], shape, color, where)
    missing = pick(rng, [c for c in COLORS if c not in colors], 1)[0]
    before = int(rng.integers(2))
    following = colors[before + 1]
    elsewhere = [c for c in colors if c not in (colors[before], following)]
    return frames, [
        Question("Which color did not appear in the video?", missing, colors, "absence"),
        Question(
            f"What color appeared after {colors[before]}?",
            following,
            [*elsewhere, *pick(rng, [c for c in COLORS if c not in colors], 2)],
            "sequence",
        ),
        Question(
            "Which color covered half of the background at the start of the video?",
            names[0],
            pick(rng, [b for b in BACKGROUNDS if b != names[0]], 3),
            "scene",
        ),
    ]


#: benchmark -> (video generator, videos in the test split)
BENCHMARKS: dict[str, tuple[Callable[[np.random.Generator], Video], int]] = {
    "toy_vnbench": (toy_vnbench, 36),
    "toy_mlvu": (toy_mlvu, 70),
    "toy_longvideobench": (toy_longvideobench, 140),
    "toy_nextqa": (toy_nextqa, 140),
    "toy_egoschema": (toy_egoschema, 125),
    "toy_videomme": (toy_videomme, 50),
}


def videos(name: str, seed: int, count: int) -> Iterator[Video]:
    """``count`` videos of benchmark ``name``, the same for the same seed."""
    generate, _ = BENCHMARKS[name]
    rng = np.random.default_rng([seed, sorted(BENCHMARKS).index(name)])
    for _ in range(count):
        yield generate(rng)
