"""Checks of a run's settings (``runners.evaluate``), made before any data is written or a model loads: each
failure is a ValueError naming the setting and its fix.

``check_settings`` reads the config alone; ``check_model`` also looks at the disk, for the checkpoint.
"""

from __future__ import annotations

import numbers
import re
from pathlib import Path

import torch
from omegaconf import DictConfig, ListConfig

from runners.benchmarks import benchmark_parts, known_tasks
from sttm.adapters.family import FAMILIES
from sttm.adapters.loading import ATTENTION_IMPLEMENTATIONS, DTYPES
from sttm.adapters.session import POSITION_MODES

FLAGS = ("kv_reuse", "reproduce", "offline", "retry_failed", "feature_cache")
HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*(/[A-Za-z0-9][\w.-]*)?")


def is_whole(value, least: int) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool) and value >= least


def check_reducers_choice(choice) -> None:
    """Refuse ``reducers=sttm``: one config chosen without brackets (Hydra's choice of one option of the group)."""
    if isinstance(choice, str):
        raise ValueError(f"reducers={choice}: choose reducer configs as a list, 'reducers=[{choice}]'")


def check_limit(limit) -> None:
    """``limit``: questions per task, a whole number from 1, or None for all of them (lmms-eval would read a
    number below 1 as a fraction of each task, and a negative one as no limit)."""
    if limit is not None and not is_whole(limit, 1):
        raise ValueError(
            f"limit={limit!r}: give the number of questions per task, a whole number from 1, or limit=null for all "
            "of them"
        )


def part_name(cfg: DictConfig, benchmark: DictConfig) -> str:
    """How the command line names a benchmark of the run: ``benchmark``, or a suite's ``benchmark.parts.<name>``."""
    return f"benchmark.parts.{benchmark.name}" if cfg.benchmark.kind == "suite" else "benchmark"


def check_benchmark(cfg: DictConfig, benchmark: DictConfig) -> None:
    """A benchmark of the run (not a suite) names known tasks, each once, and a frame cap of the model's."""
    where = part_name(cfg, benchmark)
    tasks = benchmark.get("tasks")
    known = known_tasks(benchmark.kind)
    if not isinstance(tasks, ListConfig) or not tasks or len(set(tasks)) < len(tasks):
        raise ValueError(f"{where}.tasks must list tasks, each once, as '{where}.tasks=[{known[0]}]'; got {tasks}")
    unknown = [task for task in tasks if task not in known]
    if unknown:
        raise ValueError(
            f"{where}.tasks: unknown task(s) {', '.join(map(repr, unknown))} for a {benchmark.kind} benchmark; "
            f"choose from: {', '.join(known)}"
        )
    cap, caps = benchmark.get("frame_cap", "default"), cfg.model.max_frames
    if isinstance(caps, DictConfig) and cap not in caps:
        raise ValueError(f"{where}.frame_cap={cap!r} is not a key of model.max_frames ({', '.join(caps)})")


def check_model_numbers(model: DictConfig) -> None:
    """The model node's family, generation length, layer, frame counts and frame rate."""
    if model.family not in FAMILIES:
        raise ValueError(f"model.family={model.family!r}: choose one of: {', '.join(FAMILIES)}")
    for key, least in (("max_new_tokens", 1), ("llm_layer", 0)):
        if not is_whole(model[key], least):
            raise ValueError(f"model.{key}={model[key]!r}: give a whole number from {least}")
    caps = model.max_frames
    for cap, frames in caps.items() if isinstance(caps, DictConfig) else [("", caps)]:
        if not is_whole(frames, 1):
            name = f"model.max_frames.{cap}" if cap else "model.max_frames"
            raise ValueError(f"{name}={frames!r}: give a whole number of frames from 1")
    fps = model.get("target_fps")
    if fps is not None and (isinstance(fps, bool) or not isinstance(fps, numbers.Real) or not fps > 0):
        raise ValueError(
            f"model.target_fps={fps!r}: give a positive number of frames per second, or null to spread "
            "model.max_frames over the video"
        )


def check_settings(cfg: DictConfig) -> None:
    """Fail on a run setting that cannot work, naming it and its fix: the flags, seed, limit, positions, the model
    node's numbers and family, and each benchmark's tasks and frame cap. Reads no file and loads nothing."""
    for flag in FLAGS:
        if not isinstance(cfg.get(flag), bool):
            raise ValueError(f"{flag}={cfg.get(flag)!r}: give {flag}=true or {flag}=false")
    if not is_whole(cfg.seed, 0):
        raise ValueError(f"seed={cfg.seed!r}: give a whole number from 0")
    check_limit(cfg.limit)
    if cfg.positions not in POSITION_MODES:
        raise ValueError(f"positions={cfg.positions!r}: choose one of: {', '.join(POSITION_MODES)}")
    check_model_numbers(cfg.model)
    if cfg.positions == "compact" and FAMILIES[cfg.model.family].mrope:
        raise ValueError(
            f"positions=compact renumbers LLaVA-OneVision's positions; {cfg.model.family} keeps its M-RoPE ids: "
            "use positions=original"
        )
    for benchmark in benchmark_parts(cfg.benchmark):
        check_benchmark(cfg, benchmark)


def is_cached(repo_id: str) -> bool:
    """Whether the Hugging Face cache holds the config of the hub model ``repo_id`` (read without the network)."""
    from huggingface_hub import try_to_load_from_cache

    return isinstance(try_to_load_from_cache(repo_id, "config.json"), str)


def check_model(model: DictConfig, offline: bool) -> None:
    """Fail, naming the setting and its fix, unless this machine can load the model: ``pretrained`` a checkpoint
    folder, one the run builds, or a hub id (in the cache where the run is offline); a known dtype and attention;
    the device there."""
    pretrained = str(model.pretrained)
    folder = Path(pretrained).expanduser()
    if folder.is_dir() and not (folder / "config.json").is_file():
        raise ValueError(f"model.pretrained: {folder} holds no config.json: not a checkpoint folder")
    if not folder.is_dir() and not model.get("build_if_missing"):
        if not HUB_ID.fullmatch(pretrained):
            raise ValueError(
                f"model.pretrained: folder not found: {folder.absolute()} (give a checkpoint folder, or a hub id "
                "such as llava-hf/llava-onevision-qwen2-7b-ov-hf)"
            )
        if offline and not is_cached(pretrained):
            raise ValueError(
                f"model.pretrained={pretrained}: neither a folder here nor a model in the Hugging Face cache, and the "
                f"run is offline: download it where there is a network (hf download {pretrained}) and copy the "
                "cache here, give the folder of a copy, or pass offline=false to download it"
            )
    if model.dtype not in DTYPES:
        raise ValueError(f"model.dtype={model.dtype!r}: choose one of: {', '.join(DTYPES)}")
    if model.attn_implementation not in ATTENTION_IMPLEMENTATIONS:
        choices = ", ".join(ATTENTION_IMPLEMENTATIONS)
        raise ValueError(f"model.attn_implementation={model.attn_implementation!r}: choose one of: {choices}")
    if str(model.device).startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(
            f"model.device={model.device} needs a CUDA GPU and none is visible: pass model.device=cpu "
            "(and model.device_map=null)"
        )
