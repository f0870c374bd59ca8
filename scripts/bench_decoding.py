"""Time and peak memory of reading a long video's sampled frames: ``read_frames`` against decoding every frame to
RGB first (how it read videos before it decoded only the sampled frames).

    python scripts/bench_decoding.py --minutes 10 --size 640x360 --max-frames 32 128

Writes the video once (H.264, a keyframe every 250 frames, moving gradients) under ``outputs/bench_decoding/``;
each reading runs in a fresh process, whose peak resident memory (``ru_maxrss``) and wall time it prints.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import av
import numpy as np

ROOT = Path(__file__).resolve().parents[1]

READ = """
import json, resource, sys, time
import av, numpy as np
from sttm.adapters.video import read_frames, sample_indices
path, way, max_frames = sys.argv[1], sys.argv[2], int(sys.argv[3])
start = time.perf_counter()
if way == "read_frames":
    frames = read_frames(path, target_fps=1.0, max_frames=max_frames).frames
else:
    with av.open(path) as container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        every = [frame.to_ndarray(format="rgb24") for frame in container.decode(stream)]
        chosen = sample_indices(len(every), float(stream.average_rate), 1.0, max_frames)
    frames = np.stack([every[i] for i in chosen])
seconds = time.perf_counter() - start
peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print(json.dumps({"seconds": seconds, "peak_mb": peak_mb, "frames": len(frames), "checksum": int(frames.sum())}))
"""


def write_long_video(path: Path, minutes: float, width: int, height: int, fps: int) -> None:
    if path.is_file():
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{time.time_ns()}.tmp")
    ramp = np.add.outer(np.arange(height), np.arange(width))
    with av.open(str(temporary), "w", format="mp4") as container:
        stream = container.add_stream("libx264", rate=fps, options={"preset": "ultrafast", "g": "250"})
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        for index in range(int(minutes * 60 * fps)):
            image = ((ramp + 3 * index) % 256).astype(np.uint8)
            frame = av.VideoFrame.from_ndarray(np.repeat(image[..., None], 3, axis=2), format="rgb24")
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    temporary.replace(path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--size", default="640x360", help="WIDTHxHEIGHT")
    parser.add_argument("--fps", type=int, default=30)
    parser.add_argument("--max-frames", type=int, nargs="+", default=[32, 128])
    parser.add_argument("--output", type=Path, help="also write the rows as JSON here")
    args = parser.parse_args(argv)
    width, height = map(int, args.size.split("x"))
    path = ROOT / "outputs" / "bench_decoding" / f"{args.minutes:g}min_{args.size}_{args.fps}fps.mp4"
    write_long_video(path, args.minutes, width, height, args.fps)
    rows = []
    print(f"{path.name}: {path.stat().st_size / 2**20:.0f} MiB")
    print("| way | frames kept | seconds | peak memory (MiB) |\n|---|---:|---:|---:|")
    for max_frames in args.max_frames:
        results = {}
        for way in ("decode every frame, then sample", "read_frames"):
            key = "read_frames" if way == "read_frames" else "full"
            command = [sys.executable, "-c", READ, str(path), key, str(max_frames)]
            result = json.loads(subprocess.run(command, cwd=ROOT, check=True, capture_output=True, text=True).stdout)
            results[key] = result
            rows.append({"way": way, "max_frames": max_frames, **result})
            print(f"| {way} | {result['frames']} | {result['seconds']:.1f} | {result['peak_mb']:.0f} |")
        if results["full"]["checksum"] != results["read_frames"]["checksum"]:
            print(f"the two ways gave different frames at max_frames={max_frames}", file=sys.stderr)
            return 1
    if args.output:
        args.output.write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
