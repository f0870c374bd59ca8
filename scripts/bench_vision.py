"""Where a video's features cost time: the vision tower against the model's whole ``get_video_features``.

    python -m scripts.bench_vision --models llava_onevision_7b qwen2_vl_7b qwen3_vl_8b --output vision.json

For each model at its published size with random bf16 weights (``sttm.adapters.real_size``) and the scene video of
``--frames`` frames: the milliseconds of ``get_video_features`` and, inside that call, of the vision tower and of its
encoder blocks (first block's start to last block's end), read from forward hooks on one CUDA clock; medians of
``--repeats`` calls after a warm-up. LLaVA-OneVision runs twice, with transformers' channels-first ``apply_pooling``
and with the channels-last pooling that ``load_model`` installs (``sttm.adapters.pooling``), and the two features
are compared with ``torch.equal``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
from pathlib import Path

import torch

from sttm.adapters import family
from sttm.adapters.pooling import pool_channels_first, pool_channels_last
from sttm.adapters.real_size import ARCHITECTURES, random_model, request
from sttm.clock import Clock

FEATURE_INPUTS = ("pixel_values_videos", "video_grid_thw")


def video_features(model, inputs: dict) -> torch.Tensor:
    """The video features ``model`` puts in its placeholders: [N, C]."""
    # positional: transformers 5.17 names LLaVA-OneVision's first argument pixel_values, later ones pixel_values_videos
    arguments = [inputs[key] for key in FEATURE_INPUTS if key in inputs]
    output = family.multimodal_model(model).get_video_features(*arguments)
    features = output.pooler_output if hasattr(output, "pooler_output") else output
    return torch.cat(list(features)) if isinstance(features, list | tuple) else features


def one_call(model, inputs: dict) -> tuple[torch.Tensor, dict]:
    """The features and the milliseconds of the whole call, the tower, and its encoder blocks, for one call."""
    tower, blocks = family.vision_tower(model), family.vision_encoder_layers(model)
    clock = Clock(model.device)

    def first_block_starts(*_) -> None:
        if "blocks_start" not in clock.marks:
            clock.mark("blocks_start")

    handles = [
        tower.register_forward_pre_hook(lambda *_: clock.mark("tower_start")),
        tower.register_forward_hook(lambda *_: clock.mark("tower_end")),
        blocks[0].register_forward_pre_hook(first_block_starts),
        blocks[-1].register_forward_hook(lambda *_: clock.mark("blocks_end")),
    ]
    try:
        with torch.inference_mode():
            clock.mark("start")
            features = video_features(model, inputs)
            clock.mark("end")
    finally:
        for handle in handles:
            handle.remove()
    times = {"features_ms": clock.between("start", "end"), "tower_ms": clock.between("tower_start", "tower_end"),
             "blocks_ms": clock.between("blocks_start", "blocks_end")}  # fmt: skip
    return features, times


def timed_features(model, inputs: dict, repeats: int) -> tuple[torch.Tensor, dict]:
    """The features and the median milliseconds of :func:`one_call`'s parts over ``repeats`` calls after a warm-up."""
    runs = [one_call(model, inputs) for _ in range(repeats + 1)][1:]
    medians = {key: statistics.median(times[key] for _, times in runs) for key in runs[0][1]}
    medians["outside_tower_ms"] = medians["features_ms"] - medians["tower_ms"]
    medians["tower_outside_blocks_ms"] = medians["tower_ms"] - medians["blocks_ms"]
    return runs[-1][0], medians


def rows_for(name: str, frames: int, repeats: int, device: str = "cuda") -> list[dict]:
    model = random_model(name, "sdpa", device)
    inputs = request(name, frames, model.device)
    rows = []
    if hasattr(type(model.model), "apply_pooling"):
        pool_channels_first(model)
        slow, timing = timed_features(model, inputs, repeats)
        rows.append({"model": name, "frames": frames, "pooling": "channels-first (transformers)", **timing})
        pool_channels_last(model)
        fast, timing = timed_features(model, inputs, repeats)
        rows.append({"model": name, "frames": frames, "pooling": "channels-last (load_model's default)",
                     "identical_features": bool(torch.equal(slow, fast)), **timing})  # fmt: skip
    else:
        _, timing = timed_features(model, inputs, repeats)
        rows.append({"model": name, "frames": frames, "pooling": "none", **timing})
    del model
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", choices=sorted(ARCHITECTURES), default=["llava_onevision_7b"])
    parser.add_argument("--frames", nargs="+", type=int, default=[128])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--output", type=Path, help="also write the rows as JSON here")
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        parser.error("the vision benchmark needs a CUDA GPU")
    rows = [row for name in args.models for frames in args.frames for row in rows_for(name, frames, args.repeats)]
    columns = ("features_ms", "tower_ms", "blocks_ms", "outside_tower_ms", "tower_outside_blocks_ms")
    print(f"# {torch.cuda.get_device_name()}, torch {torch.__version__}, commit {os.environ.get('STTM_COMMIT')}")
    print("| model | frames | pooling | " + " | ".join(columns) + " | identical |\n|" + "---|" * (len(columns) + 4))
    for row in rows:
        values = " | ".join(f"{row[column]:.1f}" for column in columns)
        identical = row.get("identical_features", "")
        print(f"| {row['model']} | {row['frames']} | {row['pooling']} | {values} | {identical} |")
    if args.output:
        command = "python -m scripts.bench_vision " + " ".join(argv if argv is not None else sys.argv[1:])
        record = {"gpu": torch.cuda.get_device_name(), "torch": torch.__version__,
                  "commit": os.environ.get("STTM_COMMIT"), "command": command, "rows": rows}  # fmt: skip
        args.output.write_text(json.dumps(record, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
