"""How well the offline model's vision tower can learn to tell the synthetic benchmarks' four shapes apart.

    python -m runners.toylab.probe_shapes [--radius 14] [--steps 400]

Trains a fresh vision tower of ``runners.toylab.model.toy_config`` and a linear head to name the shape of one
object drawn on a banded background, read from the pooled token (LLaVA-OneVision's 2x2 bilinear pooling, 8x8
tokens a frame) that holds the object's centre, and prints the accuracy on 256 new frames every 50 steps. This
is the most direct signal a tower can get; the language model's questions give it far less.
"""

from __future__ import annotations

import argparse

import numpy as np
import torch
from transformers import LlavaOnevisionForConditionalGeneration

from runners.toybench.benchmarks import pick, spot
from runners.toybench.render import BACKGROUNDS, COLORS, SHAPES, SIZE, background, draw
from runners.toylab.model import toy_config
from sttm.adapters.family import vision_tower

POOLED = 8


def frames_with_shapes(rng: np.random.Generator, count: int, radius: int):
    """[count, 3, SIZE, SIZE] frames scaled as SigLIP expects, each shape's index, and its centre's token."""
    frames, shapes, tokens = [], [], []
    for _ in range(count):
        plate = background(pick(rng, list(BACKGROUNDS), 2), vertical=bool(rng.integers(2)))
        shape, (row, col) = int(rng.integers(len(SHAPES))), spot(rng, radius)
        frames.append(draw(plate, SHAPES[shape], pick(rng, list(COLORS), 1)[0], (row, col), radius=radius))
        shapes.append(shape)
        tokens.append(row * POOLED // SIZE * POOLED + col * POOLED // SIZE)
    pixels = torch.tensor(np.stack(frames)).permute(0, 3, 1, 2).float() / 127.5 - 1
    return pixels, torch.tensor(shapes), torch.tensor(tokens)


def centre_tokens(tower, pixels: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """[count, width] the pooled token at each object's centre."""
    patches = tower(pixel_values=pixels).last_hidden_state
    side = int(patches.shape[1] ** 0.5)
    grid = patches.unflatten(1, (side, side)).permute(0, 3, 1, 2)
    pooled = torch.nn.functional.interpolate(grid, size=(POOLED, POOLED), mode="bilinear").flatten(2)
    return pooled[torch.arange(len(tokens)), :, tokens]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--radius", type=int, default=14, help="the benchmarks draw shapes of radius 14")
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.manual_seed(args.seed)
    tower = vision_tower(LlavaOnevisionForConditionalGeneration._from_config(toy_config()))
    head = torch.nn.Linear(tower.config.hidden_size, len(SHAPES))
    optimizer = torch.optim.AdamW([*tower.parameters(), *head.parameters()], lr=1e-3)
    rng = np.random.default_rng(args.seed)
    held_out = frames_with_shapes(np.random.default_rng(args.seed + 1), 256, args.radius)
    for step in range(1, args.steps + 1):
        pixels, shapes, tokens = frames_with_shapes(rng, args.batch, args.radius)
        loss = torch.nn.functional.cross_entropy(head(centre_tokens(tower, pixels, tokens)), shapes)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if step % 50 == 0:
            with torch.no_grad():
                pixels, shapes, tokens = held_out
                right = (head(centre_tokens(tower, pixels, tokens)).argmax(1) == shapes).float().mean()
            print(f"step {step}: loss {loss.item():.3f}, shapes named right in {100 * right:.1f}% of new frames")


if __name__ == "__main__":
    main()
