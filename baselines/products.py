"""Float32 products of half-precision tokens on tensor cores: the distance products of FlashVID, PruneVid, DivPrune
and FastVID.

Their reference code casts the model's bfloat16 or float16 tokens to float32 before its distance products, which on
a GPU then run on CUDA cores (float32 without TF32), several times slower than on tensor cores. The product of two
bfloat16 or two float16 values is exact in float32, so tensor cores given the half-precision tokens multiply
exactly; but they truncate their float32 sums, which over a long row loses more than the CUDA cores' rounding (on
the benchmark grid, 1.7e-6 of Σ|x·y| on average against float64, the CUDA cores' 2.7e-7). So :func:`gram` lets
them sum ``CHUNK`` channels at a time and adds those partial sums in float32 on CUDA cores: 2.1e-7 on average and
1.3e-6 at most, the CUDA cores' 2.7e-7 and 8.5e-6, at 0.4 ms instead of 1.4 ms for 128 frames of 196 × 3,584
(``scripts/bench_products.py``, ``results/bench_reducers``). The values are then as exact as the reference's,
rounded elsewhere. (TF32 is another thing: it rounds float32 inputs to 10 bits of mantissa.)

Each reducer using this takes ``tensor_cores`` (default on); off, or for float32 tokens, or off CUDA, it computes
the reference's float32 product of the cast tokens.
"""

from __future__ import annotations

import torch

HALF_PRECISION = (torch.bfloat16, torch.float16)
#: channels the tensor cores sum before their partial sum joins the float32 total
CHUNK = 512
#: ``torch.cdist`` computes Euclidean distances among more tokens than this from the Gram expansion
CDIST_DIRECT_MAX = 25


def on_tensor_cores(tokens: torch.Tensor, enabled: bool = True) -> bool:
    """Whether ``tokens``' float32 products go to tensor cores: ``enabled``, half precision and on CUDA."""
    return enabled and tokens.is_cuda and tokens.dtype in HALF_PRECISION


def gram(tokens: torch.Tensor, chunk: int = CHUNK) -> torch.Tensor:
    """[B, N, C] tokens -> [B, N, N] float32 dot products of each pair of a row: where :func:`on_tensor_cores`, the
    sum over chunks of ``chunk`` channels of their tensor-core products (one chunk where ``chunk`` ≥ C); else the
    float32 product of the cast tokens."""
    if not on_tensor_cores(tokens):
        wide = tokens.float()
        return torch.bmm(wide, wide.mT)
    total = None
    for start in range(0, tokens.shape[-1], chunk):
        part = tokens[..., start : start + chunk]
        product = torch.bmm(part, part.mT, out_dtype=torch.float32)
        total = product if total is None else total.add_(product)
    return total


def squared_distances(tokens: torch.Tensor, squares: torch.Tensor) -> torch.Tensor:
    """[B, N, C] tokens, [B, N] float32 squared norms -> [B, N, N] float32 squared Euclidean distances as
    ``torch.cdist``'s matrix-product path forms them, ``(|x|² − 2·x·y) + |y|²`` (not clamped), with :func:`gram`'s
    products."""
    return torch.add(squares[:, :, None], gram(tokens), alpha=-2).add_(squares[:, None, :])


def pairwise_distances(x: torch.Tensor, tensor_cores: bool = True) -> torch.Tensor:
    """[B, N, C] tokens -> [B, N, N] Euclidean distances over √C in float32: ``torch.cdist`` of ``x.float()``.

    For more than 25 tokens cdist multiplies ``[−2x, |x|², 1]`` by ``[x, 1, |x|²]``ᵀ, building the squared norms
    twice, ``−2x`` once more and both operands by concatenation; here the norms are built once and both operands
    are written in place, converting the tokens on the way (the same matrices, so the same product). Half-precision
    tokens on a GPU instead take their products on tensor cores (unless ``tensor_cores`` is off;
    :func:`squared_distances`: the same exact products and norms, summed in another order).
    """
    batch, size, channels = x.shape
    if size <= CDIST_DIRECT_MAX:
        return torch.cdist(x.float(), x.float()) / channels**0.5
    if on_tensor_cores(x, tensor_cores):
        squared = squared_distances(x, x.float().square().sum(dim=-1))
        return squared.clamp_min_(0).sqrt_().div_(channels**0.5)
    right = torch.empty(batch, size, channels + 2, device=x.device)
    right[..., :channels] = x
    norms = right[..., :channels].pow(2).sum(dim=-1)
    right[..., channels], right[..., channels + 1] = 1, norms
    left = torch.empty_like(right)
    torch.mul(right[..., :channels], -2, out=left[..., :channels])
    left[..., channels], left[..., channels + 1] = norms, 1
    return (left @ right.mT).clamp_min_(0).sqrt_().div_(channels**0.5)
