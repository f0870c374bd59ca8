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
the reference's float32 product of the cast tokens. DivPrune's cosine distances over a whole video, a 2.5 GB matrix
at 128 frames, come from one Triton kernel (:func:`cosine_distances`) that writes each distance once.
"""

from __future__ import annotations

import torch

try:
    import triton
    import triton.language as tl
except ImportError:  # Triton comes with CUDA builds of torch; without it :func:`cosine_distances` takes its torch path
    triton = None

HALF_PRECISION = (torch.bfloat16, torch.float16)
#: channels the tensor cores sum before their partial sum joins the float32 total
CHUNK = 512
#: the [TILE, TILE] block of the distance matrix one program of the cosine-distance kernel writes (and its mirror),
#: and the channels one step of its product takes
TILE, STEP = 128, 64
#: ``torch.cdist`` computes Euclidean distances among more tokens than this from the Gram expansion
CDIST_DIRECT_MAX = 25


def on_tensor_cores(tokens: torch.Tensor, enabled: bool = True) -> bool:
    """Whether ``tokens``' float32 products go to tensor cores: ``enabled``, half precision and on CUDA."""
    return enabled and tokens.is_cuda and tokens.dtype in HALF_PRECISION


def gram(tokens: torch.Tensor, chunk: int = CHUNK) -> torch.Tensor:
    """[B, N, C] tokens -> [B, N, N] float32 dot products of each pair of a row: where :func:`on_tensor_cores`, the
    sum over chunks of ``chunk`` channels of their tensor-core products (one chunk where ``chunk`` ≥ C), each
    added to the total in the product's own float32 epilogue (``baddbmm``: the values of a separate ``add_``, without
    writing and reading each partial matrix again); else the float32 product of the cast tokens."""
    if not on_tensor_cores(tokens):
        wide = tokens.float()
        return torch.bmm(wide, wide.mT)
    first = tokens[..., :chunk]
    total = torch.bmm(first, first.mT, out_dtype=torch.float32)
    for start in range(chunk, tokens.shape[-1], chunk):  # each partial sum added where the product is written
        part = tokens[..., start : start + chunk]
        torch.baddbmm(total, part, part.mT, out_dtype=torch.float32, out=total)
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


def cosine_distances(tokens: torch.Tensor, eps: float, chunk: int = CHUNK) -> torch.Tensor:
    """[B, N, C] half-precision tokens -> [B, N, N] float32 ``1 − (x_i·x_j / n_i) / n_j``, n the float32 norms
    floored at ``eps``: :func:`gram`'s products (``chunk`` channels at a time on tensor cores, the partial sums added
    in float32) over the norms; on CUDA with Triton in one kernel (:func:`fused_cosine_distances`)."""
    norms = torch.linalg.vector_norm(tokens, dim=-1, dtype=torch.float32).clamp_min_(eps)  # [B, N]
    if triton is not None and tokens.is_cuda:
        return fused_cosine_distances(tokens, norms, chunk)
    return gram(tokens, chunk).div_(norms[:, :, None]).div_(norms[:, None, :]).neg_().add_(1.0)


def fused_cosine_distances(tokens: torch.Tensor, norms: torch.Tensor, chunk: int = CHUNK) -> torch.Tensor:
    """:func:`cosine_distances` of [B, N, C] half-precision tokens and their [B, N] float32 norms, by one Triton
    kernel.

    Each program computes a pair of [TILE, TILE] blocks, (i, j) and (j, i), from one product (half the
    multiplications) and writes their distances once, so the 2.5 GB matrix of a 128-frame video is neither written
    nor read again per chunk or per division: 7.5 ms for a 128-frame video on the H200, 89 ms on CUDA cores
    (``results/divprune``). Its sums are :func:`gram`'s kind, each chunk's products summed on tensor cores and the
    chunks added in float32; on the H200 and the 128-frame bench grid DivPrune kept the same tokens with them.
    """
    if chunk % STEP:
        raise ValueError(f"the kernel sums chunks of whole steps of {STEP} channels, got chunk={chunk}")
    batch, size, channels = tokens.shape
    if norms.shape != (batch, size):
        raise ValueError(f"norms must have shape {[batch, size]} (one per token), got {list(norms.shape)}")
    distances = torch.empty(batch, size, size, device=tokens.device)
    blocks = triton.cdiv(size, TILE)
    _cosine_distance_kernel[(blocks, blocks, batch)](
        tokens.contiguous(), norms.contiguous(), distances, size, CHANNELS=channels, CHUNK=chunk, TILE=TILE,
        STEP=STEP, num_warps=8, num_stages=4,
    )  # fmt: skip
    return distances


if triton is not None:

    @triton.jit
    def _cosine_distance_kernel(
        tokens, norms, distances, size, CHANNELS: tl.constexpr, CHUNK: tl.constexpr, TILE: tl.constexpr,
        STEP: tl.constexpr,
    ):  # fmt: skip
        row_block, column_block = tl.program_id(0), tl.program_id(1)
        if row_block <= column_block:  # the block below the diagonal is this one's mirror
            which = tl.program_id(2).to(tl.int64)
            rows = row_block * TILE + tl.arange(0, TILE)
            columns = column_block * TILE + tl.arange(0, TILE)
            steps = tl.arange(0, STEP)
            first = tokens + which * size * CHANNELS
            total = tl.zeros([TILE, TILE], tl.float32)
            for start in range(0, CHANNELS, CHUNK):
                part = tl.zeros([TILE, TILE], tl.float32)
                for offset in range(start, start + CHUNK, STEP):  # past C the loads are 0
                    channel = offset + steps
                    left = tl.load(
                        first + rows[:, None].to(tl.int64) * CHANNELS + channel[None, :],
                        mask=(rows[:, None] < size) & (channel[None, :] < CHANNELS),
                        other=0.0,
                    )
                    right = tl.load(
                        first + columns[:, None].to(tl.int64) * CHANNELS + channel[None, :],
                        mask=(columns[:, None] < size) & (channel[None, :] < CHANNELS),
                        other=0.0,
                    )
                    part = tl.dot(left, tl.trans(right), part)
                total += part
            row_norms = tl.load(norms + which * size + rows, mask=rows < size, other=1.0)[:, None]
            column_norms = tl.load(norms + which * size + columns, mask=columns < size, other=1.0)[None, :]
            inside = (rows[:, None] < size) & (columns[None, :] < size)
            matrix = distances + which * size * size
            here = 1.0 - tl.math.div_rn(tl.math.div_rn(total, row_norms), column_norms)
            tl.store(matrix + rows[:, None].to(tl.int64) * size + columns[None, :], here, mask=inside)
            if row_block < column_block:
                mirror = tl.trans(1.0 - tl.math.div_rn(tl.math.div_rn(total, column_norms), row_norms))
                tl.store(matrix + columns[:, None].to(tl.int64) * size + rows[None, :], mirror, mask=tl.trans(inside))
