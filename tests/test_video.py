"""Frame sampling as the STTM authors do it, and video errors that name the problem."""

from __future__ import annotations

import numpy as np
import pytest

from runners.toybench.render import write_video
from sttm.adapters.video import VideoError, read_frames, sample_indices


def test_one_frame_per_second_with_the_last_frame_appended():
    assert sample_indices(100, video_fps=30, target_fps=1, max_frames=128).tolist() == [0, 30, 60, 90, 99]


def test_the_last_frame_is_not_repeated_when_it_is_already_sampled():
    assert sample_indices(61, video_fps=30, target_fps=1, max_frames=128).tolist() == [0, 30, 60]


def test_too_many_frames_switch_to_uniform_sampling():
    assert sample_indices(3000, video_fps=10, target_fps=1, max_frames=4).tolist() == [0, 999, 1999, 2999]


def test_a_single_frame_video():
    assert sample_indices(1, video_fps=25, target_fps=1, max_frames=8).tolist() == [0]


def numbered_video(path, frames: int, fps: int):
    write_video([np.full((224, 224, 3), 8 * i, np.uint8) for i in range(frames)], path, fps=fps)


def test_read_frames_picks_the_sampled_frames(tmp_path):
    numbered_video(tmp_path / "v.mp4", frames=12, fps=4)
    video = read_frames(tmp_path / "v.mp4", target_fps=1, max_frames=128)
    frames = video.frames
    assert video.fps == 4 * 4 / 12
    brightness = frames.reshape(len(frames), -1).mean(axis=1) / 8
    assert np.allclose(brightness, [0, 4, 8, 11], atol=0.6)


def test_qwen_pads_an_odd_count_by_repeating_the_last_frame(tmp_path):
    numbered_video(tmp_path / "v.mp4", frames=3, fps=1)
    frames = read_frames(tmp_path / "v.mp4", target_fps=1, pad_to_even=True).frames
    assert len(frames) == 4 and np.array_equal(frames[-1], frames[-2])


def test_a_missing_or_broken_video_names_the_problem(tmp_path):
    with pytest.raises(VideoError, match="video not found: .*nothing.mp4"):
        read_frames(tmp_path / "nothing.mp4")
    (tmp_path / "broken.mp4").write_bytes(b"not a video")
    with pytest.raises(VideoError, match="cannot decode video .*broken.mp4"):
        read_frames(tmp_path / "broken.mp4")
