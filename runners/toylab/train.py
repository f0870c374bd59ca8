"""Train the tiny LLaVA-OneVision of the offline suite on the train split of the six synthetic benchmarks.

    python -m runners.toylab.train                  # CPU, writes models/tiny_llava_onevision
    python -m runners.toylab.train --device cuda

Two stages, by step: ``--clip-steps`` on each video cut to the frames its questions depend on (each generator
starts its events on a fixed stride; VNBench's needles are the frames that differ from both neighbours), a
fraction of the tokens, then ``--steps`` on whole videos, as evaluation shows them (``runners.toylab.data``).
The option lookup is wired into the initial weights (``runners.toylab.wiring``); the options below add token
dropping, hidden and decoy needles (``runners.toylab.augmentations``) and the locality loss
(``runners.toylab.losses``). The data order depends only on the seed and the step, so a run resumed from its
checkpoint (written every ``--checkpoint-every`` steps) continues as the uninterrupted run would. The model and
the processor of ``sttm.adapters.tiny`` are written to ``--output`` by a rename, so the folder is never
half-written; its ``training.json`` records the command.
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import torch
from omegaconf import OmegaConf
from tqdm import tqdm
from transformers import LlavaOnevisionForConditionalGeneration

from runners.toybench import lettered
from runners.toybench.benchmarks import BENCHMARKS
from runners.toylab.augmentations import DropTokens, dropping_reducer
from runners.toylab.data import Prompts, TrainingSteps, Video, step_schedule, train_split
from runners.toylab.losses import answered, far_change, forward
from runners.toylab.model import (
    MODEL_CONFIG,
    ROOT,
    VISION_TOWER,
    load_initial_weights,
    projector_inputs,
    silence_vision_attention,
    toy_config,
)
from runners.toylab.wiring import answer_words, keep_wired, wire_option_lookup
from sttm.adapters.tiny import tiny_processor

MODULE = "runners.toylab.train"
ENTRY_POINT = f"python -m {MODULE}"


def recorded_command(argv: list[str]) -> str:
    """The command a run records in its ``training.json``."""
    return " ".join([ENTRY_POINT, *argv])


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
    parser.add_argument("--checkpoint", type=Path, default=ROOT / "outputs" / "toylab" / "checkpoint.pt")
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
        "command": recorded_command(sys.argv[1:] if argv is None else argv),
        "held_out_accuracy": held,
        "wall_s_last_session": round(time.perf_counter() - started, 1),
    }
    model.to("cpu").eval()
    save_model(model, args.output, training)
    print(f"wrote {args.output}")
    return training


if __name__ == "__main__":
    main()
