"""Where each row's video lies: one run of placeholders, or one run per temporal patch with text between them."""

from __future__ import annotations

import pytest
import torch

from sttm.adapters.plan import VideoSpan, frames_to_sequence, locate_videos, placeholder_runs


def placeholders_at(length: int, *runs: tuple[int, int]) -> torch.Tensor:
    """[1, length] bool, True over each (start, count) run."""
    mask = torch.zeros(1, length, dtype=torch.bool)
    for start, count in runs:
        mask[0, start : start + count] = True
    return mask


def grid_of_frames(height: int, width: int):
    """A layout that reads H x W frames of n placeholders (no M-RoPE ids)."""
    return lambda count, rope_ids: (count // (height * width), height, width)


def test_one_run_per_temporal_patch_is_one_video_whose_text_stays_out():
    mask = placeholders_at(40, (3, 6), (12, 6), (21, 6))  # timestamps and markers between the runs
    (span,) = locate_videos(mask, None, grid_of_frames(2, 3), newlines=0, runs_apart=True)
    assert span == VideoSpan((3, 12, 21), 3, 2, 3) and span.end == 27 and span.run_length == 6
    assert span.positions(torch.device("cpu")).tolist() == [*range(3, 9), *range(12, 18), *range(21, 27)]
    assert span.run_of(torch.tensor([0, 3, 8, 10, 12, 30])).tolist() == [-1, 0, 0, 0, 1, 2]


def test_several_runs_are_refused_where_the_family_writes_no_text_between_patches_and_unequal_runs_always():
    with pytest.raises(ValueError, match="one run of video placeholders"):
        locate_videos(placeholders_at(30, (2, 6), (10, 6)), None, grid_of_frames(2, 3), newlines=0)
    with pytest.raises(ValueError, match="differ in length"):
        locate_videos(placeholders_at(30, (2, 6), (10, 12)), None, grid_of_frames(2, 3), 0, runs_apart=True)
    with pytest.raises(ValueError, match="do not form a 2x2x2 grid"):  # 8 tokens in 3 runs: not whole frames
        locate_videos(placeholders_at(30, (2, 3), (6, 3), (10, 3)), None, lambda n, ids: (2, 2, 2), 0, True)
    with pytest.raises(ValueError, match="holds no video placeholder"):
        locate_videos(placeholders_at(30), None, grid_of_frames(2, 3), newlines=0)


def test_runs_are_found_in_order():
    indexes = torch.tensor([4, 5, 6, 10, 11, 12, 20])
    assert placeholder_runs(indexes) == [(4, 3), (10, 3), (20, 1)]


def test_per_frame_values_land_on_each_runs_tokens():
    span = VideoSpan((1, 5), 2, 1, 2)
    values = torch.arange(4.0).reshape(2, 2)  # two frames of two tokens
    assert frames_to_sequence(values, [span], 8)[0].tolist() == [0, 0, 1, 0, 0, 2, 3, 0]
