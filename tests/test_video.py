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


def full_decode_reference(path, target_fps: float, max_frames: int) -> np.ndarray:
    """The frames as read_frames chose them before it decoded only those: every frame decoded, then sampled."""
    import av

    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        frames = [frame.to_ndarray(format="rgb24") for frame in container.decode(stream)]
        fps = float(stream.average_rate or stream.guessed_rate or target_fps)
    return np.stack([frames[i] for i in sample_indices(len(frames), fps, target_fps, max_frames)])


def encoded_video(path, frames: int, fps: int, options: dict, size: int = 64, audio: bool = False):
    """H.264 of moving gradients with the given encoder ``options`` (GOP length, B-frames), optionally with audio."""
    import av

    rng = np.random.default_rng(frames)
    with av.open(str(path), "w", format="mp4") as container:
        stream = container.add_stream("libx264", rate=fps, options=options)
        stream.width = stream.height = size
        stream.pix_fmt = "yuv420p"
        sound = container.add_stream("aac", rate=8000) if audio else None
        for index in range(frames):
            image = (np.add.outer(np.arange(size), np.arange(size)) * 2 + 7 * index) % 256
            image = np.repeat(image[..., None], 3, axis=2).astype(np.uint8)
            image[rng.integers(size), :] = 255
            for packet in stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
        if sound is not None:
            for packet in sound.encode(None):
                container.mux(packet)


@pytest.mark.parametrize(
    "frames, fps, options, target_fps, max_frames",
    [
        (90, 30, {"g": "12", "bf": "3"}, 1.0, 128),  # B-frames, a keyframe every 12 frames
        (200, 25, {"g": "250", "bf": "0"}, 2.0, 16),  # one keyframe, uniform sampling
        (61, 10, {"g": "5", "bf": "2"}, 3.0, 8),
        (7, 1, {"g": "3"}, 1.0, 128),
        (1, 5, {}, 1.0, 4),
    ],
)
def test_decoding_from_keyframes_gives_the_frames_of_a_full_decode(tmp_path, frames, fps, options, target_fps,
                                                                    max_frames):  # fmt: skip
    path = tmp_path / "v.mp4"
    encoded_video(path, frames, fps, options)
    video = read_frames(path, target_fps=target_fps, max_frames=max_frames)
    expected = full_decode_reference(path, target_fps, max_frames)
    assert video.frames.shape == expected.shape and np.array_equal(video.frames, expected)


def test_a_video_with_sound_is_read_and_a_sound_only_file_is_named(tmp_path):
    import av

    encoded_video(tmp_path / "with_sound.mp4", 30, 10, {"g": "10"}, audio=True)
    assert len(read_frames(tmp_path / "with_sound.mp4", target_fps=1).frames) == 4
    with av.open(str(tmp_path / "sound.m4a"), "w", format="mp4") as container:
        stream = container.add_stream("aac", rate=8000)
        frame = av.AudioFrame.from_ndarray(np.zeros((1, 1024), np.float32), format="fltp", layout="mono")
        frame.sample_rate = 8000
        for packet in [*stream.encode(frame), *stream.encode(None)]:
            container.mux(packet)
    with pytest.raises(VideoError, match="no video stream in .*sound.m4a"):
        read_frames(tmp_path / "sound.m4a")


def test_a_directory_named_like_a_video_is_named_as_such(tmp_path):
    (tmp_path / "x.mp4").mkdir()
    with pytest.raises(VideoError, match="not a video file but a directory"):
        read_frames(tmp_path / "x.mp4")
