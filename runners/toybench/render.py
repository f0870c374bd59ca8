"""Drawing and encoding for the synthetic benchmarks: flat-coloured scenes with small shapes, written as mp4.

Frames are [224, 224, 3] uint8 (a 16×16 patch grid for a 14-pixel ViT, pooled to 8×8 tokens). Backgrounds
are large uniform regions, so merging has something to merge; shapes are a few patches wide, so they are the
decisive details a reducer must keep.
"""

from __future__ import annotations

from pathlib import Path

import av
import numpy as np

from runners.files import replacing

SIZE = 224
COLORS = {
    "red": (220, 40, 40),
    "green": (40, 180, 60),
    "blue": (50, 80, 220),
    "yellow": (235, 215, 40),
    "magenta": (200, 50, 200),
    "cyan": (40, 200, 210),
    "white": (245, 245, 245),
    "orange": (245, 140, 30),
}
BACKGROUNDS = {
    "gray": (110, 110, 110),
    "navy": (20, 30, 80),
    "olive": (90, 100, 40),
    "brown": (100, 60, 40),
    "teal": (20, 90, 90),
    "plum": (80, 40, 80),
}
SHAPES = ("square", "circle", "triangle", "cross")

_rows, _cols = np.mgrid[0:SIZE, 0:SIZE]


def background(colors: list[str], vertical: bool = False) -> np.ndarray:
    """[SIZE, SIZE, 3] frame in bands: the first colour covers half the frame, the others share the rest."""
    frame = np.empty((SIZE, SIZE, 3), np.uint8)
    if len(colors) == 1:
        bands = [np.arange(SIZE)]
    else:
        bands = [np.arange(SIZE // 2), *np.array_split(np.arange(SIZE // 2, SIZE), len(colors) - 1)]
    for band, name in zip(bands, colors, strict=True):
        if vertical:
            frame[:, band] = BACKGROUNDS[name]
        else:
            frame[band] = BACKGROUNDS[name]
    return frame


def shape_mask(shape: str, center: tuple[int, int], radius: int) -> np.ndarray:
    """[SIZE, SIZE] bool mask of a shape centred at (row, col)."""
    dy, dx = _rows - center[0], _cols - center[1]
    if shape == "square":
        return (abs(dy) <= radius) & (abs(dx) <= radius)
    if shape == "circle":
        return dy**2 + dx**2 <= radius**2
    if shape == "triangle":
        return (dy <= radius) & (dy >= -radius) & (abs(dx) <= (dy + radius) / 2)
    if shape == "cross":
        arm = max(radius // 3, 2)
        return ((abs(dy) <= radius) & (abs(dx) <= arm)) | ((abs(dx) <= radius) & (abs(dy) <= arm))
    raise ValueError(f"unknown shape {shape!r}; choose one of: {', '.join(SHAPES)}")


def draw(frame: np.ndarray, shape: str, color: str, center: tuple[int, int], radius: int = 14) -> np.ndarray:
    """A copy of ``frame`` with a filled shape drawn on it."""
    out = frame.copy()
    out[shape_mask(shape, center, radius)] = COLORS[color]
    return out


def write_video(frames: list[np.ndarray], path: Path, fps: int = 1) -> None:
    """Encode frames as H.264 mp4, whole or not at all (``runners.files.replacing``)."""
    with replacing(path) as temporary, av.open(str(temporary), "w", format="mp4") as container:
        stream = container.add_stream("libx264", rate=fps, options={"crf": "18", "preset": "veryfast"})
        stream.width = stream.height = SIZE
        stream.pix_fmt = "yuv420p"
        stream.thread_count = 1
        for frame in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def read_video(path: Path) -> np.ndarray:
    """[T, SIZE, SIZE, 3] uint8 frames of an mp4."""
    with av.open(str(path)) as container:
        return np.stack([f.to_ndarray(format="rgb24") for f in container.decode(video=0)])
