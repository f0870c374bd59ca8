"""Where the wall time of one question goes, and what a sweep of N reducers costs with and without the video cache.

    python -m scripts.bench_sweep_cost --device cuda --output sweep_cost_h200.json   # under 5 minutes on an H200
    python -m scripts.bench_sweep_cost --device cpu --output sweep_cost_cpu.json

The video: ``--video``, written there first where it is missing (else in a temporary folder), with PyAV: H.264,
yuv420p, a keyframe every ``--gop-seconds``, 4-second scenes of flat colour blocks with a square that moves every
frame. On CUDA the model is LLaVA-OneVision-7B's size with
random bf16 weights (``sttm.adapters.real_size``, sdpa) and its requests' processor, on a 30-minute 720p video at
24 fps sampled as ``configs/model/llava_onevision_7b.yaml`` samples (1 fps, at most 128 frames: 128 spread
uniformly); on the CPU the committed tiny model (``configs/model/tiny_llava_onevision.yaml``: at most 32 frames) on
a 2-minute 360p one.

A sweep is full tokens then each of ``--reducers`` at ``--budget`` (built as the runner builds them), one question
per cell, answered as the sttm_bench model answers one (``runners.video_cache``'s inputs and features,
``reduction_point``, ``timed_generate``; greedy, ``max_new_tokens`` of the model config): first without the cache
(every cell decodes, processes and encodes the video), then with it (a fresh ``VideoCache`` in memory), the two
``--repeats`` times, keeping per cell the fastest (a shared CPU's noise). Each cell's
wall time is split into decode (``read_frames``), processor (``video_inputs``), vision (the encoder: tower,
projector, pooling, placement; with the cache, the copy of the stored features to the device), reducer, prefill
(without the reducer), generation (the tokens after the first) and the rest of the wall time (inputs to the device,
the first token's sampling, Python). The sweeps must give the same tokens (``same_answers``). One untimed
full-token question warms up first.

lmms-eval and the runner: one cell of ``--runner-questions`` toybench questions (toy_videomme) through
``runners.evaluate.evaluate_cell`` with a model that answers at once, so its wall time is the work around the model
(lmms-eval's task, requests and scoring; the runner's records and cell files) for that many questions.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from contextlib import nullcontext
from pathlib import Path

import av
import numpy as np
import torch

from runners.settings import compose_evaluate, setting_reducer
from runners.video_cache import VideoCache
from sttm.adapters.family import FAMILIES
from sttm.adapters.feature_cache import features_reusable
from sttm.adapters.loading import load_model, video_inputs, video_question_prompt
from sttm.adapters.points import reduction_point
from sttm.adapters.timing import timed_generate
from sttm.adapters.video import read_frames
from sttm.bounded_store import BoundedStore

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_REDUCERS = ["sttm", "tome", "fastv", "framefusion", "visionzip", "dycoke", "vidcom2", "divprune", "pool",
                    "random"]  # fmt: skip
#: per device: the model config, the video's minutes, height and frame rate
SETTINGS = {"cuda": ("llava_onevision_7b", 30.0, 720, 24), "cpu": ("tiny_llava_onevision", 2.0, 360, 24)}
PARTS = ("decode_ms", "processor_ms", "vision_ms", "reducer_ms", "prefill_ms", "generation_ms", "other_ms")
QUESTION = "which color appeared first ? answer with the option letter ."
SCENE_SECONDS = 4
CACHE_BYTES = 64 * 2**30


def write_video(path: Path, minutes: float, height: int, fps: int, gop_seconds: float) -> None:
    """``minutes`` of 16:9 H.264 at ``height`` lines: scenes of flat colour blocks, a moving square, written as
    yuv420p planes (no colour conversion per frame)."""
    width = height * 16 // 9 // 2 * 2
    rng = np.random.default_rng(0)
    scenes = [np.kron(rng.integers(16, 235, (9, 16), dtype=np.uint8), np.ones((height // 9 + 1, width // 16 + 1),
                                                                              dtype=np.uint8))[:height, :width]
              for _ in range(16)]  # fmt: skip
    chroma = np.full((height // 2, width), 128, dtype=np.uint8)
    side = height // 12
    options = {"preset": "ultrafast", "g": str(round(gop_seconds * fps)), "sc_threshold": "0"}
    with av.open(str(path), "w", format="mp4") as container:
        stream = container.add_stream("libx264", rate=fps, options=options)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        for index in range(round(minutes * 60 * fps)):
            luma = scenes[index // (SCENE_SECONDS * fps) % len(scenes)].copy()
            x = index * 7 % (width - side)
            luma[side : 2 * side, x : x + side] = 255
            frame = av.VideoFrame.from_ndarray(np.concatenate([luma, chroma]), format="yuv420p")
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def load(device: str, model_name: str):
    """The model and processor, and the model config."""
    config = compose_evaluate(f"model={model_name}", "reducers=[]").model
    if device == "cpu":
        model, processor = load_model(str(ROOT / config.pretrained), config.dtype, config.attn_implementation)
        return model, processor, config
    from sttm.adapters.real_size import architecture, random_model
    from sttm.adapters.tiny import PATCH_SIZE, tiny_processor

    found = architecture(model_name)
    processor = tiny_processor(found.family, found.frame_size, found.vision.get("patch_size", PATCH_SIZE))
    return random_model(model_name, "sdpa", device), processor, config


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


class Question:
    """One question about the video, answered as the sttm_bench model answers it, its wall time split in parts."""

    def __init__(self, model, processor, config, path: Path, device: str) -> None:
        self.model, self.processor, self.path, self.device = model, processor, str(path), device
        frame_cap = config.max_frames if isinstance(config.max_frames, int) else config.max_frames["default"]
        self.sampling = {"target_fps": config.target_fps, "max_frames": int(frame_cap), "pad_to_even": False,
                         "pixels": None}  # fmt: skip
        self.max_new_tokens = int(config.max_new_tokens)
        self.prompt = video_question_prompt(processor, QUESTION)

    def answer(self, reducer, cache: VideoCache | None) -> dict:
        times = {"decode_ms": 0.0, "processor_ms": 0.0}

        def decode():
            start = time.perf_counter()
            video = read_frames(self.path, self.sampling["target_fps"], self.sampling["max_frames"])
            times["decode_ms"] = (time.perf_counter() - start) * 1e3
            return video

        def process(video):
            start = time.perf_counter()
            inputs = video_inputs(self.processor, FAMILIES[self.model.config.model_type], self.prompt, video)
            times["processor_ms"] = (time.perf_counter() - start) * 1e3
            return inputs

        sync(self.device)
        start = time.perf_counter()
        if cache is None:
            inputs = process(decode())
        else:
            inputs = cache.inputs(self.path, self.sampling, {"question": QUESTION}, decode, process)
        inputs = inputs.to(self.model.device)
        reusable = cache is not None and features_reusable(reducer)
        features = cache.features(self.model, self.path, self.sampling) if reusable else nullcontext()
        with torch.inference_mode(), features as use, reduction_point(self.model, reducer) as log:
            output, timing = timed_generate(self.model, inputs, max_new_tokens=self.max_new_tokens, do_sample=False)
        sync(self.device)
        wall_ms = (time.perf_counter() - start) * 1e3
        from_cache = use is not None and use.hit
        inner = log.inner.last.reducer_ms if log.inner is not None and log.inner.calls else 0.0
        reducer_ms = log.last.reducer_ms + inner if log.calls else 0.0
        times |= {
            "vision_ms": use.lookup_ms if from_cache else timing.vision_ms,
            "reducer_ms": reducer_ms,
            "prefill_ms": timing.prefill_ms - reducer_ms,
            "generation_ms": timing.decode_ms_per_token * (timing.new_tokens - 1) if timing.new_tokens > 1 else 0.0,
        }
        times["other_ms"] = wall_ms - sum(times.values())
        tokens = output[0, inputs["input_ids"].shape[1] :].tolist()
        kept = log.last.num_kept if log.calls else None
        return {"wall_ms": wall_ms, **times, "features": "cache" if from_cache else "computed", "kept": kept,
                "tokens": tokens}  # fmt: skip


def sweep(question: Question, reducers: dict, cache: VideoCache | None) -> list[dict]:
    return [{"cell": name, **question.answer(reducer, cache)} for name, reducer in reducers.items()]


def instant_model():
    """An lmms-eval model that answers every request at once, with 'A'."""
    from lmms_eval.api.model import lmms

    class InstantAnswers(lmms):
        is_simple = True
        record_dir = None

        def generate_until(self, requests):
            return ["A"] * len(requests)

        def loglikelihood(self, requests):
            raise NotImplementedError

        def generate_until_multi_round(self, requests):
            raise NotImplementedError

    return InstantAnswers()


def runner_overhead(questions: int) -> dict:
    """The wall time of one runner cell of ``questions`` toy_videomme questions around a model that answers at once."""
    from accelerate import Accelerator

    from runners.evaluate import Cell, cell_dir, evaluate_cell, index_tasks
    from runners.toybench import generate_split, write_task_yaml

    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        generate_split("toy_videomme", "test", root / "data", seed=0, count=math.ceil(questions / 3))
        write_task_yaml("toy_videomme", root / "data")
        cfg = compose_evaluate(f"results_dir={root / 'results'}", f"benchmark.data_dir={root / 'data'}",
                               "benchmark.tasks=[toy_videomme]", f"limit={questions}", "reducers=[]")  # fmt: skip
        benchmark = cfg.benchmark
        cell = Cell(benchmark, "none", None, {}, 1.0, cell_dir(cfg, benchmark.name, "none", None, {}, 1.0))
        model, accelerator = instant_model(), Accelerator(cpu=True)
        model.accelerator = accelerator
        task_manager = index_tasks([benchmark])
        start = time.perf_counter()
        evaluate_cell(cfg, cell, model, task_manager, accelerator)
        seconds = time.perf_counter() - start
    return {"questions": questions, "cell_s": seconds, "per_question_ms": seconds / questions * 1e3}


def table(rows: list[dict]) -> str:
    lines = ["| cell | features | wall ms | " + " | ".join(p.removesuffix("_ms") for p in PARTS) + " |",
             "|---|---|---:|" + "---:|" * len(PARTS)]  # fmt: skip
    for row in rows:
        parts = " | ".join(f"{row[p]:.1f}" for p in PARTS)
        lines.append(f"| {row['cell']} | {row['features']} | {row['wall_ms']:.1f} | {parts} |")
    return "\n".join(lines)


def commit() -> str | None:
    """The checkout's commit, or ``STTM_COMMIT`` where it is no git checkout."""
    try:
        found = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True)
    except OSError:
        return os.environ.get("STTM_COMMIT")
    return found.stdout.strip() or os.environ.get("STTM_COMMIT")


def described(path: Path) -> dict:
    """A video's length, size and frame rate, as its container states them."""
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        seconds = float(stream.duration * stream.time_base) if stream.duration else container.duration / av.time_base
        return {"path": str(path), "minutes": seconds / 60, "width": stream.width, "height": stream.height,
                "fps": float(stream.average_rate), "bytes": path.stat().st_size}  # fmt: skip


def fastest(sweeps: list[list[dict]]) -> list[dict]:
    """Per cell, the row of the repeat that took the least wall time."""
    return [min(rows, key=lambda row: row["wall_ms"]) for rows in zip(*sweeps, strict=True)]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", choices=sorted(SETTINGS), default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--video", type=Path, help="the video to read, written there first where missing "
                        "(default: a temporary file)")  # fmt: skip
    parser.add_argument("--minutes", type=float, help="the written video's length (default: 30 on CUDA, 2 on CPU)")
    parser.add_argument("--height", type=int, help="its lines (default: 720 on CUDA, 360 on CPU), 16:9")
    parser.add_argument("--gop-seconds", type=float, default=2.0, help="its keyframe interval")
    parser.add_argument("--reducers", nargs="+", default=DEFAULT_REDUCERS, help="reducer configs (configs/reducers)")
    parser.add_argument("--budget", type=float, default=0.5)
    parser.add_argument("--repeats", type=int, default=1, help="sweeps of each kind, alternating; per cell the "
                        "fastest is kept")  # fmt: skip
    parser.add_argument("--runner-questions", type=int, default=20, help="0: skip the runner cell")
    parser.add_argument("--output", type=Path, help="also write the results as JSON here")
    args = parser.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda needs a CUDA GPU")
    model_name, minutes, height, fps = SETTINGS[args.device]
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as folder:
        path = args.video or Path(folder) / "video.mp4"
        if not path.is_file():
            write_video(path, args.minutes or minutes, args.height or height, fps, args.gop_seconds)
        video = described(path) | {"written_s": time.perf_counter() - started}
        model, processor, config = load(args.device, model_name)
        cfg = compose_evaluate(f"model={model_name}", f"reducers=[{','.join(args.reducers)}]")
        reducers = {"none": None} | {
            name: setting_reducer(cfg.reducers[name], cfg.model, args.budget)[1] for name in args.reducers
        }
        question = Question(model, processor, config, path, args.device)
        question.answer(None, None)  # warm-up
        runs = []
        for _ in range(args.repeats):
            cache = VideoCache(BoundedStore(CACHE_BYTES), processor, model)
            runs.append((sweep(question, reducers, None), sweep(question, reducers, cache)))
    plain, cached = fastest([run[0] for run in runs]), fastest([run[1] for run in runs])
    overhead = runner_overhead(args.runner_questions) if args.runner_questions else None
    full_ms = plain[0]["wall_ms"]
    summary = {
        "one_full_question_ms": full_ms,
        "sweep_without_cache_ms": sum(row["wall_ms"] for row in plain),
        "sweep_with_cache_ms": sum(row["wall_ms"] for row in cached),
        "same_answers": all(
            row["tokens"] == plain[cell]["tokens"] and row["kept"] == plain[cell]["kept"]
            for run in runs for rows in run for cell, row in enumerate(rows)
        ),
    }  # fmt: skip
    summary["without_cache_x_full"] = summary["sweep_without_cache_ms"] / full_ms
    summary["with_cache_x_full"] = summary["sweep_with_cache_ms"] / full_ms
    device = torch.cuda.get_device_name() if args.device == "cuda" else f"cpu ({os.cpu_count()} cores)"
    print(f"# {device}, {model_name}, {question.sampling['max_frames']} frames at most, torch {torch.__version__}, "
          f"commit {commit()}; video {video['minutes']:.1f} min {video['width']}x{video['height']} "
          f"{video['fps']:g} fps; fastest of {args.repeats} per cell")  # fmt: skip
    print(f"\nwithout the cache ({len(reducers)} cells)\n{table(plain)}\n\nwith the cache\n{table(cached)}\n")
    print(f"one full-token question {full_ms / 1e3:.2f} s; the sweep: {summary['sweep_without_cache_ms'] / 1e3:.1f} s "
          f"({summary['without_cache_x_full']:.2f}x) without the cache, {summary['sweep_with_cache_ms'] / 1e3:.1f} s "
          f"({summary['with_cache_x_full']:.2f}x) with it; same answers: {summary['same_answers']}")  # fmt: skip
    if overhead:
        print(f"lmms-eval and runner around a model that answers at once: {overhead['cell_s']:.2f} s for a cell of "
              f"{overhead['questions']} questions ({overhead['per_question_ms']:.0f} ms per question)")  # fmt: skip
    print(f"total {time.perf_counter() - started:.0f} s")
    if args.output:
        command = "python -m scripts.bench_sweep_cost " + " ".join(argv if argv is not None else sys.argv[1:])
        record = {"device": device, "model": model_name, "commit": commit(), "torch": torch.__version__,
                  "command": command, "video": video, "summary": summary, "without_cache": plain,
                  "with_cache": cached, "runner_overhead": overhead}  # fmt: skip
        args.output.write_text(json.dumps(record, indent=1))
    return 0 if summary["same_answers"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
