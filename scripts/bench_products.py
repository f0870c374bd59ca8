"""Time the float32 distance products of half-precision tokens and measure their errors against float64.

    python -m scripts.bench_products                       # from the repository root, on a GPU if there is one
    python -m scripts.bench_products --chunks 256 512 1024 --repeats 20

The input is ``sttm.synthetic.benchmark_video``'s grid ([128, 14, 14, 3584] bf16 by default: LLaVA-OneVision-7B's
visual tokens of a 128-frame video). Rows, each with its median milliseconds over ``--repeats`` calls after
``--warmup`` (CUDA events on a GPU) and its error against the same quantity computed in float64 (mean and max):

- ``gram``: each frame's [N, N] dot products (``baselines.products.gram``), error relative to Σ|x·y|: the float32
  product of the cast tokens (CUDA cores: the references'), and on a GPU tensor cores summing all channels at once
  and ``chunk`` channels at a time with the partial sums added in float32 (the default, 512, is ``gram``'s);
- each reducer's distances with and without ``tensor_cores``, absolute error off the diagonal: FlashVID's ADTS
  cosines (``frame_cosines``), the DPC-kNN distances of PruneVid and FastVID (``pairwise_distances``) and
  DivPrune's cosine distances over the whole video (``cosine_distances``).

On a CPU only the float32 rows run: tensor cores need CUDA.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys

import torch
import torch.nn.functional as F

from baselines import products
from baselines.divprune import cosine_distances
from baselines.flashvid import frame_cosines
from scripts.bench_reducers import add_timing_arguments, git_commit, time_calls
from sttm.synthetic import benchmark_video


def errors(value: torch.Tensor, exact: torch.Tensor, scale: torch.Tensor | None = None, diagonal: bool = True):
    """(mean, max) of |value − exact| over [B, N, N] matrices, over ``scale`` where given, without the diagonals
    unless ``diagonal``."""
    error = (value.double() - exact).abs()
    if scale is not None:
        error /= scale
    if not diagonal:
        error = error[:, ~torch.eye(exact.shape[1], dtype=torch.bool, device=exact.device)]
    return error.mean().item(), error.max().item()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_timing_arguments(parser, warmup=3, repeats=20)
    parser.add_argument("--chunks", nargs="*", type=int, default=[256, products.CHUNK, 1024])
    args = parser.parse_args(argv)

    t, h, w, c = args.shape
    grid = benchmark_video(t, h, w, c, dtype=torch.bfloat16, device=args.device).grid
    frames, video = grid.reshape(t, h * w, c), grid.reshape(1, -1, c)
    cores = products.on_tensor_cores(grid)
    device_name = torch.cuda.get_device_name() if grid.is_cuda else "cpu"
    print(f"# {device_name}, torch {torch.__version__}, commit {git_commit()}, input {list(grid.shape)} {grid.dtype}")

    def row(quantity: str, path: str, call, exact, scale=None, diagonal=True) -> dict:
        mean, most = errors(call(), exact, scale, diagonal)
        ms = statistics.median(time_calls(call, args.warmup, args.repeats, grid.device))
        return {"quantity": quantity, "path": path, "median_ms": ms, "mean_error": mean, "max_error": most}

    wide = frames.double()
    exact, scale = wide @ wide.mT, wide.abs() @ wide.abs().mT
    cast = frames.float()
    rows = [row("gram", "float32 (cast)", lambda: torch.bmm(cast, cast.mT), exact, scale)]
    if cores:
        rows.append(row("gram", "tensor cores, unchunked", lambda: products.gram(frames, chunk=c), exact, scale))
        rows += [row("gram", f"tensor cores, chunks of {chunk}", lambda n=chunk: products.gram(frames, chunk=n),
                     exact, scale) for chunk in args.chunks]  # fmt: skip
    unit = F.normalize(wide, dim=-1)
    squares = wide.square().sum(dim=-1)
    distances = (squares[:, :, None] - 2 * exact + squares[:, None, :]).clamp(min=0).sqrt() / c**0.5
    whole = F.normalize(video.double(), dim=-1)
    checks = [("ADTS cosines (FlashVID)", unit @ unit.mT,
               lambda: frame_cosines(cast), lambda: frame_cosines(cast, half=frames)),
              ("DPC-kNN distances (PruneVid, FastVID)", distances,
               lambda: products.pairwise_distances(frames, tensor_cores=False),
               lambda: products.pairwise_distances(frames)),
              ("cosine distances, whole video (DivPrune)", 1.0 - whole @ whole.mT,
               lambda: cosine_distances(video, tensor_cores=False), lambda: cosine_distances(video))]  # fmt: skip
    for quantity, reference, on_cuda_cores, on_tensor_cores in checks:
        rows.append(row(quantity, "float32 (cast)", on_cuda_cores, reference, diagonal=False))
        if cores:
            rows.append(row(quantity, "tensor cores", on_tensor_cores, reference, diagonal=False))

    print(f"{'quantity':<42} {'path':<26} {'median ms':>10} {'mean error':>11} {'max error':>10}")
    for item in rows:
        print(f"{item['quantity']:<42} {item['path']:<26} {item['median_ms']:>10.3f} {item['mean_error']:>11.3g} "
              f"{item['max_error']:>10.3g}")  # fmt: skip
    if args.output:
        meta = {"device": device_name, "torch": torch.__version__, "commit": git_commit(), "shape": args.shape}
        args.output.write_text(json.dumps({"meta": meta, "rows": rows}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
