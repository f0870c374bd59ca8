"""Where the offline model reads a needle from: toy VNBench retrieval with the needle's own tokens removed.

    python -m runners.toylab.probe_needles [--model models/tiny_llava_onevision] [--whole-frames]

Before the language model, removes the tokens whose pixels differ from the previous frame's (the needle's, in its
frame and in the frame after it, where it is gone; scene cuts aside), or as many random tokens of the same
frames, keeps every other token, and prints the accuracy of the retrieval questions for no removal, the needle's
tokens and random ones. If the needle's colour is still read with its own tokens gone, the vision tower has
spread it over its frame, and dropping tokens at random cannot lose it. ``--whole-frames`` removes every token of
those frames instead, to show that the needle is not read from elsewhere. ``--tower-layers`` prints instead, for the
patch embeddings and each vision encoder layer's output, how much a needle changes its frame's features at the
needle's patches and at patches far from it: where the far change is near zero, a token holds only its own pixels.
``--spread`` prints how the features the LLM reads lie: a far change measured against their norm is small where
their mean is large, however far they vary around it.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch
from omegaconf import OmegaConf
from transformers import LlavaOnevisionForConditionalGeneration

from runners.toylab.augmentations import DropTokens
from runners.toylab.data import Prompts, Video
from runners.toylab.losses import far_change
from runners.toylab.masks import CUT_SHARE, changed_patches
from runners.toylab.model import MODEL_CONFIG, PATCH_GRID, TOKEN_GRID
from sttm.adapters.family import vision_tower
from sttm.adapters.points import reduction_point
from sttm.adapters.tiny import tiny_processor


def changed_tokens(frames: np.ndarray, grid: tuple[int, int]) -> torch.Tensor:
    """[T, H, W] bool: the tokens whose pixels differ from the previous frame's (by more than H.264 noise), in
    frames that are not a cut to the next scene."""
    tokens = changed_patches(frames, grid)
    return tokens & (tokens.flatten(1).float().mean(1) < CUT_SHARE)[:, None, None]


def at_random_in_the_same_frames(needle: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """As many tokens as ``needle`` marks in each frame, chosen at random within that frame."""
    frames = needle.flatten(1)
    chosen = torch.zeros_like(frames)
    for frame, count in enumerate(frames.sum(1).tolist()):
        chosen[frame, torch.randperm(frames.shape[1], generator=generator)[:count]] = True
    return chosen.view_as(needle)


FAR_PATCHES = 3  # patches at least this many rows or columns away from every needle patch count as far


def change_by_tower_layer(model, pixel_values: torch.Tensor, needle: torch.Tensor) -> torch.Tensor:
    """[L + 1, 2]: for the patch embeddings and each of the tower's L encoder layers, the mean norm of (needle
    frame − frame before) at the needle's patches and at far patches, over the frame before's mean patch norm.

    pixel_values: [2, C, H, W], the frame before and the needle's frame; needle: [H', W'] bool on the patch grid.
    """
    with torch.inference_mode():
        hidden_states = vision_tower(model)(pixel_values, output_hidden_states=True).hidden_states
    near = needle.flatten()
    changed = torch.stack([torch.zeros_like(needle), needle])[None]
    rows = []
    for hidden in hidden_states:
        change = (hidden[1] - hidden[0]).norm(dim=-1) / hidden[0].norm(dim=-1).mean()
        grid = hidden.unflatten(1, needle.shape)[None]
        rows.append([change[near].mean(), far_change(grid, changed, margin=FAR_PATCHES - 1)])
    return torch.tensor(rows)


def print_change_by_tower_layer(model, prompts: Prompts, retrieval: list[dict]) -> None:
    changes = []
    for row in retrieval:
        frames = prompts.frames(Video(row["video"], ()))
        needle = changed_tokens(frames, PATCH_GRID)
        needle_frames = torch.nonzero(needle.flatten(1).any(1)).flatten().tolist()
        if not needle_frames:
            continue
        at = needle_frames[0]
        pixel_values = prompts.processor.video_processor(videos=[frames[at - 1 : at + 1]], return_tensors="pt")
        changes.append(change_by_tower_layer(model, pixel_values["pixel_values_videos"][0], needle[at]))
    if not changes:
        raise SystemExit("no retrieval video has a frame that changes from the one before: nothing to compare")
    mean = torch.stack(changes).mean(0)
    print(f"relative change of the needle's frame's patch features, mean over {len(changes)} retrieval videos:")
    for layer, (at_needle, far) in enumerate(mean.tolist()):
        name = "patch embeddings" if layer == 0 else f"encoder layer {layer}"
        print(f"{name:>16}: needle's patches {at_needle:.3f}, patches {FAR_PATCHES}+ away {far:.3f}")


def feature_spread(features: torch.Tensor, directions: int = 6) -> dict[str, torch.Tensor]:
    """Of features [N, C]: their mean norm, the norm of their mean, and their standard deviation along each of
    their first ``directions`` principal directions."""
    centred = features - features.mean(0)
    return {
        "mean norm": torch.linalg.vector_norm(features, dim=-1).mean(),
        "norm of the mean": torch.linalg.vector_norm(features.mean(0)),
        "principal standard deviations": torch.linalg.svdvals(centred)[:directions] / len(features) ** 0.5,
    }


def print_feature_spread(model, prompts: Prompts, retrieval: list[dict]) -> None:
    features = []
    for row in retrieval:
        frames = prompts.frames(Video(row["video"], ()))
        pixel_values = prompts.processor.video_processor(videos=[frames], return_tensors="pt")["pixel_values_videos"]
        with torch.inference_mode():
            hidden_states = vision_tower(model)(pixel_values[0], output_hidden_states=True).hidden_states
        features.append(hidden_states[model.config.vision_feature_layer].flatten(0, 1))
    print(f"the features the LLM reads, all patches of {len(retrieval)} retrieval videos:")
    for name, value in feature_spread(torch.cat(features)).items():
        print(f"{name}: " + ", ".join(f"{number:.1f}" for number in value.reshape(-1).tolist()))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, default=Path("models/tiny_llava_onevision"))
    parser.add_argument("--data", type=Path, default=Path("data/toybench"), help="where `make toybench` wrote it")
    parser.add_argument("--whole-frames", action="store_true", help="remove every token of the needle's frames")
    parser.add_argument("--tower-layers", action="store_true", help="how far each tower layer spreads a needle")
    parser.add_argument("--spread", action="store_true", help="the norm and spread of the features the LLM reads")
    args = parser.parse_args()
    config = OmegaConf.load(MODEL_CONFIG)
    model = LlavaOnevisionForConditionalGeneration.from_pretrained(args.model).eval()
    prompts = Prompts(tiny_processor("llava_onevision"), config.target_fps, config.max_frames.default)
    rows = [json.loads(line) for line in (args.data / "toy_vnbench" / "test.jsonl").open()]
    retrieval = [row for row in rows if row["task_type"] == "ret" and row["try"] == 0]
    if args.tower_layers:
        print_change_by_tower_layer(model, prompts, retrieval)
        return
    if args.spread:
        print_feature_spread(model, prompts, retrieval)
        return
    for removal in ("none", "needle", "random"):
        generator, right, removed = torch.Generator().manual_seed(0), 0, 0
        for row in retrieval:
            frames = prompts.frames(Video(row["video"], ()))
            needle = changed_tokens(frames, TOKEN_GRID)
            if args.whole_frames:
                needle = needle.flatten(1).any(1)[:, None, None].expand_as(needle)
            dropped = needle if removal == "needle" else at_random_in_the_same_frames(needle, generator)
            removed += int(dropped.sum()) if removal != "none" else 0
            with torch.inference_mode(), reduction_point(model, None if removal == "none" else DropTokens([dropped])):
                letter = prompts.answer(model, frames, row["question"], row["options"], config.max_new_tokens)
            right += letter == row["answer"]
        print(f"tokens removed: {removal:>6} ({removed / len(retrieval):.1f} a video): "
              f"{100 * right / len(retrieval):.1f}% of {len(retrieval)} retrieval questions")  # fmt: skip


if __name__ == "__main__":
    main()
