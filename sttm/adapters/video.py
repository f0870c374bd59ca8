"""Decoding videos with PyAV and choosing frames as the STTM authors do.

``sample_indices`` is the rule of ``llava/utils.py::process_video_with_decord`` in github.com/HYUNJS/STTM:
frames at ``target_fps`` (indices ceil(k · video_fps / target_fps), the last frame appended if missing), or
``max_frames`` spread uniformly when that gives more; without a ``target_fps``, ``max_frames`` spread uniformly and
rounded to the nearest frame, as lmms-eval's Qwen3-VL model samples (qwen-vl-utils' ``nframes``), or every frame of
a shorter video. Qwen2-VL pads the count to even by repeating the last
frame (``pad_to_even``), as its temporal patches take frames in pairs. Only the sampled frames are decoded to RGB
and held (``read_frames``), so an hour of video costs the memory of its sampled frames.
"""

from __future__ import annotations

import bisect
import math
from dataclasses import dataclass
from pathlib import Path

import av
import numpy as np

#: the frame rate taken for a stream that states none, when no target rate is given either
UNKNOWN_RATE = 1.0


class VideoError(ValueError):
    """A video that cannot be read; evaluation records it against the question and goes on."""


def sample_indices(total_frames: int, video_fps: float, target_fps: float | None, max_frames: int) -> np.ndarray:
    """Indices of the frames to keep, ascending."""
    if total_frames < 1:
        raise VideoError("the video has no frames")
    if target_fps is None:
        return np.linspace(0, total_frames - 1, min(max_frames, total_frames)).round().astype(int)
    interval = video_fps / target_fps
    indices = np.ceil(np.arange(math.ceil((total_frames - 1) / interval)) * interval)
    if total_frames == 1 or indices[-1] != total_frames - 1:
        indices = np.concatenate([indices, [total_frames - 1]])
    if 0 < max_frames < len(indices):
        indices = np.linspace(0, total_frames - 1, max_frames, dtype=int)
    return indices.astype(int)


@dataclass(frozen=True)
class SampledVideo:
    """frames: [T, H, W, 3] uint8; fps: sampled frames per second of video time (Qwen2.5-VL's temporal ids);
    indices: [T] each frame's index in the video (None: 0..T−1 at ``fps``) and video_fps the video's frame rate, which
    Qwen3-VL's timestamps read."""

    frames: np.ndarray
    fps: float
    indices: np.ndarray | None = None
    video_fps: float | None = None


@dataclass(frozen=True)
class FrameIndex:
    """A video stream's frames from its packets, without decoding: presentation timestamps ascending, those of its
    keyframes (where a decoder can start), and its frame rate."""

    timestamps: list[int]
    keyframes: list[int]
    fps: float


def frame_index(container: av.container.InputContainer, stream, target_fps: float | None) -> FrameIndex:
    timestamps, keyframes = [], []
    for packet in container.demux(stream):
        if packet.size and packet.pts is not None:
            timestamps.append(packet.pts)
            if packet.is_keyframe:
                keyframes.append(packet.pts)
    fps = float(stream.average_rate or stream.guessed_rate or target_fps or UNKNOWN_RATE)
    return FrameIndex(sorted(timestamps), sorted(keyframes), fps)


def decode_at(container: av.container.InputContainer, stream, index: FrameIndex, wanted: list[int]) -> list:
    """The RGB frames at the timestamps ``wanted`` (ascending, from ``index``): decoding forward from the current
    position, or from the last keyframe before a frame where that keyframe lies ahead, so that only the frames
    from there on are decoded and only the wanted ones converted. None where a wanted frame did not come out."""
    found: dict[int, np.ndarray] = {}
    frames, position = None, None
    for target in wanted:
        if target in found:
            continue
        start = index.keyframes[max(bisect.bisect_right(index.keyframes, target) - 1, 0)] if index.keyframes else None
        if frames is None or (start is not None and position is not None and position < start):
            container.seek(start if start is not None else target, stream=stream, backward=True)
            frames = container.decode(stream)
        for frame in frames:
            position = frame.pts
            if position is None or position > target:
                return [None]
            if position == target:
                found[target] = frame.to_ndarray(format="rgb24")
                break
        else:
            return [None]
    return [found[target] for target in wanted]


def count_decoded(path: Path) -> int:
    """How many frames the decoder gives for the video stream, none converted or kept."""
    with av.open(str(path)) as container:
        return sum(1 for _ in container.decode(container.streams.video[0]))


def decode_indices(path: Path, chosen: np.ndarray) -> list[np.ndarray]:
    """The RGB frames at the decoded-frame indices ``chosen`` (ascending), decoding every frame, keeping those."""
    wanted, kept = set(chosen.tolist()), {}
    with av.open(str(path)) as container:
        for position, frame in enumerate(container.decode(container.streams.video[0])):
            if position in wanted:
                kept[position] = frame.to_ndarray(format="rgb24")
    return [kept[i] for i in chosen.tolist()]


def read_frames(
    path: str | Path, target_fps: float | None = 1.0, max_frames: int = 128, pad_to_even: bool = False
) -> SampledVideo:
    """The frames of the video at ``path`` sampled by ``sample_indices`` over the frames the decoder gives.

    Memory holds the sampled frames only, and time goes into the frames between each one and the keyframe before
    it: the frames are counted and located from the container's packets (``frame_index``), then decoded from the
    nearest keyframe (``decode_at``). Where the packets do not account for every decoded frame (a stream whose
    packets lack timestamps, or whose decoder drops or adds frames), every frame is decoded once to count them and
    once more to keep the sampled ones: the frames are the same either way.
    """
    path = Path(path)
    if path.is_dir():
        raise VideoError(f"not a video file but a directory: {path}")
    if not path.is_file():
        raise VideoError(f"video not found: {path}")
    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                raise VideoError(f"no video stream in {path} (streams: {', '.join(s.type for s in container.streams)})")
            stream = container.streams.video[0]
            stream.thread_type = "AUTO"
            index = frame_index(container, stream, target_fps)
            if not index.timestamps:
                raise VideoError(f"the video has no frames: {path}")
            chosen = sample_indices(len(index.timestamps), index.fps, target_fps, max_frames)
            frames = decode_at(container, stream, index, [index.timestamps[i] for i in chosen])
        total = len(index.timestamps)
        if any(frame is None for frame in frames):
            total = count_decoded(path)
            if total == 0:
                raise VideoError(f"the video has no frames: {path}")
            chosen = sample_indices(total, index.fps, target_fps, max_frames)
            frames = decode_indices(path, chosen)
    except av.FFmpegError as error:
        raise VideoError(f"cannot decode video {path}: {error}") from error
    if pad_to_even and len(chosen) % 2:
        chosen, frames = np.concatenate([chosen, chosen[-1:]]), [*frames, frames[-1]]
    return SampledVideo(np.stack(frames), len(chosen) * index.fps / total, chosen, index.fps)
