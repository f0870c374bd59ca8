"""Decoding videos with PyAV and choosing frames as the STTM authors do.

``sample_indices`` is the rule of ``llava/utils.py::process_video_with_decord`` in github.com/HYUNJS/STTM:
frames at ``target_fps`` (indices ceil(k · video_fps / target_fps), the last frame appended if missing), or
``max_frames`` spread uniformly when that gives more. Qwen2-VL pads the count to even by repeating the last
frame (``pad_to_even``), as its temporal patches take frames in pairs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import av
import numpy as np


class VideoError(ValueError):
    """A video that cannot be read; evaluation records it against the question and goes on."""


def sample_indices(total_frames: int, video_fps: float, target_fps: float, max_frames: int) -> np.ndarray:
    """Indices of the frames to keep, ascending."""
    if total_frames < 1:
        raise VideoError("the video has no frames")
    interval = video_fps / target_fps
    indices = np.ceil(np.arange(math.ceil((total_frames - 1) / interval)) * interval)
    if total_frames == 1 or indices[-1] != total_frames - 1:
        indices = np.concatenate([indices, [total_frames - 1]])
    if 0 < max_frames < len(indices):
        indices = np.linspace(0, total_frames - 1, max_frames, dtype=int)
    return indices.astype(int)


@dataclass(frozen=True)
class SampledVideo:
    """frames: [T, H, W, 3] uint8; fps: sampled frames per second of video time (Qwen2.5-VL's temporal ids)."""

    frames: np.ndarray
    fps: float


def read_frames(
    path: str | Path, target_fps: float = 1.0, max_frames: int = 128, pad_to_even: bool = False
) -> SampledVideo:
    """The frames of the video at ``path`` sampled by ``sample_indices``."""
    path = Path(path)
    if not path.is_file():
        raise VideoError(f"video not found: {path}")
    try:
        with av.open(str(path)) as container:
            stream = container.streams.video[0]
            frames = [frame.to_ndarray(format="rgb24") for frame in container.decode(stream)]
            video_fps = float(stream.average_rate or stream.guessed_rate or target_fps)
    except (av.FFmpegError, IndexError) as error:
        raise VideoError(f"cannot decode video {path}: {error}") from error
    if not frames:
        raise VideoError(f"the video has no frames: {path}")
    chosen = sample_indices(len(frames), video_fps, target_fps, max_frames)
    if pad_to_even and len(chosen) % 2:
        chosen = np.concatenate([chosen, chosen[-1:]])
    sampled_fps = len(chosen) * video_fps / len(frames)
    return SampledVideo(np.stack([frames[i] for i in chosen]), sampled_fps)
