"""Float32 products of half-precision tokens on tensor cores: the distance products of FlashVID and PruneVid.

Their reference code casts the model's bfloat16 or float16 tokens to float32 before its distance products, which on
a GPU then run on CUDA cores (float32 without TF32), several times slower than the model's own products. The
product of two bfloat16 or two float16 values is exact in float32, so a tensor-core product of the half-precision
tokens that accumulates and returns float32 sums the same exact products, in another order: its values differ from
the CUDA-core product's by the rounding of float32 sums only, as the CUDA-core product's own differ between GPUs
and from the CPU's. TF32 is not that: it rounds float32 inputs to 10 bits of mantissa.

Each reducer using this takes ``tensor_cores`` (default on); off, or for float32 tokens, or off CUDA, it computes
the reference's float32 product of the cast tokens.
"""

from __future__ import annotations

import torch

HALF_PRECISION = (torch.bfloat16, torch.float16)


def on_tensor_cores(tokens: torch.Tensor, enabled: bool = True) -> bool:
    """Whether ``tokens``' float32 products go to tensor cores: ``enabled``, half precision and on CUDA."""
    return enabled and tokens.is_cuda and tokens.dtype in HALF_PRECISION


def gram(tokens: torch.Tensor) -> torch.Tensor:
    """[B, N, C] tokens -> [B, N, N] float32 dot products of each pair of a row: on tensor cores (exact products
    summed in float32) where :func:`on_tensor_cores`, else the float32 product of the cast tokens."""
    if on_tensor_cores(tokens):
        return torch.bmm(tokens, tokens.mT, out_dtype=torch.float32)
    wide = tokens.float()
    return torch.bmm(wide, wide.mT)


def squared_distances(tokens: torch.Tensor, squares: torch.Tensor) -> torch.Tensor:
    """[B, N, C] tokens, [B, N] float32 squared norms -> [B, N, N] float32 squared Euclidean distances as
    ``torch.cdist``'s matrix-product path forms them, ``(|x|² − 2·x·y) + |y|²`` (not clamped), with :func:`gram`'s
    products."""
    return torch.add(squares[:, :, None], gram(tokens), alpha=-2).add_(squares[:, None, :])
